"""Predictions and targets handed to the statistics (numpy, lists or torch) as checked numpy matrices.

The bootstrap, DeLong and calibration accept the same inputs: ``(N, L)`` or ``(N,)`` arrays, torch
tensors included (bf16 too), and label names that default to the NIH labels.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from cxr_lightning.data.labels import LABELS

__all__ = ["as_matrix", "check_scores_and_targets", "resolve_label_names"]


def as_matrix(name: str, x: Any, dtype: Any = None) -> np.ndarray:
    """``x`` (array, list or tensor, bf16 included) as an (N, L) array; a vector becomes one column."""
    if hasattr(x, "detach"):
        x = x.detach()
        x = (x.float() if x.is_floating_point() else x).cpu().numpy()
    arr = np.asarray(x, dtype=dtype)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2:
        raise ValueError(f"{name} must be (N, L) or (N,); got shape {arr.shape}")
    return arr


def check_scores_and_targets(probs: Any, targets: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(probs float64 (N, L), targets bool (N, L))``; ``ValueError`` on a shape mismatch, NaN/inf scores or non-0/1 targets."""
    p = as_matrix("probs", probs, np.float64)
    t = as_matrix("targets", targets)
    if p.shape != t.shape:
        raise ValueError(f"probs {p.shape} and targets {t.shape} differ in shape")
    if not np.isfinite(p).all():
        raise ValueError("probs contains NaN or inf")
    if not np.isin(t, (0, 1)).all():
        raise ValueError("targets must be 0/1")
    return p, t.astype(bool)


def resolve_label_names(label_names: Sequence[str] | None, num_labels: int) -> tuple[str, ...]:
    """``label_names`` as a tuple of ``num_labels`` names; by default the NIH labels when there are 15, else ``label_<i>``."""
    if label_names is None:
        return LABELS if num_labels == len(LABELS) else tuple(f"label_{i}" for i in range(num_labels))
    names = tuple(label_names)
    if len(names) != num_labels:
        raise ValueError(f"{len(names)} label names for {num_labels} labels")
    return names
