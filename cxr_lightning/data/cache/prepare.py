"""``cxr-lightning data prepare``: build (or resume) the cache of the metadata CSV's images, or of some split parts."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

from cxr_lightning.data.cache.build import CacheBuildError, build_cache
from cxr_lightning.data.cache.format import INDEX_FILE, default_cache_dir
from cxr_lightning.data.dataset import DataNotFoundError
from cxr_lightning.data.metadata import find_metadata_csv, read_metadata
from cxr_lightning.data.split_arguments import SPLIT_NAMES, add_split_arguments, split_from_args
from cxr_lightning.data.splits import PARTS
from cxr_lightning.output_files import check_writable_folder


def add_prepare_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data_root", type=Path, required=True, help="data root holding images/ (or the Kaggle images_*/images/)")
    parser.add_argument("--image_size", type=int, default=224, help="side of the cached square images (default 224; match data.images.size)")
    parser.add_argument("--out", type=Path, default=None, help="cache directory (default ROOT/cache/SIZE)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="decoding processes (default: all cores; 0: in this process)")
    add_split_arguments(
        parser, choices=("all", *SPLIT_NAMES), default="all",
        split_help="cache every image of the metadata CSV (all, default) or only the --parts of this split",
    )  # fmt: skip
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS), help="parts of --split to cache")
    parser.add_argument("--skip_bad", action="store_true", help="record missing/unreadable images as bad and finish, instead of failing")
    parser.add_argument("--chunk_size", type=int, default=64, help="images per worker task (progress is saved after each)")
    parser.add_argument("--no_progress", action="store_true", help="no progress bar")


def _prepare_names(args: argparse.Namespace) -> list[str]:
    meta = read_metadata(args.metadata_csv or find_metadata_csv(args.data_root), quiet=True)
    names = meta.frame["image"].to_numpy()
    if args.split == "all":
        return names.tolist()
    split = split_from_args(args, meta)
    rows = np.sort(np.concatenate([split.part(p) for p in dict.fromkeys(args.parts)]))
    return names[rows].tolist()


def run_prepare(args: argparse.Namespace) -> int:
    """``cxr-lightning data prepare``: build (or resume) the uint8 cache of the metadata CSV's images."""
    names = _prepare_names(args)
    print(f"[cache] {len(names):,} images listed; caching at {args.image_size}x{args.image_size} with {args.workers} worker(s)", file=sys.stderr)
    try:
        report = build_cache(
            args.data_root,
            names,
            args.image_size,
            out=args.out,
            workers=args.workers,
            progress=not args.no_progress,
            on_bad_image="skip" if args.skip_bad else "error",
            chunk_size=args.chunk_size,
        )
    except (CacheBuildError, DataNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(report.summary())
    if report.bad:
        print(f"skipped {len(report.bad):,} bad image(s) (listed in {report.path / INDEX_FILE} under 'bad'):")
        for name, reason in list(report.bad.items())[:20]:
            print(f"  {name}: {reason}")
    return 0


def run_prepare_checked(args: argparse.Namespace) -> int:
    """``data prepare``, after proving its cache folder writable: a read-only disk stops it in one line, not after decoding."""
    check_writable_folder(args.out or default_cache_dir(args.data_root, args.image_size), "the image cache")
    return run_prepare(args)
