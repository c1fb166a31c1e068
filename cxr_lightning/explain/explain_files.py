"""Explaining image files on disk: the loop the ``explain`` command and :func:`evaluate_localization` share.

For each image it runs Grad-CAM (:mod:`cxr_lightning.explain.gradcam`) on the labels asked for,
scores the map against the image's boxes (:mod:`cxr_lightning.explain.localization`) and writes an
overlay (:mod:`cxr_lightning.explain.overlay`); images that cannot be read are reported, not lost.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from cxr_lightning.data.image_files import walk_folder
from cxr_lightning.explain.boxes import BOX_LABEL_ALIASES, read_bbox_csv
from cxr_lightning.explain.gradcam import gradcam
from cxr_lightning.explain.localization import box_mask, energy_in_box, localization_summary, pointing_game, scale_box
from cxr_lightning.explain.overlay import overlay
from cxr_lightning.inference.metadata_table import read_metadata_table
from cxr_lightning.inference.predictor import Predictor

__all__ = ["evaluate_localization", "explain_files", "find_image_files", "labels_by_image", "resolve_labels", "summary_labels"]


def find_image_files(root: str | Path, names: Iterable[str]) -> tuple[dict[str, Path], list[str]]:
    """Paths of image ``names`` under ``root``: ``root/name``, ``root/images/name``, else anywhere below
    (NIH's ``images_001/images/...``). Returns ``(found, missing)``, ``found`` in the order of ``names``.

    An image is any entry of that name, as in the dataset's index
    (:func:`cxr_lightning.data.dataset.index_images`): a broken link or a link loop is found, and
    decoding then says what it is; a folder of that name gives way to a non-folder entry of that
    name anywhere below ``root``.
    """
    root = Path(root)
    found: dict[str, Path] = {}
    missing: list[str] = []
    index: dict[str, Path] | None = None
    for name in dict.fromkeys(names):
        # os.path.isdir follows links and is False for a link loop, like FolderEntry.is_dir.
        direct = (root / name, root / "images" / name)
        path = next((c for c in direct if os.path.lexists(c) and not os.path.isdir(c)), None)
        if path is None:
            if index is None:  # listed once, and only when a name is not where NIH's layouts put it
                index = _index_below(root)
            path = index.get(name)
        if path is None:
            missing.append(name)
        else:
            found[name] = path
    return found, missing


def _index_below(root: Path) -> dict[str, Path]:
    """Name -> path of every entry below ``root`` (hidden ones too); a non-folder entry wins over a folder."""
    index: dict[str, Path] = {}
    entries = walk_folder(root, skip_hidden=False).entries
    for entry in sorted(entries, key=lambda e: (e.is_dir, str(e.path))):  # files before folders
        index.setdefault(entry.name, entry.path)
    return index


def labels_by_image(boxes: pd.DataFrame) -> dict[str, list[str]]:
    """Image name -> the labels boxed in it, each once, in file order."""
    return boxes.groupby("image")["label"].agg(lambda s: list(dict.fromkeys(s))).to_dict()


def summary_labels(requested: list[str] | None, label_names: Sequence[str], boxes: pd.DataFrame) -> list[str]:
    """The rows of the localisation summary: the labels asked for, else the model's labels that have a box."""
    return requested if requested is not None else [n for n in label_names if n in set(boxes["label"])]


def resolve_labels(requested: Iterable[str] | None, known: Sequence[str]) -> list[str] | None:
    """The model's spelling of each requested label (case-insensitive, NIH box spellings too), each once; None for None."""
    if requested is None:
        return None
    lookup = {name.lower(): name for name in known}
    out = []
    for label in requested:
        name = lookup.get(BOX_LABEL_ALIASES.get(label, label).lower())
        if name is None:
            raise ValueError(f"unknown label {label!r}; the model's labels are {list(known)}")
        out.append(name)
    return list(dict.fromkeys(out))


def _safe(text: str) -> str:
    """``text`` as part of a file name: anything but letters, digits and ``-_.`` becomes ``_``."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)


def explain_files(
    predictor: Predictor,
    paths: Sequence[Path],
    labels_for: Callable[[str, np.ndarray], list[str]],
    boxes: pd.DataFrame | None = None,
    metadata: pd.DataFrame | None = None,
    overlays_dir: Path | None = None,
    progress: bool = False,
    tolerance: float = 0.0,
) -> tuple[pd.DataFrame, pd.DataFrame, list[dict[str, str]]]:
    """Grad-CAM for each image and its labels; box metrics and overlays.

    Returns ``(explanations, per_box, skipped)``: one row per (image, label), one per box.
    """
    boxes_by_key: dict[tuple[str, str], list[tuple[float, float, float, float]]] = {}
    if boxes is not None:
        for row in boxes.itertuples(index=False):
            boxes_by_key.setdefault((row.image, row.label), []).append((row.x, row.y, row.w, row.h))
    names = predictor.label_names
    size = predictor.spec.image_size
    explanations: list[dict[str, Any]] = []
    per_box: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    batches = predictor.iter_batches(paths, metadata, skipped, progress=progress, keep_grey=overlays_dir is not None, desc="explain")
    for batch in batches:
        probs = predictor.predict_tensors(batch.images, batch.metadata)
        wanted = [labels_for(path.name, probs[i]) for i, path in enumerate(batch.paths)]
        for label in dict.fromkeys(label for labels in wanted for label in labels):
            rows = [i for i, labels in enumerate(wanted) if label in labels]
            maps = gradcam(predictor.model, batch.images[rows], batch.metadata[rows], names.index(label))
            for heat, i in zip(maps, rows):
                path = batch.paths[i]
                image_boxes = boxes_by_key.get((path.name, label), [])
                record: dict[str, Any] = {
                    "image": path.name,
                    "path": str(path),
                    "label": label,
                    "probability": float(probs[i, names.index(label)]),
                    "n_boxes": len(image_boxes),
                }
                empty = float(heat.max()) <= 0.0
                record["empty_heatmap"] = empty
                hits, energies = [], []
                for box in image_boxes:
                    scaled = scale_box(box, batch.original_sizes[i], size)
                    hit, energy = pointing_game(heat, scaled, tolerance), energy_in_box(heat, scaled)
                    hits.append(hit)
                    energies.append(energy)
                    per_box.append(
                        {
                            "image": path.name,
                            "label": label,
                            "x": box[0], "y": box[1], "w": box[2], "h": box[3],
                            "original_width": batch.original_sizes[i][0],
                            "original_height": batch.original_sizes[i][1],
                            "box_area_fraction": float(box_mask(scaled, size, size).sum() / (size * size)),
                            "probability": record["probability"],
                            "pointing_hit": bool(hit),
                            "energy_in_box": energy,
                            "empty_heatmap": empty,
                        }  # fmt: skip
                    )
                record["pointing_hit"] = float(np.mean(hits)) if hits else math.nan
                record["energy_in_box"] = float(np.mean(energies)) if energies else math.nan
                if overlays_dir is not None:
                    target = overlays_dir / f"{_safe(path.stem)}__{_safe(label)}.png"
                    threshold = float(predictor.thresholds[names.index(label)])
                    overlay(batch.greys[i], heat, target, boxes=image_boxes,
                            title=f"{path.name}: {label}, probability {record['probability']:.2f} (tuned threshold {threshold:.2f})")
                    record["overlay"] = str(target)
                explanations.append(record)
    box_columns = ["image", "label", "x", "y", "w", "h", "original_width", "original_height", "box_area_fraction",
                   "probability", "pointing_hit", "energy_in_box", "empty_heatmap"]  # fmt: skip
    return pd.DataFrame(explanations), pd.DataFrame(per_box, columns=box_columns), skipped


def _as_predictor(model, spec, batch_size: int, device: str | torch.device | None):
    if isinstance(model, Predictor):
        return model
    if spec is None:
        raise ValueError("pass the model's DataSpec (spec=...) or a Predictor")
    device = device or next(model.parameters()).device
    return Predictor.from_model(model, spec, device=device, batch_size=batch_size)


def evaluate_localization(
    model,
    images_root: str | Path,
    bbox_csv: str | Path,
    labels: Iterable[str] | None = None,
    spec=None,
    metadata_csv: str | Path | pd.DataFrame | None = None,
    overlays_dir: str | Path | None = None,
    batch_size: int = 16,
    tolerance: float = 0.0,
    progress: bool = False,
) -> pd.DataFrame:
    """Grad-CAM localisation against boxes, per label (see :func:`localization_summary`).

    Args:
        model: a :class:`~cxr_lightning.inference.predictor.Predictor`, or a classifier together with ``spec``.
        images_root: folder holding the box CSV's images (``name``, ``images/name`` or anywhere below).
        bbox_csv: NIH-format boxes in pixels of each original image.
        labels: labels to evaluate (default: every box label the model has).
        metadata_csv: optional metadata (see :mod:`cxr_lightning.inference.metadata_table`); else defaults.
        overlays_dir: also write an overlay per (image, label) with its boxes.
        tolerance: pointing-game tolerance in model-input pixels.

    Returns the summary frame; ``attrs['per_box']`` holds one row per box and
    ``attrs['skipped']`` the images that were missing or unreadable.
    """
    predictor = _as_predictor(model, spec, batch_size, None)
    boxes = read_bbox_csv(bbox_csv)
    wanted = resolve_labels(labels, predictor.label_names)
    unknown = sorted(set(boxes["label"]) - set(predictor.label_names))
    if unknown:
        print(f"[boxes] labels the model does not have are ignored: {unknown}", file=sys.stderr)
    boxes = boxes[boxes["label"].isin(wanted if wanted is not None else predictor.label_names)]
    found, missing = find_image_files(images_root, boxes["image"])
    boxes = boxes[boxes["image"].isin(found)]
    by_image = labels_by_image(boxes)
    table = None if metadata_csv is None else read_metadata_table(metadata_csv)
    _, per_box, skipped = explain_files(
        predictor, list(found.values()), lambda name, probs: by_image.get(name, []), boxes, table,
        Path(overlays_dir) if overlays_dir is not None else None, progress, tolerance,
    )  # fmt: skip
    skipped = [{"path": name, "reason": "image not found under the images root"} for name in missing] + skipped
    summary = localization_summary(per_box, summary_labels(wanted, predictor.label_names, boxes))
    summary.attrs["per_box"] = per_box
    summary.attrs["skipped"] = skipped
    return summary
