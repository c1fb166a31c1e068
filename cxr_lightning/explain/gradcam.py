"""Where does the model look? Grad-CAM heatmaps, overlays and localisation against NIH's boxes.

**Grad-CAM** (Selvaraju et al. 2017): for one label, the gradient of its *logit* with respect to
a layer's activations ``A`` is averaged per channel into weights ``w``; the map is
``ReLU(sum_k w_k A_k)``, upsampled (bilinear) to the input size S x S and scaled to [0, 1] per
image (a map with no positive evidence is all zeros). Target layers:

* ``BaselineCNN``: the last conv block (Conv + BN + ReLU), before the global average pool;
* ``ResNet50Classifier``: ``layer4`` (7 x 7 for a 224 input);
* ``BEiTClassifier``: the output tokens of the last transformer layer; the patch tokens (the
  CLS token has no place in the image and is dropped) are reshaped to the patch grid
  ``(S / patch) x (S / patch)``. Because the backbone **mean-pools all tokens** (CLS included)
  and the head is linear in the pooled features, every token receives the same gradient, so
  Grad-CAM here is exactly each patch token's (positive) contribution to the logit, the
  transformer analogue of CAM. (Attention rollout is not used: it ignores the head and the
  label, and Hugging Face's SDPA attention does not return attention weights.)

For the CNN and ResNet, whose pooled features also feed a linear head, Grad-CAM likewise equals
CAM (the exact per-location contribution to the logit, up to the ReLU).

**Localisation metrics** against a box ``(x, y, w, h)`` in heatmap pixels (a pixel ``(i, j)``
covers ``[j, j+1) x [i, i+1)``; fractional boxes, e.g. scaled from 1024 to 224, count pixels by
the fraction of their area inside):

* :func:`pointing_game`: hit when the heatmap's maximum is reached at a pixel the box touches
  (Zhang et al. 2016; ``tolerance`` grows the box by that many pixels on every side). A constant
  heatmap (no maximum) is a miss.
* :func:`energy_in_box`: the heatmap's mass inside the box over its total mass (0 for an empty
  map). A uniform map scores the box's area fraction, reported as the chance level
  ``mean_box_area_fraction``.

NIH's ``BBox_List_2017.csv`` (``Image Index,Finding Label,Bbox [x,y,w,h],,,``; 984 boxes of 8
findings, its ``Infiltrate`` is our ``Infiltration``) gives boxes in pixels of the original
1024 x 1024 image; they are scaled to the model input by ``S / width`` and ``S / height`` of each
image as read from disk (the same non-uniform resize the transform applies).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from cxr_lightning.data.image_files import walk_folder

__all__ = [
    "BOX_LABEL_ALIASES",
    "add_explain_arguments",
    "box_mask",
    "energy_in_box",
    "evaluate_localization",
    "explain",
    "find_image_files",
    "find_target_layer",
    "gradcam",
    "overlay",
    "pointing_game",
    "read_bbox_csv",
    "run_explain",
    "scale_box",
]

Box = Sequence[float]  # x, y, w, h
#: NIH box-file spellings -> our label names
BOX_LABEL_ALIASES = {"Infiltrate": "Infiltration", "Pleural Thickening": "Pleural_Thickening"}


# ----------------------------------------------------------------------------------------------
# Grad-CAM
# ----------------------------------------------------------------------------------------------


def find_target_layer(model: nn.Module) -> tuple[nn.Module, int | None]:
    """The layer Grad-CAM uses for a cxr_lightning classifier, and the patch size for token layers (else None)."""
    from cxr_lightning.models.beit import BeitBackbone
    from cxr_lightning.models.cnn import CNNBackbone
    from cxr_lightning.models.resnet import ResNet50Backbone

    root = getattr(model, "backbone", model)
    for module in root.modules():
        if isinstance(module, CNNBackbone):
            return module.features[-1], None
        if isinstance(module, ResNet50Backbone):
            return module.resnet.layer4, None
        if isinstance(module, BeitBackbone):
            beit = module.model
            layers = getattr(beit, "layers", None)
            if layers is None:  # transformers 4.x layout
                layers = beit.encoder.layer
            return layers[-1], int(beit.config.patch_size)
    convs = [m for m in root.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError(f"no Grad-CAM target layer found in {type(model).__name__}; pass target_layer=")
    return convs[-1], None


def _label_indices(model: nn.Module, label: int | str | Sequence[int | str], batch: int) -> torch.Tensor:
    names = list(getattr(model, "label_names", []) or [])

    def one(value: int | str) -> int:
        if isinstance(value, str):
            value = BOX_LABEL_ALIASES.get(value, value)
            if value not in names:
                raise ValueError(f"unknown label {value!r}; the model's labels are {names}")
            return names.index(value)
        return int(value)

    if isinstance(label, (int, str, np.integer)):
        return torch.full((batch,), one(label), dtype=torch.long)
    indices = torch.tensor([one(v) for v in label], dtype=torch.long)
    if len(indices) != batch:
        raise ValueError(f"{len(indices)} labels for {batch} images")
    return indices


def _normalise_maps(cam: torch.Tensor) -> torch.Tensor:
    """Per-map min-max to [0, 1]; a (numerically) constant map becomes zeros."""
    flat = cam.flatten(1)
    low, high = flat.min(1).values, flat.max(1).values
    span = high - low
    valid = span > 1e-12 * torch.clamp(high.abs(), min=1.0)
    scaled = (cam - low[:, None, None]) / torch.where(valid, span, torch.ones_like(span))[:, None, None]
    return torch.where(valid[:, None, None], scaled, torch.zeros_like(cam)).clamp_(0.0, 1.0)


def gradcam(
    model: nn.Module,
    images: torch.Tensor,
    metadata: torch.Tensor,
    label: int | str | Sequence[int | str],
    target_layer: nn.Module | None = None,
    patch_size: int | None = None,
    return_logits: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Grad-CAM maps ``(B, S, S)`` in [0, 1] for ``images (B, C, S, S)``, ``metadata (B, M)``.

    ``label``: one index or name for all images, or one per image. ``target_layer`` defaults to
    :func:`find_target_layer`; a layer whose output is ``(B, tokens, D)`` is treated as ViT
    tokens (``patch_size`` gives the grid; default: a square grid of the last tokens). The model
    runs in eval mode (restored afterwards). With ``return_logits`` also the ``(B, L)`` logits.
    """
    if images.ndim != 4:
        raise ValueError(f"images must be (B, C, H, W), got {tuple(images.shape)}")
    if target_layer is None:
        target_layer, found_patch = find_target_layer(model)
        patch_size = patch_size or found_patch
    batch, _, height, width = images.shape
    indices = _label_indices(model, label, batch)
    captured: dict[str, torch.Tensor] = {}

    def hook(module, inputs, output):
        captured["activation"] = output[0] if isinstance(output, (tuple, list)) else output

    was_training = model.training
    model.eval()
    handle = target_layer.register_forward_hook(hook)
    try:
        with torch.enable_grad():
            device = next(model.parameters()).device
            # The input requires grad so that a frozen backbone still builds a graph.
            x = images.detach().to(device).clone().requires_grad_(True)
            logits = model(x, metadata.detach().to(device))
            if "activation" not in captured:
                raise RuntimeError("the Grad-CAM target layer did not run in the forward pass")
            activation = captured["activation"]
            score = logits.gather(1, indices.to(device)[:, None]).sum()
            (grad,) = torch.autograd.grad(score, activation)
    finally:
        handle.remove()
        model.train(was_training)

    activation, grad = activation.detach().float(), grad.detach().float()
    if activation.ndim == 4:  # (B, K, h, w)
        weights = grad.mean(dim=(2, 3))
        cam = torch.relu((weights[:, :, None, None] * activation).sum(1))
    elif activation.ndim == 3:  # (B, tokens, D)
        if patch_size:
            grid_h, grid_w = height // patch_size, width // patch_size
        else:
            side = math.isqrt(activation.shape[1])
            grid_h = grid_w = side
        n = grid_h * grid_w
        if n > activation.shape[1]:
            raise ValueError(f"{activation.shape[1]} tokens cannot form a {grid_h}x{grid_w} patch grid")
        patches, patch_grads = activation[:, -n:], grad[:, -n:]  # the CLS token comes first
        weights = patch_grads.mean(1)
        cam = torch.relu((patches * weights[:, None, :]).sum(-1)).reshape(batch, grid_h, grid_w)
    else:
        raise ValueError(f"Grad-CAM needs a (B, K, h, w) or (B, tokens, D) activation, got {tuple(activation.shape)}")
    cam = F.interpolate(cam[:, None], size=(height, width), mode="bilinear", align_corners=False)[:, 0]
    maps = _normalise_maps(cam).cpu()
    return (maps, logits.detach().float().cpu()) if return_logits else maps


