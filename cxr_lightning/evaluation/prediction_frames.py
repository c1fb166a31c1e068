"""A run's predictions as one DataFrame, the input of the expert-label and subgroup evaluations.

Columns: ``image`` (the NIH file name), ``patient`` (the patient id, from the image name unless
given), ``prob_<Label>`` and ``label_<Label>`` per label (the predictions-file layout of
:mod:`cxr_lightning.evaluation.predictions_file`), and, when the file carries them, ``age``,
``sex``, ``view``. A :class:`~cxr_lightning.evaluation.predictions_file.PredictionsFile` (what the
report reads) and a DataFrame in that layout are both accepted.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import pandas as pd

from cxr_lightning.evaluation.predictions_file import (
    DEMOGRAPHIC_COLUMNS,
    IMAGE_COLUMN,
    PredictionsFile,
    PredictionsFileError,
    checked_predictions,
    image_file_names,
    label_column,
    probability_column,
    read_predictions_table,
)

__all__ = ["DEMOGRAPHIC_COLUMNS", "PATIENT_COLUMN", "as_predictions_frame", "frame_label_names", "read_predictions_frame"]

PATIENT_COLUMN = "patient"
#: Columns a predictions file may carry beside the predictions (used by the subgroup tables).

_PROBABILITY_PREFIX = probability_column("")


def frame_label_names(frame: pd.DataFrame) -> tuple[str, ...]:
    """The labels of a predictions frame: every ``prob_<Label>`` column, in column order."""
    return tuple(c[len(_PROBABILITY_PREFIX) :] for c in frame.columns if c.startswith(_PROBABILITY_PREFIX))


def _from_file(predictions: PredictionsFile) -> pd.DataFrame:
    columns = {IMAGE_COLUMN: predictions.images, PATIENT_COLUMN: predictions.patients}
    for j, name in enumerate(predictions.label_names):
        columns[probability_column(name)] = predictions.probs[:, j]
    for j, name in enumerate(predictions.label_names):
        columns[label_column(name)] = predictions.targets[:, j]
    return pd.DataFrame(columns)


def as_predictions_frame(predictions: PredictionsFile | pd.DataFrame, source: str = "the predictions") -> pd.DataFrame:
    """``predictions`` as a checked frame with a ``patient`` column (one row per image, basename ``image``).

    A DataFrame gets the checks of a predictions file (``checked_predictions``: the columns, every
    probability in [0, 1], every label 0/1, NIH image names) and keeps its ``patient``, ``age``,
    ``sex``, ``view`` columns if it has them (patient ids otherwise come from the image names).
    Image names are reduced to their file name (the expert lists name files, not paths). A bad
    value, a missing column or an image listed twice is a ``PredictionsFileError`` naming ``source``.
    """
    if isinstance(predictions, PredictionsFile):
        frame = _from_file(predictions)
    else:
        frame = _from_file(checked_predictions(predictions, source))
        for column in (PATIENT_COLUMN, *DEMOGRAPHIC_COLUMNS):
            if column in predictions.columns:
                frame[column] = predictions[column].to_numpy()
    frame[IMAGE_COLUMN] = image_file_names(frame[IMAGE_COLUMN].to_numpy())
    frame[PATIENT_COLUMN] = frame[PATIENT_COLUMN].astype(str)
    duplicated = frame[IMAGE_COLUMN].duplicated()
    if duplicated.any():
        name = frame[IMAGE_COLUMN][duplicated].iloc[0]
        raise PredictionsFileError(
            f"{source}: image {name!r} has {int((frame[IMAGE_COLUMN] == name).sum())} rows; keep one row per image"
        )
    return frame.reset_index(drop=True)


def read_predictions_frame(path: str | os.PathLike, label_names: Sequence[str] | None = None) -> pd.DataFrame:
    """Read a predictions CSV (checked by ``read_predictions``) with its ``age``/``sex``/``view`` columns if it has them."""
    table = read_predictions_table(path)  # read once: the checks and the demographic columns come from it
    frame = _from_file(checked_predictions(table, path, label_names))
    for column in (c for c in DEMOGRAPHIC_COLUMNS if c in table.columns):
        frame[column] = table[column].to_numpy()
    return as_predictions_frame(frame, source=str(path))
