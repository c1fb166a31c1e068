"""Data-loading throughput: the per-sample PNG path against the uint8 image cache, in images/s.

Both paths read the same real NIH PNGs (a folder of them, repeated under distinct names up to
``--num_images``), with the same batch size, worker count and a shuffling sampler:

(a) the per-sample PNG path: ``ChestXrayDataset`` + ``ImageTransform`` (decode, resize, train
    augmentation on or off, replicate to 3 channels, normalise) + default collate;
(b) the cache path: ``build_cache`` at ``--size`` into a temporary folder (timed), then a
    DataLoader over ``CachedChestXrayDataset`` with ``cached_collate`` delivering
    ``(B, 1, S, S)`` uint8 batches (augmentation and normalisation then run on the device:
    ``cxr_lightning.data.gpu_augment``).

Rates are steady-state and time-bounded: the PNG path is timed from the iterator's start over
whole rounds of ``workers`` batches (each worker fills a batch in parallel, so timing from the
first batch would double-count); the cache path after a warm-up of ``2 * workers`` batches.

    python benchmarks/loader_throughput.py                                  # defaults below
    python benchmarks/loader_throughput.py --images /data/nih/images --num_images 20000 --workers 8
"""

from __future__ import annotations

import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, RandomSampler

from cxr_lightning.cli.parser import CommandParser
from cxr_lightning.data.cache import CachedChestXrayDataset, build_cache, cached_collate, open_cache
from cxr_lightning.data.dataset import ChestXrayDataset
from cxr_lightning.data.gpu_augment import BatchAugment
from cxr_lightning.data.transforms import Augmentation, ImageTransform

DEFAULT_IMAGES = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "nih" / "images"


def make_root(images: Path, num_images: int, workdir: Path) -> tuple[Path, list[str]]:
    """``workdir/images`` with ``num_images`` symlinks cycling over the PNGs of ``images``."""
    sources = sorted(p for p in images.iterdir() if p.suffix.lower() == ".png")
    if not sources:
        sys.exit(f"no PNG under {images}")
    folder = workdir / "images"
    folder.mkdir(parents=True)
    names = []
    for i in range(num_images):
        source = sources[i % len(sources)]
        name = f"{i:06d}_{source.name}"
        os.symlink(source.resolve(), folder / name)
        names.append(name)
    return workdir, names


