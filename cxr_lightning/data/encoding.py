"""Metadata features (age, sex, view) and positive-class loss weights, fitted on the train split.

Metadata encodings (the width is what the model's fusion head receives):

* ``onehot`` (the paper's text, 5 numbers): age z-scored with the train split's mean/std,
  sex one-hot ``[M, F]``, view one-hot ``[PA, AP]``; an unknown sex or view is all zeros.
* ``code`` (the paper's ResNet and BEiT code, 3 numbers): age z-scored, sex ``M=1`` else 0,
  view ``AP=1`` else 0.
* ``cnn`` (the paper's CNN code, 3 numbers): age clipped to 0..100 and divided by 100,
  sex ``F=1, M=0``, unknown 0.5, view ``AP=1`` else 0.

A missing age is replaced by the train split's mean age (z-score 0), so no row is dropped.

Positive-class weights (``pos_weight`` of ``BCEWithLogitsLoss``; N train images, P positives):
``none``; ``linear`` = (N - P) / P; ``log`` = min(log1p((N - P) / P), 20) (the ResNet code);
``beit_log`` = 1 / ln(1.02 + P / N) (the BEiT code's "log" weights).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd

MetadataEncoding = Literal["onehot", "code", "cnn"]
PosWeightScheme = Literal["none", "linear", "log", "beit_log"]

FEATURE_NAMES: dict[str, tuple[str, ...]] = {
    "onehot": ("age_z", "sex_M", "sex_F", "view_PA", "view_AP"),
    "code": ("age_z", "sex_M", "view_AP"),
    "cnn": ("age_over_100", "sex_F", "view_AP"),
}
LOG_WEIGHT_CAP = 20.0


@dataclass
class MetadataEncoder:
    """Turns the ``age``/``sex``/``view`` columns into float32 features; state is JSON-able."""

    scheme: MetadataEncoding = "onehot"
    age_mean: float = 0.0
    age_std: float = 1.0

    def __post_init__(self) -> None:
        if self.scheme not in FEATURE_NAMES:
            raise ValueError(f"unknown metadata encoding {self.scheme!r}; choose one of {sorted(FEATURE_NAMES)}")

    @property
    def feature_names(self) -> tuple[str, ...]:
        return FEATURE_NAMES[self.scheme]

    @property
    def width(self) -> int:
        return len(self.feature_names)

    def fit(self, frame: pd.DataFrame) -> "MetadataEncoder":
        ages = frame["age"].to_numpy(dtype=float)
        ages = ages[~np.isnan(ages)]
        if len(ages) == 0:
            raise ValueError("cannot fit the metadata encoder: the train split has no known age")
        self.age_mean = float(ages.mean())
        std = float(ages.std(ddof=1)) if len(ages) > 1 else 0.0  # pandas' .std(), as the paper's code
        self.age_std = std if std > 0 else 1.0
        return self

    def state(self) -> dict:
        return asdict(self)

    def encode(self, frame: pd.DataFrame) -> np.ndarray:
        """``float32`` array of shape ``(rows, width)``."""
        age = frame["age"].to_numpy(dtype=float)
        age = np.where(np.isnan(age), self.age_mean, age)
        sex = frame["sex"].to_numpy().astype(str)
        view = frame["view"].to_numpy().astype(str)
        if self.scheme == "cnn":
            sex_value = np.where(sex == "F", 1.0, np.where(sex == "M", 0.0, 0.5))
            columns = [np.clip(age, 0, 100) / 100.0, sex_value, view == "AP"]
        else:
            age_z = (age - self.age_mean) / self.age_std
            if self.scheme == "code":
                columns = [age_z, sex == "M", view == "AP"]
            else:
                columns = [age_z, sex == "M", sex == "F", view == "PA", view == "AP"]
        return np.stack([np.asarray(c, dtype=np.float32) for c in columns], axis=1)


def metadata_frame(rows: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """The ``age``/``sex``/``view`` frame :meth:`MetadataEncoder.encode` takes, from ``[{'age', 'sex', 'view'}, ...]``.

    A missing or ``None`` age is NaN (imputed by the encoder), a missing or empty sex or view ``''`` (unknown).
    """
    rows = list(rows)
    return pd.DataFrame(
        {
            "age": [math.nan if row.get("age") is None else float(row["age"]) for row in rows],
            "sex": [row.get("sex") or "" for row in rows],
            "view": [row.get("view") or "" for row in rows],
        }
    )


def positive_class_weights(
    positives: np.ndarray, num_images: int, scheme: PosWeightScheme, label_names: tuple[str, ...] = ()
) -> np.ndarray | None:
    """Per-label ``pos_weight`` from the train split's positive counts; ``None`` for ``none``.

    A label with no positive image would get an infinite weight: it is counted as one positive
    and named in a warning instead.
    """
    if scheme == "none":
        return None
    if scheme not in ("linear", "log", "beit_log"):
        raise ValueError(f"unknown pos_weight scheme {scheme!r}; choose none, linear, log or beit_log")
    positives = np.asarray(positives, dtype=np.float64)
    if (positives == 0).any():
        names = [label_names[i] if label_names else str(i) for i in np.flatnonzero(positives == 0)]
        warnings.warn(f"no positive training image for {names}: their pos_weight uses one positive", stacklevel=2)
    p = np.maximum(positives, 1.0)
    n = float(num_images)
    if scheme == "linear":
        weights = (n - p) / p
    elif scheme == "log":
        weights = np.minimum(np.log1p((n - p) / p), LOG_WEIGHT_CAP)
    else:
        weights = 1.0 / np.log(1.02 + p / n)
    if not np.isfinite(weights).all():
        raise ValueError(f"pos_weight {scheme!r} is not finite for counts {positives.tolist()} of {num_images} images")
    return weights.astype(np.float32)

