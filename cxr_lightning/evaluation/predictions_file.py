"""The predictions file of a run (``test_predictions.csv``, ``val_predictions.csv``): its writer and its reader.

One row per image: ``image`` (the NIH file name), then ``prob_<Label>`` for every label (the
sigmoid probability), then ``label_<Label>`` for every label (the 0/1 target). ``test`` and the
threshold tuner write it; the report, the statistics and calibration read it back, so the column
names, the number format and the checks on reading are defined here once.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from cxr_lightning.output_files import atomic_outputs

__all__ = [
    "DEMOGRAPHIC_COLUMNS",
    "IMAGE_COLUMN",
    "PredictionsFile",
    "PredictionsFileError",
    "checked_predictions",
    "image_file_names",
    "label_column",
    "patient_ids_from_images",
    "probability_column",
    "read_predictions",
    "read_predictions_table",
    "write_predictions",
]

IMAGE_COLUMN = "image"
#: Optional columns after the image: what subgroup tables group by.
DEMOGRAPHIC_COLUMNS = ("age", "sex", "view")
_PROBABILITY_PREFIX = "prob_"
_LABEL_PREFIX = "label_"
#: 9 significant digits round-trip float32 exactly: a rounded value could cross a tuned threshold,
#: and the report, recomputing from this file, would disagree with ``metrics.json``.
_FLOAT_FORMAT = "%.9g"

_IMAGE_NAME = re.compile(r"^(\d{8})_\d+\.\w+$")


def probability_column(label: str) -> str:
    """The column of ``label``'s predicted probability (``prob_Edema``)."""
    return f"{_PROBABILITY_PREFIX}{label}"


def label_column(label: str) -> str:
    """The column of ``label``'s 0/1 target (``label_Edema``)."""
    return f"{_LABEL_PREFIX}{label}"


def _numpy(x: Any) -> np.ndarray:
    return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)


def write_predictions(
    path: str | os.PathLike, image_names: Sequence[str], probs: Any, targets: Any, label_names: Sequence[str],
    demographics: pd.DataFrame | None = None,
) -> None:  # fmt: skip
    """Write the predictions file: ``image_names`` (N,), ``probs`` and 0/1 ``targets`` (N, L), numpy or torch.

    ``demographics``: ``age``, ``sex``, ``view`` of each image (N rows, in order), written after the
    image column, so subgroup tables use the data the run tested (its own metadata, synthetic too).
    """
    probabilities = pd.DataFrame(_numpy(probs), columns=[probability_column(n) for n in label_names])
    labels = pd.DataFrame(_numpy(targets).astype(np.int8), columns=[label_column(n) for n in label_names])
    parts = [pd.DataFrame({IMAGE_COLUMN: image_names})]
    if demographics is not None:
        if len(demographics) != len(image_names):
            raise ValueError(f"demographics has {len(demographics)} rows for {len(image_names)} images")
        parts.append(demographics[[c for c in DEMOGRAPHIC_COLUMNS if c in demographics.columns]].reset_index(drop=True))
    frame = pd.concat([*parts, probabilities, labels], axis=1)
    with atomic_outputs(path) as (staged,):  # a crash or a full disk never leaves half a file
        frame.to_csv(staged, index=False, float_format=_FLOAT_FORMAT)


def image_file_names(images: Sequence[str]) -> np.ndarray:
    """The file name of each image path (``os.path.basename``), as a string array."""
    names = [str(name) for name in images]
    separators = [sep for sep in (os.sep, os.altsep) if sep]
    joined = "".join(names)  # one C-speed scan: predictions files usually hold bare file names
    if any(sep in joined for sep in separators):
        names = [os.path.basename(name) for name in names]
    return np.asarray(names, dtype=str)


#: Many NIH file names, one per line; checked in one regular-expression pass.
_IMAGE_NAME_LINES = re.compile(r"(?:\d{8}_\d+\.\w+\n)*")


def _first_non_nih_name(files: np.ndarray) -> int | None:
    """Index of the first file name that is not an NIH image name (``None``: all are)."""
    if _IMAGE_NAME_LINES.fullmatch("".join(f"{name}\n" for name in files)) is not None:
        return None
    return next(i for i, name in enumerate(files) if _IMAGE_NAME.match(name) is None or "\n" in name)


