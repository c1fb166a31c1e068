"""Patient-grouped train/validation/test splits of NIH ChestX-ray14.

Three kinds, each a pure function of the metadata, the official lists and a seed:

* ``official``: test = the official ``test_list.txt``; the patients of ``train_val_list.txt``
  are shuffled with ``numpy.random.RandomState(seed)`` and the first ``ceil(val_fraction * P)``
  become validation. This is exactly ``sklearn.model_selection.train_test_split(patients,
  test_size=val_fraction, random_state=seed)`` on the patients in order of first appearance in
  the CSV, which is what the paper's code did.
* ``paper``: ``official`` with ``val_fraction=PAPER_VAL_FRACTION`` (0.15), ``seed=PAPER_SEED`` (100): 73,633 / 12,891 / 25,596 images.
* ``patient``: all patients shuffled and cut into train/val/test by ``fractions``; with
  ``stratify=True`` each patient is put in the stratum of the rarest finding any of its images
  has, and every stratum is cut by the same fractions, so rare findings land in every part.

Images keep the CSV order inside each part. No patient is ever in two parts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from cxr_lightning.data.labels import FINDINGS
from cxr_lightning.data.metadata import MetadataError, NIHMetadata, read_image_list

SplitName = Literal["paper", "official", "patient"]
PARTS = ("train", "val", "test")
PAPER_VAL_FRACTION = 0.15
PAPER_SEED = 100
PATIENT_FRACTIONS = (0.7, 0.1, 0.2)  #: default train/val/test patient fractions of the ``patient`` split


@dataclass(frozen=True)
class Split:
    """Row positions into ``NIHMetadata.frame`` for each part, in CSV order."""

    name: str
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray

    def part(self, part: str) -> np.ndarray:
        if part not in PARTS:
            raise ValueError(f"unknown split part {part!r}; expected one of {PARTS}")
        return getattr(self, part)

    def images(self, meta: NIHMetadata, part: str) -> list[str]:
        return meta.frame["image"].to_numpy()[self.part(part)].tolist()

    def check(self, meta: NIHMetadata) -> None:
        """Raise if a part is empty or a patient is in two parts."""
        patients = meta.frame["patient_id"].to_numpy()
        for part in PARTS:
            if len(self.part(part)) == 0:
                raise MetadataError(
                    f"split {self.name!r}: the {part} part came out empty "
                    f"({len(meta)} images, {len(np.unique(patients))} patients); use more data or other fractions"
                )
        sets = {part: set(patients[self.part(part)].tolist()) for part in PARTS}
        for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
            shared = sets[a] & sets[b]
            if shared:
                raise MetadataError(f"split {self.name!r}: {len(shared)} patient(s) in both {a} and {b}, e.g. {sorted(shared)[:5]}")


def _shuffle_split(items: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(train, test)`` as ``sklearn.model_selection.train_test_split(items, test_size=f, random_state=seed)``."""
    n_test = math.ceil(test_fraction * len(items))
    permutation = np.random.RandomState(seed).permutation(len(items))
    return items[permutation[n_test:]], items[permutation[:n_test]]


