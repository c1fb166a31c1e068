"""``cxr-lightning explain``: Grad-CAM overlays of image files and, with ``--boxes``, localisation against NIH's boxes."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from cxr_lightning.cli.parser import CommandParser
from cxr_lightning.data.labels import NO_FINDING
from cxr_lightning.data.metadata import packaged_file
from cxr_lightning.explain.boxes import read_bbox_csv
from cxr_lightning.explain.explain_files import explain_files, labels_by_image, resolve_labels, summary_labels
from cxr_lightning.explain.localization import localization_summary
from cxr_lightning.inference.inputs import resolve_inputs
from cxr_lightning.inference.metadata_table import read_metadata_table
from cxr_lightning.inference.predict_command import add_common_arguments
from cxr_lightning.inference.predictor import Predictor

__all__ = ["add_explain_arguments", "build_explain_parser", "main", "run_explain"]


def add_explain_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Arguments of ``cxr-lightning explain``."""
    add_common_arguments(parser)
    parser.add_argument(
        "--labels", nargs="+", default=None, metavar="LABEL",
        help="labels to explain (default: with --boxes the labels boxed in each image, else each image's most probable finding)",
    )  # fmt: skip
    parser.add_argument("--out", required=True, type=Path, help="output folder: overlays/, explanations.csv, localization.csv")
    parser.add_argument("--boxes", type=Path, default=None, metavar="CSV",
                        help="NIH BBox_List_2017.csv ('nih': the packaged official file): evaluate localisation on the boxed images")
    parser.add_argument("--boxed_only", action="store_true", help="with --boxes: explain only the images that have a box")
    parser.add_argument("--tolerance", type=float, default=0.0, help="pointing-game tolerance in model-input pixels (default 0)")
    parser.add_argument("--no_overlays", action="store_true", help="do not write overlay PNGs")
    return parser


def run_explain(args: argparse.Namespace) -> int:
    """Run ``explain``: overlays, ``explanations.csv`` and, with ``--boxes``, ``localization.csv`` (+ per box)."""
    predictor = Predictor(args.ckpt_path, device=args.device, batch_size=args.batch_size, num_workers=args.workers,
                          trusted_classes=args.trusted_classes)  # fmt: skip
    labels = resolve_labels(args.labels, predictor.label_names)
    paths, skipped = resolve_inputs(args.images)
    for problem in skipped:
        print(f"skipped {problem['path']}: {problem['reason']}", file=sys.stderr)
    boxes = None
    boxed: dict[str, list[str]] = {}
    if args.boxes is not None:
        if str(args.boxes) == "nih":
            args.boxes = packaged_file("BBox_List_2017.csv.gz")
        boxes = read_bbox_csv(args.boxes)
        if args.boxed_only:
            paths = [p for p in paths if p.name in set(boxes["image"])]
        names = {p.name for p in paths}
        boxes = boxes[boxes["image"].isin(names) & boxes["label"].isin(labels or predictor.label_names)]
        boxed = labels_by_image(boxes)
        print(f"[boxes] {len(boxes)} boxes on {len(boxed)} of the {len(paths)} images", file=sys.stderr)
    findings = [j for j, name in enumerate(predictor.label_names) if name != NO_FINDING] or list(range(len(predictor.label_names)))

    def labels_for(name: str, probs: np.ndarray) -> list[str]:
        if labels is not None:
            return labels
        if name in boxed:
            return boxed[name]
        return [predictor.label_names[max(findings, key=lambda j: probs[j])]]

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    table = read_metadata_table(args.metadata) if args.metadata else None
    explanations, per_box, more = explain_files(
        predictor, paths, labels_for, boxes, table, None if args.no_overlays else out / "overlays",
        not args.no_progress, args.tolerance,
    )  # fmt: skip
    skipped += more
    explanations.to_csv(out / "explanations.csv", index=False)
    pd.DataFrame(skipped, columns=["path", "reason"]).to_csv(out / "skipped.csv", index=False)
    note = f"; {len(skipped)} skipped (skipped.csv)" if skipped else ""
    print(f"wrote {len(explanations)} explanations to {out}{note}", file=sys.stderr)
    if boxes is not None:
        summary = localization_summary(per_box, summary_labels(labels, predictor.label_names, boxes))
        summary.to_csv(out / "localization.csv", index=False)
        per_box.to_csv(out / "localization_boxes.csv", index=False)
        print(summary.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    return 0 if len(explanations) else 1


def build_explain_parser(prog: str = "cxr-lightning explain") -> argparse.ArgumentParser:
    parser = CommandParser(prog=prog, description="Grad-CAM overlays and localisation against bounding boxes.")
    return add_explain_arguments(parser)


def main(argv: list[str] | None = None) -> int:
    return run_explain(build_explain_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