def explain(
    model: nn.Module,
    image: torch.Tensor,
    metadata: torch.Tensor,
    label_index: int | str,
    target_layer: nn.Module | None = None,
) -> torch.Tensor:
    """Grad-CAM heatmap ``(S, S)`` in [0, 1] of one label for one image ``(C, S, S)`` (or ``(1, C, S, S)``)."""
    images = image.unsqueeze(0) if image.ndim == 3 else image
    meta = metadata.unsqueeze(0) if metadata.ndim == 1 else metadata
    if images.shape[0] != 1:
        raise ValueError("explain takes one image; use gradcam for a batch")
    return gradcam(model, images, meta, label_index, target_layer=target_layer)[0]


# ----------------------------------------------------------------------------------------------
# Overlays
# ----------------------------------------------------------------------------------------------


def _as_grey(image: torch.Tensor | np.ndarray) -> np.ndarray:
    array = image.detach().float().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image, dtype=np.float32)
    if array.ndim == 3:
        array = array.mean(axis=0)
    if array.ndim != 2:
        raise ValueError(f"image must be (H, W), (1, H, W) or (C, H, W), got {array.shape}")
    return np.clip(array, 0.0, 1.0)


def _resize_map(heatmap: torch.Tensor | np.ndarray, height: int, width: int) -> np.ndarray:
    heat = torch.as_tensor(np.asarray(heatmap, dtype=np.float32))
    if tuple(heat.shape) != (height, width):
        heat = F.interpolate(heat[None, None], size=(height, width), mode="bilinear", align_corners=False)[0, 0]
    return heat.clamp(0.0, 1.0).numpy()


