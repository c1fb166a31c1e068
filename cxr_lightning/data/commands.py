"""``cxr-lightning data ...``: the parser and the split statistics, split files and synthetic data commands.

``prepare`` is :mod:`cxr_lightning.data.cache.prepare`, ``download`` :mod:`cxr_lightning.data.download`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cxr_lightning.cli.parser import CommandParser
from cxr_lightning.data.cache.prepare import add_prepare_arguments, run_prepare_checked
from cxr_lightning.data.download import add_download_arguments, run_download
from cxr_lightning.data.labels import label_names
from cxr_lightning.data.metadata import find_metadata_csv, read_metadata
from cxr_lightning.data.split_arguments import add_split_arguments, split_from_args
from cxr_lightning.data.split_statistics import format_csv, format_markdown, prevalence_table
from cxr_lightning.data.splits import PARTS
from cxr_lightning.data.synthetic import generate_synthetic_dataset
from cxr_lightning.output_files import atomic_outputs, atomic_write_text, check_writable_folder


def _add_table_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``stats`` and ``split``: the split, the data root it is read from, the bad-value policy."""
    add_split_arguments(parser)
    parser.add_argument("--data_root", type=Path, default=None, help="data root whose metadata CSV and list files to use (default: the packaged NIH files)")
    parser.add_argument("--bad_values", choices=("missing", "error"), default="missing", help="policy for bad ages/sexes/views")


def _load(args: argparse.Namespace):
    meta = read_metadata(args.metadata_csv or find_metadata_csv(args.data_root), bad_values=args.bad_values)
    for line in meta.report.lines():
        print(f"[metadata] {line}", file=sys.stderr)
    return meta, split_from_args(args, meta)


def run_stats(args: argparse.Namespace) -> int:
    if args.out:
        check_writable_folder(Path(args.out).parent, "the table")
    meta, split = _load(args)
    table = prevalence_table(meta, split, label_names(not args.findings_only))
    text = format_csv(table, args.decimals) if args.format == "csv" else format_markdown(table, args.decimals)
    if args.out:
        atomic_write_text(args.out, text + "\n")
        print(f"wrote {args.out}", file=sys.stderr)
    else:
        print(text)
    return 0


def run_split(args: argparse.Namespace) -> int:
    check_writable_folder(args.out, "the split files")
    meta, split = _load(args)
    # All three or none: a train.txt of this split beside a test.txt of an older one would mix splits.
    with atomic_outputs(*(args.out / f"{part}.txt" for part in PARTS)) as staged:
        for part, path in zip(PARTS, staged):
            path.write_text("\n".join(split.images(meta, part)) + "\n", encoding="utf-8")
    for part in PARTS:
        print(f"{args.out / f'{part}.txt'}: {len(split.part(part)):,} images")
    return 0


def run_synth(args: argparse.Namespace) -> int:
    check_writable_folder(args.out, "the synthetic dataset")
    summary = generate_synthetic_dataset(args.out, args.num_images, args.image_size, args.seed)
    print(format_synthetic_summary(summary))
    return 0


def format_synthetic_summary(summary) -> str:
    """What ``data synth`` wrote, for people: where, how much, and positives per label (all / test list)."""
    lines = [
        f"{summary.out}: {summary.num_images:,} synthetic {summary.image_size}x{summary.image_size} images of "
        f"{summary.num_patients:,} patients (seed {summary.seed}); train_val_list {summary.num_train_val:,}, "
        f"test_list {summary.num_test:,}; {summary.num_boxes:,} boxes",
        f"{'label':<20} {'positives':>9} {'in test':>8}",
    ]
    for label, count in summary.label_counts.items():
        lines.append(f"{label:<20} {count:>9,} {summary.test_label_counts.get(label, 0):>8,}")
    run_dir = Path("runs") / Path(summary.out).name  # its own run folder: never over the demo's runs/demo
    lines.append(f"train with: cxr-lightning fit --config demo.yaml --data.data_root={summary.out} "
                 f"--data.images.size={summary.image_size} --trainer.default_root_dir={run_dir}")  # fmt: skip
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(prog="cxr-lightning data", description="NIH ChestX-ray14 data commands")
    commands = parser.add_subparsers(dest="command", required=True)

    stats = commands.add_parser("stats", help="percent of positive images per label and split part (the paper's Table 4)")
    _add_table_arguments(stats)
    stats.add_argument("--format", choices=("markdown", "csv"), default="markdown")
    stats.add_argument("--decimals", type=int, default=2)
    stats.add_argument("--findings_only", action="store_true", help="the 14 findings, without No Finding")
    stats.add_argument("--out", type=Path, default=None, help="write to this file instead of standard output")
    stats.set_defaults(run=run_stats)

    split = commands.add_parser("split", help="write train.txt, val.txt and test.txt (image names)")
    _add_table_arguments(split)
    split.add_argument("--out", type=Path, required=True, help="output folder")
    split.set_defaults(run=run_split)

    synth = commands.add_parser("synth", help="write a synthetic dataset in the NIH layout")
    synth.add_argument("--out", type=Path, required=True, help="output folder")
    synth.add_argument("--num_images", type=int, default=2000)
    synth.add_argument("--image_size", type=int, default=64)
    synth.add_argument("--seed", type=int, default=0)
    synth.set_defaults(run=run_synth)

    prepare = commands.add_parser("prepare", help="decode the images once into a resumable uint8 memmap cache of one size")
    add_prepare_arguments(prepare)
    prepare.set_defaults(run=run_prepare_checked)

    download = commands.add_parser("download", help="download and extract the 12 NIH image archives (about 45 GB)")
    add_download_arguments(download)
    download.set_defaults(run=run_download)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)