def _rows_of(meta: NIHMetadata, patients: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """Rows among ``candidates`` whose patient is in ``patients``, in CSV order."""
    candidates = np.sort(candidates)
    keep = np.isin(meta.frame["patient_id"].to_numpy()[candidates], patients)
    return candidates[keep]


def official_split(
    meta: NIHMetadata, train_val: list[str], test: list[str], val_fraction: float = PAPER_VAL_FRACTION, seed: int = PAPER_SEED, name: str = "official"
) -> Split:
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    train_val_rows = np.sort(meta.positions(train_val, "train_val_list"))
    test_rows = np.sort(meta.positions(test, "test_list"))
    if np.intersect1d(train_val_rows, test_rows).size:
        both = meta.frame["image"].to_numpy()[np.intersect1d(train_val_rows, test_rows)[:5]].tolist()
        raise MetadataError(f"images in both train_val_list and test_list, e.g. {both}")
    patient_of = meta.frame["patient_id"].to_numpy()
    shared = np.intersect1d(patient_of[train_val_rows], patient_of[test_rows])
    if shared.size:
        raise MetadataError(
            f"{shared.size} patient(s) have images in both train_val_list and test_list, e.g. {shared[:5].tolist()}; "
            "a patient-grouped split needs each patient in one list"
        )
    patients = pd.unique(patient_of[train_val_rows])  # order of first appearance, as the paper's code
    train_patients, val_patients = _shuffle_split(patients, val_fraction, seed)
    return Split(
        name=name,
        train=_rows_of(meta, train_patients, train_val_rows),
        val=_rows_of(meta, val_patients, train_val_rows),
        test=test_rows,
    )


def paper_split(meta: NIHMetadata, train_val: list[str], test: list[str]) -> Split:
    return official_split(meta, train_val, test, PAPER_VAL_FRACTION, PAPER_SEED, name="paper")


def _cut(items: np.ndarray, fractions: tuple[float, float, float]) -> list[np.ndarray]:
    """Cut shuffled ``items`` into three parts by largest-remainder rounding of the fractions."""
    exact = np.asarray(fractions) * len(items)
    sizes = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - sizes), kind="stable")[: len(items) - sizes.sum()]:
        sizes[i] += 1
    bounds = np.cumsum(sizes)[:-1]
    return np.split(items, bounds)


def rarest_finding_strata(meta: NIHMetadata) -> pd.Series:
    """Per patient, the index in FINDINGS of the rarest finding among its images (len(FINDINGS) if none)."""
    frame = meta.frame
    counts = frame[list(FINDINGS)].sum().to_numpy()
    rarity_rank = np.argsort(np.argsort(counts, kind="stable"), kind="stable")  # 0 = rarest
    positives = frame[list(FINDINGS)].to_numpy(dtype=bool)
    rank = np.where(positives, rarity_rank[None, :], len(FINDINGS)).min(axis=1)
    return pd.Series(rank, index=frame.index).groupby(frame["patient_id"]).min()


def patient_split(
    meta: NIHMetadata, fractions: tuple[float, float, float] = PATIENT_FRACTIONS, seed: int = 0, stratify: bool = False
) -> Split:
    fractions = tuple(float(f) for f in fractions)
    if len(fractions) != 3 or min(fractions) < 0 or not math.isclose(sum(fractions), 1.0, abs_tol=1e-6):
        raise ValueError(f"fractions must be three non-negative numbers that sum to 1, got {fractions}")
    rng = np.random.RandomState(seed)
    if stratify:
        strata = rarest_finding_strata(meta)
        groups = [strata.index.to_numpy()[strata.to_numpy() == s] for s in np.unique(strata.to_numpy())]
    else:
        groups = [pd.unique(meta.frame["patient_id"].to_numpy())]
    parts: list[list[np.ndarray]] = [[], [], []]
    for group in groups:
        for i, cut in enumerate(_cut(group[rng.permutation(len(group))], fractions)):
            parts[i].append(cut)
    all_rows = np.arange(len(meta))
    rows = [_rows_of(meta, np.concatenate(p), all_rows) for p in parts]
    return Split(name="patient", train=rows[0], val=rows[1], test=rows[2])


def make_split(
    name: SplitName,
    meta: NIHMetadata,
    train_val_list: str | Path | None = None,
    test_list: str | Path | None = None,
    val_fraction: float = PAPER_VAL_FRACTION,
    seed: int = PAPER_SEED,
    fractions: tuple[float, float, float] = PATIENT_FRACTIONS,
    stratify: bool = False,
) -> Split:
    """Build and check a split by name; the lists are only read for ``paper`` and ``official``."""
    if name in ("paper", "official"):
        if train_val_list is None or test_list is None:
            raise ValueError(f"split {name!r} needs train_val_list and test_list")
        train_val, test = read_image_list(train_val_list), read_image_list(test_list)
        split = paper_split(meta, train_val, test) if name == "paper" else official_split(meta, train_val, test, val_fraction, seed)
    elif name == "patient":
        split = patient_split(meta, fractions, seed, stratify)
    else:
        raise ValueError(f"unknown split {name!r}; expected paper, official or patient")
    split.check(meta)
    return split