def overlay(
    image: torch.Tensor | np.ndarray,
    heatmap: torch.Tensor | np.ndarray,
    path: str | Path,
    alpha: float = 0.45,
    boxes: Iterable[Box] = (),
    title: str | None = None,
    cmap: str = "jet",
) -> Path:
    """Write ``image`` (grey in [0, 1]) with ``heatmap`` blended on top as a PNG.

    The heatmap is resized (bilinear) to the image. ``boxes`` ``(x, y, w, h)`` in image pixels
    are outlined in green; ``title`` is written in the top-left corner.
    """
    from matplotlib import colormaps
    from PIL import Image, ImageDraw

    grey = _as_grey(image)
    height, width = grey.shape
    heat = _resize_map(heatmap, height, width)
    colour = colormaps[cmap](heat)[..., :3]
    blended = (1.0 - alpha) * grey[..., None] + alpha * colour
    picture = Image.fromarray(np.clip(np.rint(blended * 255.0), 0, 255).astype(np.uint8), mode="RGB")
    draw = ImageDraw.Draw(picture)
    line = max(1, round(max(height, width) / 256))
    for x, y, w, h in boxes:
        draw.rectangle([float(x), float(y), float(x + w) - 1, float(y + h) - 1], outline=(0, 255, 0), width=line)
    if title:
        draw.text((2, 2), title, fill=(255, 255, 255))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    picture.save(path, format="PNG")
    return path


# ----------------------------------------------------------------------------------------------
# Boxes and localisation metrics
# ----------------------------------------------------------------------------------------------


def scale_box(box: Box, original_size: tuple[int, int], target_size: int | tuple[int, int]) -> tuple[float, float, float, float]:
    """Box ``(x, y, w, h)`` in pixels of an image of ``original_size (W, H)`` -> pixels of ``target_size`` (S or ``(W, H)``)."""
    width, height = original_size
    target_w, target_h = (target_size, target_size) if isinstance(target_size, (int, np.integer)) else target_size
    sx, sy = target_w / width, target_h / height
    x, y, w, h = (float(v) for v in box)
    return x * sx, y * sy, w * sx, h * sy