def patient_ids_from_images(names: Sequence[str]) -> np.ndarray:
    """Patient ids (``"00000013"``) of NIH image names (``"00000013_005.png"``, directories allowed).

    The NIH file name is ``<8-digit patient id>_<3-digit follow-up>.png``. Returns a string array;
    raises ``ValueError`` naming the first name that does not have this form.
    """
    files = image_file_names(names)
    first = _first_non_nih_name(files)
    if first is not None:
        raise ValueError(f"not an NIH image name (expected like 00000013_005.png): {str(list(names)[first])!r}")
    return files.astype("U8")  # the first 8 characters: the patient id


class PredictionsFile(NamedTuple):
    """A run's ``test_predictions.csv``: ``probs``/``targets`` are ``(N, L)``; ``patients`` ``(N,)``."""

    images: np.ndarray
    probs: np.ndarray
    targets: np.ndarray
    label_names: tuple[str, ...]
    patients: np.ndarray


class PredictionsFileError(ValueError):
    """A predictions CSV that cannot be used: the message names the file, the CSV line, the column and the value."""


def _checked_block(frame: pd.DataFrame, columns: list[str], path, what: str, valid) -> np.ndarray:
    """``frame[columns]`` as float64; the first non-numeric, NaN or invalid cell is a :class:`PredictionsFileError`."""
    block = frame[columns].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isfinite(block)
    bad[~bad] = ~valid(block[~bad])
    if bad.any():
        row, col = (int(i) for i in np.argwhere(bad)[0])
        value = frame[columns[col]].iloc[row]
        shown = repr(value) if isinstance(value, str) else "an empty cell or NaN" if pd.isna(value) else str(value)
        raise PredictionsFileError(
            f"{path}, line {row + 2} (data row {row + 1}), column {columns[col]}: {shown} "
            f"is not {what} ({int(bad.any(axis=1).sum())} such row(s))"
        )
    return block


def read_predictions(path: str | os.PathLike, label_names: Sequence[str] | None = None) -> PredictionsFile:
    """Read ``runs/<run>/test_predictions.csv`` (columns ``image``, ``prob_<Label>``…, ``label_<Label>``…).

    ``label_names`` selects and orders labels (default: every ``prob_`` column, in file order).
    Patient ids come from the image names (:func:`patient_ids_from_images`). A file that is
    empty, truncated or holds a missing, non-numeric or out-of-range value raises
    :class:`PredictionsFileError` naming the line (line 1 is the header).
    """
    return checked_predictions(read_predictions_table(path), path, label_names)


def read_predictions_table(path: str | os.PathLike) -> pd.DataFrame:
    """The predictions CSV as read, before its checks (one-line errors for an empty or unreadable file)."""
    try:
        return pd.read_csv(path)
    except pd.errors.EmptyDataError as err:
        raise PredictionsFileError(f"{path} is empty (no header)") from err
    except (OSError, UnicodeDecodeError, pd.errors.ParserError) as err:
        raise PredictionsFileError(f"cannot read {path}: {err}") from err


def checked_predictions(frame: pd.DataFrame, source: Any, label_names: Sequence[str] | None = None) -> PredictionsFile:
    """The checks of :func:`read_predictions` on a table already read; errors name ``source`` and its CSV line."""
    path = source
    if label_names is None:
        label_names = [c[len(_PROBABILITY_PREFIX) :] for c in frame.columns if c.startswith(_PROBABILITY_PREFIX)]
    label_names = tuple(label_names)
    missing = [c for name in label_names for c in (probability_column(name), label_column(name)) if c not in frame.columns]
    if missing or IMAGE_COLUMN not in frame.columns or not label_names:
        absent = ([IMAGE_COLUMN] if IMAGE_COLUMN not in frame.columns else []) + (missing or [probability_column("<label>")])
        raise PredictionsFileError(f"{path}: missing columns {absent}")
    if frame.empty:
        raise PredictionsFileError(f"{path} has a header but no rows")
    images = frame[IMAGE_COLUMN].astype(str).to_numpy()
    probs = _checked_block(frame, [probability_column(n) for n in label_names], path, "a probability in [0, 1]", lambda a: (a >= 0) & (a <= 1))
    targets = _checked_block(frame, [label_column(n) for n in label_names], path, "a 0/1 label", lambda a: (a == 0) | (a == 1))
    try:
        patients = patient_ids_from_images(images)
    except ValueError as err:
        row = _first_non_nih_name(image_file_names(images))
        raise PredictionsFileError(f"{path}, line {row + 2} (data row {row + 1}), column {IMAGE_COLUMN}: {err}") from err
    return PredictionsFile(images, probs, targets.astype(np.int64), label_names, patients)
