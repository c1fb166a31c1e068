"""Localisation scores of a heatmap against a box, and their summary per label.

A box ``(x, y, w, h)`` is in heatmap pixels (a pixel ``(i, j)`` covers ``[j, j+1) x [i, i+1)``;
fractional boxes, e.g. scaled from 1024 to 224, count pixels by the fraction of their area inside):

* :func:`pointing_game`: hit when the heatmap's maximum is reached at a pixel the box touches
  (Zhang et al. 2016; ``tolerance`` grows the box by that many pixels on every side). A constant
  heatmap (no maximum) is a miss.
* :func:`energy_in_box`: the heatmap's mass inside the box over its total mass (0 for an empty
  map). A uniform map scores the box's area fraction, reported as the chance level
  ``mean_box_area_fraction``.

Boxes given in pixels of the original image are scaled to the model input by ``S / width`` and
``S / height`` of each image as read from disk (:func:`scale_box`: the same non-uniform resize the
transform applies).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

__all__ = ["Box", "box_mask", "energy_in_box", "localization_summary", "pointing_game", "scale_box"]

Box = Sequence[float]  # x, y, w, h


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


def localization_summary(per_box: pd.DataFrame, labels: Sequence[str]) -> pd.DataFrame:
    """Per label (in ``labels`` order) and ``all``: n_boxes, n_images, pointing_hit_rate,
    mean_energy_in_box, its chance level mean_box_area_fraction, and empty_heatmaps (boxes whose
    heatmap was all zero: counted as misses with no energy, and flagged so that a reader knows)."""
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
                "empty_heatmaps": int(part["empty_heatmap"].sum()) if n and "empty_heatmap" in part else 0,
            }
        )
    return pd.DataFrame(rows)