def box_mask(box: Box, height: int, width: int) -> np.ndarray:
    """``(H, W)`` fraction of each pixel's area inside ``box`` (pixel ``(i, j)`` covers ``[j, j+1) x [i, i+1)``)."""
    x, y, w, h = (float(v) for v in box)
    xs, ys = np.arange(width, dtype=np.float64), np.arange(height, dtype=np.float64)
    cover_x = np.clip(np.minimum(xs + 1, x + w) - np.maximum(xs, x), 0.0, 1.0)
    cover_y = np.clip(np.minimum(ys + 1, y + h) - np.maximum(ys, y), 0.0, 1.0)
    return np.outer(cover_y, cover_x)


def _heat_array(heatmap: torch.Tensor | np.ndarray) -> np.ndarray:
    heat = heatmap.detach().float().cpu().numpy() if isinstance(heatmap, torch.Tensor) else np.asarray(heatmap, dtype=np.float64)
    if heat.ndim != 2:
        raise ValueError(f"heatmap must be (H, W), got {heat.shape}")
    return heat.astype(np.float64)


def pointing_game(heatmap: torch.Tensor | np.ndarray, box: Box, tolerance: float = 0.0) -> bool:
    """True when the heatmap's maximum lies in a pixel the box (grown by ``tolerance`` pixels) touches."""
    heat = _heat_array(heatmap)
    peak = heat.max()
    if not np.isfinite(peak) or peak <= heat.min():
        return False  # constant (or empty) map: it points nowhere
    x, y, w, h = (float(v) for v in box)
    touched = box_mask((x - tolerance, y - tolerance, w + 2 * tolerance, h + 2 * tolerance), *heat.shape) > 0
    return bool(touched.any() and heat[touched].max() >= peak)


def energy_in_box(heatmap: torch.Tensor | np.ndarray, box: Box) -> float:
    """Fraction of the heatmap's (non-negative) mass inside the box; 0 for an all-zero map."""
    heat = np.clip(_heat_array(heatmap), 0.0, None)
    total = heat.sum()
    return float((heat * box_mask(box, *heat.shape)).sum() / total) if total > 0 else 0.0


def read_bbox_csv(path: str | Path) -> pd.DataFrame:
    """NIH's ``BBox_List_2017.csv`` (or any ``image,label,x,y,w,h`` CSV with a header) as
    ``image, label, x, y, w, h``; label aliases (``Infiltrate``) become our names."""
    raw = pd.read_csv(path, header=None, skiprows=1, usecols=range(6), dtype=str, skip_blank_lines=True)
    raw.columns = ["image", "label", "x", "y", "w", "h"]
    raw = raw.dropna(subset=["image"])
    frame = pd.DataFrame({"image": raw["image"].str.strip(), "label": raw["label"].str.strip().replace(BOX_LABEL_ALIASES)})
    for column in ("x", "y", "w", "h"):
        frame[column] = pd.to_numeric(raw[column], errors="coerce")
    bad = frame[["x", "y", "w", "h"]].isna().any(axis=1) | (frame["w"] <= 0) | (frame["h"] <= 0)
    if bad.any():
        print(f"[boxes] {path}: {int(bad.sum())} rows without a valid box ignored", file=sys.stderr)
    return frame[~bad].reset_index(drop=True)


def find_image_files(root: str | Path, names: Iterable[str]) -> tuple[dict[str, Path], list[str]]:
    """Paths of image ``names`` under ``root``: ``root/name``, ``root/images/name``, else anywhere below
    (NIH's ``images_001/images/...``). Returns ``(found, missing)``."""
    root = Path(root)
    found: dict[str, Path] = {}
    missing: list[str] = []
    index: dict[str, Path] | None = None
    for name in dict.fromkeys(names):
        for candidate in (root / name, root / "images" / name):
            # Any entry of that name, even a folder or a link loop: decoding then says what it is.
            if os.path.lexists(candidate):
                found[name] = candidate
                break
        else:
            if index is None:
                index = {}
                entries = walk_folder(root, skip_hidden=False).entries
                for entry in sorted(entries, key=lambda e: (e.is_dir, str(e.path))):  # files before folders
                    index.setdefault(entry.name, entry.path)
            if name in index:
                found[name] = index[name]
            else:
                missing.append(name)
    return found, missing


