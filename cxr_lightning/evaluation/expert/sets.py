"""The radiologists' relabellings of part of ChestX-ray14, as shipped in ``data/resources/expert_labels``.

Two public releases by Google researchers (see that folder's README for the citations, NIH's
attribution and the terms: research and educational use, cite the paper):

* **four findings** (Majkowska et al., Radiology 2020): ``Pneumothorax``, ``Nodule or mass``,
  ``Airspace opacity``, ``Fracture``, adjudicated by three radiologists, on 1,962 images of the
  official test list (``part="test"``) and 2,414 of the train_val list (``part="validation"``);
  every reader's own label is ``YES``, ``NO`` or ``HEDGE`` (uncertain).
* **all findings** (Nabulsi et al., Scientific Reports 2021): the 810 PA images of the
  four-findings test set, ``Abnormal``, the 14 NIH findings and ``Other``, the majority of three
  of five radiologists; the five readers' own labels.

A set is an :class:`ExpertLabelSet`: the adjudicated labels as 0/1 and the readers' reads as
``YES``/``NO``/``HEDGE`` text (how a hedge counts is decided where readers are scored,
:mod:`cxr_lightning.evaluation.expert.readers`). A file that does not have the README's layout
(a damaged install, or a user's ``folder``) is an :class:`ExpertLabelsError` naming the file, the
line, the column and the value.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Literal

import pandas as pd

__all__ = [
    "ALL_FINDINGS_COLUMNS",
    "FOUR_FINDINGS",
    "HEDGE",
    "NO",
    "YES",
    "ExpertLabelSet",
    "ExpertLabelsError",
    "all_findings",
    "four_findings",
    "packaged_expert_folder",
]

YES, NO, HEDGE = "YES", "NO", "HEDGE"

FOUR_FINDINGS = ("Pneumothorax", "Nodule or mass", "Airspace opacity", "Fracture")
#: The all-findings columns, in the file's order (``Pleural Thickening`` is NIH's ``Pleural_Thickening``).
ALL_FINDINGS_COLUMNS = (
    "Abnormal", "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia", "Pneumothorax",
    "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural Thickening", "Hernia", "Other",
)  # fmt: skip

MAJKOWSKA_2020 = (
    "A. Majkowska, S. Mittal, D. F. Steiner, et al. Chest Radiograph Interpretation Using Deep Learning Models: Assessment "
    "Using Radiologist Adjudicated Reference Standards and Population-Adjusted Evaluation. Radiology, 2020."
)
NABULSI_2021 = (
    "Z. Nabulsi, A. Sellergren, S. Jamshy, et al. Deep Learning for Distinguishing Normal versus Abnormal Chest Radiographs "
    "and Generalization to Two Unseen Diseases Tuberculosis and COVID-19. Scientific Reports, 2021."
)

#: The four-findings readers' file names ``Nodule or mass`` this way.
_READERS_NODULE_COLUMN = "Nodule/mass"
_FOUR_FINDINGS_SET_ID = {"test": "test", "validation": "val"}
_FOUR_FINDINGS_LABEL_FILE = {"test": "test_labels.csv.gz", "validation": "validation_labels.csv.gz"}


class ExpertLabelsError(ValueError):
    """An expert-labels file that does not have the published layout; the message names file, line, column and value."""


@dataclass(frozen=True)
class ExpertLabelSet:
    """One relabelled image set.

    ``labels``: one row per image, ``image``, ``patient_id`` and one 0/1 column per finding (the
    adjudicated or majority label). ``readers``: one row per (image, reader), ``image``, ``reader``
    and per finding ``YES``/``NO``/``HEDGE``, as published (a reader can have two rows for an
    image: see :mod:`~cxr_lightning.evaluation.expert.readers`).
    """

    name: str
    citation: str
    findings: tuple[str, ...]
    labels: pd.DataFrame
    readers: pd.DataFrame


def packaged_expert_folder() -> Path:
    """``cxr_lightning/data/resources/expert_labels`` of the installed package."""
    return Path(str(resources.files("cxr_lightning.data") / "resources" / "expert_labels"))


def _read(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise ExpertLabelsError(f"expert-labels file {path} is missing; reinstall cxr-lightning (or pass the folder that has it)")
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, EOFError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise ExpertLabelsError(f"cannot read expert-labels file {path}: {err}") from err


def _require(frame: pd.DataFrame, columns, path: Path) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ExpertLabelsError(f"{path}: missing column(s) {missing}; found {list(frame.columns)}")


def _check_values(frame: pd.DataFrame, columns, allowed: tuple[str, ...], path: Path) -> None:
    for column in columns:
        bad = ~frame[column].isin(allowed)
        if bad.any():
            row = int(bad.to_numpy().nonzero()[0][0])
            raise ExpertLabelsError(
                f"{path}, line {row + 2}, column {column!r}: {frame[column].iloc[row]!r} is not one of {list(allowed)}"
            )


def _unique_images(frame: pd.DataFrame, path: Path) -> None:
    duplicated = frame["image"].duplicated()
    if duplicated.any():
        row = int(duplicated.to_numpy().nonzero()[0][0])
        raise ExpertLabelsError(f"{path}, line {row + 2}: image {frame['image'].iloc[row]!r} is listed twice")


def _check_read_images(reads: pd.DataFrame, labels: pd.DataFrame, readers_path: Path, labels_path: Path) -> None:
    """Every read is of a labelled image (the readers' file and the labels' file are one release)."""
    unlabelled = ~reads["image"].isin(labels["image"])
    if unlabelled.any():
        raise ExpertLabelsError(f"{readers_path}: {int(unlabelled.sum())} read(s) of images not in {labels_path.name}, "
                                f"e.g. {reads['image'][unlabelled].iloc[0]!r}")  # fmt: skip


def _yes_no_to_int(frame: pd.DataFrame, columns) -> pd.DataFrame:
    return frame.assign(**{c: (frame[c] == YES).astype("int8") for c in columns})


def four_findings(part: Literal["test", "validation"] = "test", folder: str | Path | None = None) -> ExpertLabelSet:
    """Majkowska et al.'s adjudicated labels of ``part`` and its readers' reads (``folder``: the packaged copy)."""
    if part not in _FOUR_FINDINGS_SET_ID:
        raise ValueError(f"part must be one of {list(_FOUR_FINDINGS_SET_ID)}; got {part!r}")
    base = (Path(folder) if folder is not None else packaged_expert_folder()) / "four_findings"
    labels_path, readers_path = base / _FOUR_FINDINGS_LABEL_FILE[part], base / "individual_readers.csv.gz"

    raw = _read(labels_path)
    _require(raw, ["Image Index", "Patient ID", *FOUR_FINDINGS], labels_path)
    _check_values(raw, FOUR_FINDINGS, (YES, NO), labels_path)
    labels = raw.rename(columns={"Image Index": "image", "Patient ID": "patient_id"})[["image", "patient_id", *FOUR_FINDINGS]]
    _unique_images(labels, labels_path)

    reads = _read(readers_path)
    reader_findings = [_READERS_NODULE_COLUMN if f == "Nodule or mass" else f for f in FOUR_FINDINGS]
    _require(reads, ["Image ID", "Reader ID", "Set ID", *reader_findings], readers_path)
    reads = reads[reads["Set ID"] == _FOUR_FINDINGS_SET_ID[part]]
    _check_values(reads, reader_findings, (YES, NO, HEDGE), readers_path)
    reads = reads.rename(columns={"Image ID": "image", "Reader ID": "reader", _READERS_NODULE_COLUMN: "Nodule or mass"})
    _check_read_images(reads, labels, readers_path, labels_path)
    return ExpertLabelSet(
        name=f"four_findings_{part}",
        citation=MAJKOWSKA_2020,
        findings=FOUR_FINDINGS,
        labels=_yes_no_to_int(labels, FOUR_FINDINGS).reset_index(drop=True),
        readers=reads[["image", "reader", *FOUR_FINDINGS]].reset_index(drop=True),
    )


def all_findings(folder: str | Path | None = None) -> ExpertLabelSet:
    """Nabulsi et al.'s majority labels of the 810 PA test images and the five readers' reads (``folder``: the packaged copy)."""
    base = (Path(folder) if folder is not None else packaged_expert_folder()) / "all_findings"
    labels_path, readers_path = base / "test_labels.csv.gz", base / "test_individual_readers.csv.gz"

    raw = _read(labels_path)
    _require(raw, ["Image ID", "Patient ID", *ALL_FINDINGS_COLUMNS], labels_path)
    _check_values(raw, ALL_FINDINGS_COLUMNS, (YES, NO), labels_path)
    labels = raw.rename(columns={"Image ID": "image", "Patient ID": "patient_id"})[["image", "patient_id", *ALL_FINDINGS_COLUMNS]]
    _unique_images(labels, labels_path)

    reads = _read(readers_path)
    _require(reads, ["Image ID", "Reader ID", *ALL_FINDINGS_COLUMNS], readers_path)
    # The readers' file writes Abnormal as 1/0 (the findings YES/NO): one spelling from here on.
    _check_values(reads, ["Abnormal"], ("1", "0"), readers_path)
    reads = reads.assign(Abnormal=reads["Abnormal"].map({"1": YES, "0": NO}))
    _check_values(reads, ALL_FINDINGS_COLUMNS[1:], (YES, NO), readers_path)
    reads = reads.rename(columns={"Image ID": "image", "Reader ID": "reader"})
    _check_read_images(reads, labels, readers_path, labels_path)
    return ExpertLabelSet(
        name="all_findings_test",
        citation=NABULSI_2021,
        findings=ALL_FINDINGS_COLUMNS,
        labels=_yes_no_to_int(labels, ALL_FINDINGS_COLUMNS).reset_index(drop=True),
        readers=reads[["image", "reader", *ALL_FINDINGS_COLUMNS]].reset_index(drop=True),
    )
