"""``cxr-lightning export``: the command line of :func:`~cxr_lightning.inference.export.export_model`."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from cxr_lightning.checkpoint import add_trust_argument
from cxr_lightning.cli.parser import CommandParser
from cxr_lightning.inference.export import export_model, sidecar_path
from cxr_lightning.output_files import atomic_outputs, check_writable_folder

__all__ = ["add_export_arguments", "build_export_parser", "main", "run_export"]


def add_export_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Arguments of ``cxr-lightning export``."""
    parser.add_argument("--ckpt_path", required=True, type=Path, metavar="CKPT", help="checkpoint (.ckpt) written by cxr-lightning fit")
    add_trust_argument(parser)
    parser.add_argument("--format", choices=("onnx", "torchscript"), default="onnx", help="model format (default onnx)")
    parser.add_argument("--out", required=True, type=Path, help="model file to write; the sidecar goes to <out>.json")
    parser.add_argument("--image_size", type=int, default=None, help="input side (default: the training image size)")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17; 18+ uses the torch.export-based exporter)")
    parser.add_argument("--exporter", choices=("auto", "legacy", "dynamo"), default="auto", help="ONNX exporter (default: by opset)")
    parser.add_argument("--no_verify", action="store_true", help="do not compare the exported model with PyTorch")
    return parser


def run_export(args: argparse.Namespace) -> int:
    """Run ``export``; 0 on success."""
    # The folder is checked before the model is traced; the model and its sidecar appear under
    # their names together, when both are complete (a full disk or a crash leaves neither).
    check_writable_folder(Path(args.out).parent, "the exported model")
    with atomic_outputs(args.out, sidecar_path(args.out)) as (staged_out, _):
        result = export_model(
            args.ckpt_path, staged_out, format=args.format, image_size=args.image_size, opset=args.opset,
            exporter=args.exporter, verify=not args.no_verify, trusted_classes=args.trusted_classes,
        )  # fmt: skip
    result = dataclasses.replace(result, path=Path(args.out), sidecar=sidecar_path(args.out))
    opset = f", opset {result.opset}" if result.opset else ""
    print(f"wrote {result.path} ({result.format}{opset}) and {result.sidecar}")
    if result.max_abs_diff is not None:
        print(f"max |exported - PyTorch| probability difference on a random batch: {result.max_abs_diff:.2e}")
    return 0


def build_export_parser(prog: str = "cxr-lightning export") -> argparse.ArgumentParser:
    description = "Export a checkpoint to ONNX or TorchScript (probabilities out) with a JSON sidecar."
    parser = CommandParser(prog=prog, description=description)
    return add_export_arguments(parser)


def main(argv: list[str] | None = None) -> int:
    return run_export(build_export_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