# ----------------------------------------------------------------------------------------------
# Explaining files (the command and evaluate_localization)
# ----------------------------------------------------------------------------------------------


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)


def _explain_paths(
    predictor,
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
                        }  # fmt: skip
                    )
                record["pointing_hit"] = float(np.mean(hits)) if hits else math.nan
                record["energy_in_box"] = float(np.mean(energies)) if energies else math.nan
                if overlays_dir is not None:
                    target = overlays_dir / f"{_safe(path.stem)}__{_safe(label)}.png"
                    overlay(batch.greys[i], heat, target, boxes=image_boxes, title=f"{label} p={record['probability']:.2f}")
                    record["overlay"] = str(target)
                explanations.append(record)
    box_columns = ["image", "label", "x", "y", "w", "h", "original_width", "original_height", "box_area_fraction",
                   "probability", "pointing_hit", "energy_in_box"]  # fmt: skip
    return pd.DataFrame(explanations), pd.DataFrame(per_box, columns=box_columns), skipped


def localization_summary(per_box: pd.DataFrame, labels: Sequence[str]) -> pd.DataFrame:
    """Per label (in ``labels`` order) and ``all``: n_boxes, n_images, pointing_hit_rate,
    mean_energy_in_box and its chance level mean_box_area_fraction."""
    rows = []
    for label in [*labels, "all"]:
        part = per_box if label == "all" else per_box[per_box["label"] == label]
        n = len(part)
        rows.append(
            {
                "label": label,
                "n_boxes": n,
                "n_images": int(part["image"].nunique()) if n else 0,
                "pointing_hit_rate": float(part["pointing_hit"].mean()) if n else math.nan,
                "mean_energy_in_box": float(part["energy_in_box"].mean()) if n else math.nan,
                "mean_box_area_fraction": float(part["box_area_fraction"].mean()) if n else math.nan,
            }
        )
    return pd.DataFrame(rows)


def _resolve_labels(requested: Iterable[str] | None, known: Sequence[str]) -> list[str] | None:
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


def _as_predictor(model, spec, batch_size: int, device: str | torch.device | None):
    from cxr_lightning.inference.predict import Predictor

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
        model: a :class:`~cxr_lightning.inference.predict.Predictor`, or a classifier together with ``spec``.
        images_root: folder holding the box CSV's images (``name``, ``images/name`` or anywhere below).
        bbox_csv: NIH-format boxes in pixels of each original image.
        labels: labels to evaluate (default: every box label the model has).
        metadata_csv: optional metadata (see :mod:`cxr_lightning.inference.predict`); else defaults.
        overlays_dir: also write an overlay per (image, label) with its boxes.
        tolerance: pointing-game tolerance in model-input pixels.

    Returns the summary frame; ``attrs['per_box']`` holds one row per box and
    ``attrs['skipped']`` the images that were missing or unreadable.
    """
    from cxr_lightning.inference.predict import read_metadata_table

    predictor = _as_predictor(model, spec, batch_size, None)
    boxes = read_bbox_csv(bbox_csv)
    wanted = _resolve_labels(labels, predictor.label_names)
    unknown = sorted(set(boxes["label"]) - set(predictor.label_names))
    if unknown:
        print(f"[boxes] labels the model does not have are ignored: {unknown}", file=sys.stderr)
    boxes = boxes[boxes["label"].isin(wanted if wanted is not None else predictor.label_names)]
    found, missing = find_image_files(images_root, boxes["image"])
    boxes = boxes[boxes["image"].isin(found)]
    by_image = boxes.groupby("image")["label"].agg(lambda s: list(dict.fromkeys(s))).to_dict()
    table = None if metadata_csv is None else read_metadata_table(metadata_csv)
    _, per_box, skipped = _explain_paths(
        predictor, list(found.values()), lambda name, probs: by_image.get(name, []), boxes, table,
        Path(overlays_dir) if overlays_dir is not None else None, progress, tolerance,
    )  # fmt: skip
    skipped = [{"path": name, "reason": "image not found under the images root"} for name in missing] + skipped
    order = wanted if wanted is not None else [n for n in predictor.label_names if n in set(boxes["label"])]
    summary = localization_summary(per_box, order)
    summary.attrs["per_box"] = per_box
    summary.attrs["skipped"] = skipped
    return summary


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------


def add_explain_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Arguments of ``cxr-lightning explain``."""
    from cxr_lightning.inference.predict import add_common_arguments

    add_common_arguments(parser)
    parser.add_argument(
        "--labels", nargs="+", default=None, metavar="LABEL",
        help="labels to explain (default: with --boxes the labels boxed in each image, else each image's most probable finding)",
    )  # fmt: skip
    parser.add_argument("--out", required=True, type=Path, help="output folder: overlays/, explanations.csv, localization.csv")
    parser.add_argument("--boxes", type=Path, default=None, metavar="CSV",
                        help="NIH BBox_List_2017.csv ('nih': the packaged official file): evaluate localisation on the boxed images")
    parser.add_argument("--boxed-only", action="store_true", help="with --boxes: explain only the images that have a box")
    parser.add_argument("--tolerance", type=float, default=0.0, help="pointing-game tolerance in model-input pixels (default 0)")
    parser.add_argument("--no-overlays", action="store_true", help="do not write overlay PNGs")
    return parser