def tables(n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return (rng.random((n, 15)) < 0.1).astype(np.float32), rng.normal(size=(n, 5)).astype(np.float32)


def timed_iteration(loader: DataLoader, seconds: float, warmup: int, rounds_of: int, consume=None) -> tuple[float, int, float]:
    """images/s, images timed and seconds timed.

    ``warmup`` batches are fetched before the clock starts (0: the clock starts with the
    iterator); the clock then stops at the first whole round of ``rounds_of`` batches after
    ``seconds``.
    """
    iterator = iter(loader)
    start = time.perf_counter()
    for _ in range(warmup):
        next(iterator)
    if warmup:
        start = time.perf_counter()
    images = batches = 0
    try:
        while True:
            batch = next(iterator)
            if consume is not None:
                consume(batch)
            images += len(batch["name"])
            batches += 1
            elapsed = time.perf_counter() - start
            if elapsed >= seconds and batches % rounds_of == 0:
                break
    finally:
        del iterator
    return images / elapsed, images, elapsed


def loader(dataset, args, workers: int, collate_fn=None, total: int = 10_000_000) -> DataLoader:
    # A sampler of many shuffled passes: no epoch boundary inside the timed window.
    sampler = RandomSampler(dataset, num_samples=total, generator=torch.Generator().manual_seed(0))
    kwargs = {"collate_fn": collate_fn} if collate_fn is not None else {}
    return DataLoader(dataset, batch_size=args.batch_size, sampler=sampler, num_workers=workers, drop_last=True, **kwargs)


def main(argv: list[str] | None = None) -> int:
    parser = CommandParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=Path, default=DEFAULT_IMAGES, help="folder of real NIH PNGs (default: ../shared/data/nih/images)")
    parser.add_argument("--num_images", type=int, default=3000, help="images in the dataset (the folder's PNGs repeated under new names)")
    parser.add_argument("--image_size", type=int, default=224, help="model input / cache side")
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers and cache-building processes")
    parser.add_argument("--png_seconds", type=float, default=25.0, help="time budget per PNG-path configuration")
    parser.add_argument("--cache_seconds", type=float, default=8.0, help="time budget per cache-path configuration")
    parser.add_argument("--workdir", type=Path, default=None, help="where the temporary root and cache go (default: a temp dir)")
    parser.add_argument("--skip_png", action="store_true", help="only the cache path")
    parser.add_argument("--no_extra", action="store_true", help="skip the extra cache-path rows (workers 0, per-sample fetch, CPU augmentation)")
    args = parser.parse_args(argv)

    images = args.images.resolve()
    workdir = Path(tempfile.mkdtemp(prefix="loader-bench-", dir=args.workdir))
    try:
        root, names = make_root(images, args.num_images, workdir)
        labels, metadata = tables(len(names))
        paths = [root / "images" / n for n in names]
        rounds = max(1, args.workers)
        print(
            f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}; torch {torch.__version__}; "
            f"{len(names):,} images ({len({p.resolve() for p in paths})} distinct NIH PNGs from {images}); "
            f"batch {args.batch_size}, workers {args.workers}, size {args.image_size}",
            flush=True,
        )
        rows: list[tuple[str, int, float, int, float]] = []

        def record(label: str, workers: int, result: tuple[float, int, float]) -> None:
            rate, count, elapsed = result
            rows.append((label, workers, rate, count, elapsed))
            print(f"  {label}: {rate:,.0f} images/s ({count:,} images in {elapsed:.1f} s)", flush=True)

        png_rates: dict[bool, float] = {}
        if not args.skip_png:
            for augment in (True, False):
                transform = ImageTransform(args.image_size, 3, "imagenet", Augmentation() if augment else None)
                dataset = ChestXrayDataset(paths, labels, metadata, transform)
                label = f"PNG per-sample, float (3,{args.image_size},{args.image_size}), {'train (augment on)' if augment else 'eval (augment off)'}"
                record(label, args.workers, timed_iteration(loader(dataset, args, args.workers), args.png_seconds, 0, rounds))
                png_rates[augment] = rows[-1][2]

        start = time.perf_counter()
        report = build_cache(root, names, args.image_size, out=workdir / "cache", workers=args.workers, progress=False)
        build_seconds = time.perf_counter() - start
        print(f"  cache build: {report.summary()}", flush=True)
        cache = open_cache(None, args.image_size, path=workdir / "cache")
        train = CachedChestXrayDataset(cache, names, labels, metadata, seed=0, augmentation=Augmentation())
        evaluation = CachedChestXrayDataset(cache, names, labels, metadata)
        shape = f"uint8 (1,{args.image_size},{args.image_size})"
        train_label = f"cache, {shape} + per-sample augment params, train"
        eval_label = f"cache, {shape}, eval"
        cache_timing = (args.cache_seconds, 2 * rounds, rounds)
        record(train_label, args.workers, timed_iteration(loader(train, args, args.workers, cached_collate), *cache_timing))
        record(eval_label, args.workers, timed_iteration(loader(evaluation, args, args.workers, cached_collate), *cache_timing))
        if not args.no_extra:
            # What pin_memory does with each batch: one copy into a staging buffer (reads every byte).
            staging = torch.empty((args.batch_size, 1, args.image_size, args.image_size), dtype=torch.uint8)

            def copy(batch: dict) -> None:
                staging.copy_(batch["image"])

            record("cache train + consumer copies each batch (like pin_memory)", args.workers,
                   timed_iteration(loader(train, args, args.workers, cached_collate), *cache_timing, consume=copy))  # fmt: skip
            record("cache train, in the main process", 0, timed_iteration(loader(train, args, 0, cached_collate), args.cache_seconds, 2, 1))
            record("cache train, in the main process + consumer copies", 0,
                   timed_iteration(loader(train, args, 0, cached_collate), args.cache_seconds, 2, 1, consume=copy))  # fmt: skip
            record("cache eval, in the main process", 0, timed_iteration(loader(evaluation, args, 0, cached_collate), args.cache_seconds, 2, 1))

            class PerSample(torch.utils.data.Dataset):
                """Hides ``__getitems__``: per-sample fetch and default collate."""

                def __init__(self, inner):
                    self.inner = inner

                def __len__(self):
                    return len(self.inner)

                def __getitem__(self, i):
                    return self.inner[i]

            record("cache train, per-sample __getitem__ + default collate", args.workers,
                   timed_iteration(loader(PerSample(train), args, args.workers), *cache_timing))  # fmt: skip
            record("cache eval, per-sample __getitem__ + default collate", args.workers,
                   timed_iteration(loader(PerSample(evaluation), args, args.workers), *cache_timing))  # fmt: skip
            augment = BatchAugment(normalization="imagenet")
            record("cache train + BatchAugment on this CPU (main process)", args.workers,
                   timed_iteration(loader(train, args, args.workers, cached_collate), *cache_timing,
                                   consume=lambda b: augment(b["image"], params=b["augment"])))  # fmt: skip

        print()
        print("| path | workers | images/s | x PNG path (same mode) | timed |")
        print("|---|---:|---:|---:|---:|")
        for label, workers, rate, count, elapsed in rows:
            base = png_rates.get("eval" not in label)
            ratio = f"{rate / base:,.0f}x" if base and not label.startswith("PNG") else "-"
            print(f"| {label} | {workers} | {rate:,.0f} | {ratio} | {count:,} img / {elapsed:.1f} s |")
        rate = report.decoded / build_seconds
        print(
            f"| cache build ({len(names):,} PNGs -> {args.image_size}px uint8) | {args.workers} | {rate:,.0f} | - | "
            f"{build_seconds:.1f} s; all 112,120 NIH images: ~{112_120 / rate / 60:.0f} min |"
        )
        results = {label: r for label, _, r, _, _ in rows}
        checks = [results[train_label] >= 15_000, results[eval_label] >= 15_000]
        if png_rates:
            checks += [results[train_label] >= 100 * png_rates[True], results[eval_label] >= 100 * png_rates[False]]
        print(f"\ntargets (cache path >= 15,000 images/s and >= 100x the PNG path, {args.workers} workers): {'met' if all(checks) else 'NOT met'}")
        return 0
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
