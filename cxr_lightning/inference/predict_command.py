"""``cxr-lightning predict-files`` (also ``cxr-lightning predict --ckpt_path CKPT --images ...``): the command line of :class:`Predictor`.

It takes images (files, folders, globs, list files: :mod:`cxr_lightning.inference.inputs`), an
optional metadata CSV (:mod:`cxr_lightning.inference.metadata_table`) and writes the predictions
CSV and its ``<out>.skipped.csv`` (:mod:`cxr_lightning.inference.predictor`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cxr_lightning.checkpoint import add_trust_argument
from cxr_lightning.cli.parser import CommandParser
from cxr_lightning.inference.predictor import Predictor, skipped_csv_path
from cxr_lightning.output_files import atomic_outputs, check_writable_folder

__all__ = ["add_common_arguments", "add_predict_arguments", "build_predict_parser", "main", "run_predict"]


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """``--ckpt_path --images --metadata --batch_size --device --workers --no_progress``."""
    parser.add_argument("--ckpt_path", required=True, type=Path, metavar="CKPT", help="checkpoint (.ckpt) written by cxr-lightning fit")
    add_trust_argument(parser)
    parser.add_argument(
        "--images", required=True, nargs="+", metavar="PATH",
        help="image files (PNG/JPEG/DICOM), folders (searched recursively), quoted glob patterns or .txt list files",
    )  # fmt: skip
    parser.add_argument(
        "--metadata", type=Path, default=None, metavar="CSV",
        help="CSV with columns image,age,sex,view (or NIH's Image Index,Patient Age,Patient Gender,View Position); "
        "else DICOM tags; else the training mean age and unknown sex/view",
    )  # fmt: skip
    parser.add_argument("--batch_size", type=int, default=16, help="images per forward pass (default 16)")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--workers", type=int, default=2, help="image decoding threads (default 2)")
    parser.add_argument("--no_progress", action="store_true", help="no progress bar")


def add_predict_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Arguments of ``cxr-lightning predict-files``."""
    add_common_arguments(parser)
    parser.add_argument("--out", required=True, type=Path, help="output CSV (skipped files go to <out stem>.skipped.csv)")
    return parser


def run_predict(args: argparse.Namespace) -> int:
    """Run ``predict-files``; 0 on success, 1 when no image could be predicted.

    The output folder is checked before the model is loaded; the CSV and its skipped list appear
    together under their names only when both are complete (a full disk leaves neither).
    """
    check_writable_folder(Path(args.out).parent, "the predictions")
    predictor = Predictor(args.ckpt_path, device=args.device, batch_size=args.batch_size, num_workers=args.workers,
                          trusted_classes=args.trusted_classes)  # fmt: skip
    with atomic_outputs(args.out, skipped_csv_path(args.out)) as (staged_out, _):
        frame = predictor.predict_files(args.images, metadata_csv=args.metadata, out_csv=staged_out, progress=not args.no_progress)
    skipped = frame.attrs.get("skipped", [])
    note = f"; {len(skipped)} skipped, see {skipped_csv_path(args.out)}" if skipped else ""
    print(f"wrote {len(frame)} predictions to {args.out}{note}", file=sys.stderr)
    return 0 if len(frame) else 1


def build_predict_parser(prog: str = "cxr-lightning predict-files") -> argparse.ArgumentParser:
    parser = CommandParser(prog=prog, description="Predict label probabilities and decisions for image files with a checkpoint.")
    return add_predict_arguments(parser)


def main(argv: list[str] | None = None) -> int:
    return run_predict(build_predict_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