def run_explain(args: argparse.Namespace) -> int:
    """Run ``explain``: overlays, ``explanations.csv`` and, with ``--boxes``, ``localization.csv`` (+ per box)."""
    from cxr_lightning.data.labels import NO_FINDING
    from cxr_lightning.inference.predict import Predictor, read_metadata_table, resolve_inputs

    predictor = Predictor(args.checkpoint, device=args.device, batch_size=args.batch_size, num_workers=args.workers,
                          trusted_classes=args.trusted_classes)  # fmt: skip
    labels = _resolve_labels(args.labels, predictor.label_names)
    paths, skipped = resolve_inputs(args.images)
    for problem in skipped:
        print(f"skipped {problem['path']}: {problem['reason']}", file=sys.stderr)
    boxes = None
    boxed: dict[str, list[str]] = {}
    if args.boxes is not None:
        if str(args.boxes) == "nih":
            from cxr_lightning.data.metadata import packaged_file

            args.boxes = packaged_file("BBox_List_2017.csv.gz")
        boxes = read_bbox_csv(args.boxes)
        if args.boxed_only:
            paths = [p for p in paths if p.name in set(boxes["image"])]
        names = {p.name for p in paths}
        boxes = boxes[boxes["image"].isin(names) & boxes["label"].isin(labels or predictor.label_names)]
        boxed = boxes.groupby("image")["label"].agg(lambda s: list(dict.fromkeys(s))).to_dict()
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
    explanations, per_box, more = _explain_paths(
        predictor, paths, labels_for, boxes, table, None if args.no_overlays else out / "overlays",
        not args.no_progress, args.tolerance,
    )  # fmt: skip
    skipped += more
    explanations.to_csv(out / "explanations.csv", index=False)
    pd.DataFrame(skipped, columns=["path", "reason"]).to_csv(out / "skipped.csv", index=False)
    note = f"; {len(skipped)} skipped (skipped.csv)" if skipped else ""
    print(f"wrote {len(explanations)} explanations to {out}{note}", file=sys.stderr)
    if boxes is not None:
        order = labels if labels is not None else [n for n in predictor.label_names if n in set(boxes["label"])]
        summary = localization_summary(per_box, order)
        summary.to_csv(out / "localization.csv", index=False)
        per_box.to_csv(out / "localization_boxes.csv", index=False)
        print(summary.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    return 0 if len(explanations) else 1


def build_explain_parser(prog: str = "cxr-lightning explain") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description="Grad-CAM overlays and localisation against bounding boxes.")
    return add_explain_arguments(parser)


def main(argv: list[str] | None = None) -> int:
    return run_explain(build_explain_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
