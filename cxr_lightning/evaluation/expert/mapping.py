"""From a run's NIH-label columns to each radiologists' finding: the model's score and NIH's own label.

Each expert finding is scored as the **largest** probability of the NIH labels it covers, and
NIH's label of it is the largest of those labels (positive when any of them is), so that both
references are scored on the same images with the same score:

* ``Pneumothorax`` <- ``Pneumothorax``.
* ``Nodule or mass`` <- max(``Nodule``, ``Mass``): the relabelling does not separate the two
  (a nodule is a mass under 3 cm); this is the scoring the issue names.
* ``Airspace opacity`` <- max(``Consolidation``, ``Infiltration``, ``Pneumonia``, ``Edema``):
  our choice. The shipped README does not define the finding, so we use the radiological
  meaning of an airspace opacity, alveoli filled with fluid, pus, blood or cells: consolidation
  and pneumonia (pus), edema (fluid) and NIH's "infiltration" (the report word for an ill-defined
  parenchymal opacity). ``Atelectasis`` is left out: its opacity comes from volume loss, not
  from filled airspaces. Change :data:`AIRSPACE_OPACITY_NIH_LABELS` to score another definition.
* ``Fracture``: NIH has no such label; not scored (the table says so).
* All findings (Nabulsi et al.): each of the 14 findings by name (``Pleural Thickening`` is
  ``Pleural_Thickening``); ``Abnormal`` <- 1 - P(``No Finding``) and NIH label
  1 - ``No Finding``; a run without a ``No Finding`` column is scored by the largest of the 14
  findings' probabilities (NIH's ``No Finding`` is exactly "none of the 14", so its label is then
  the largest of the 14 labels). ``Other`` (findings outside NIH's 14) is not scored.

A run that lacks a column a mapping needs (``prob_Mass``, say) is not scored for that finding,
with the reason; a part of a mapping is never dropped silently.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from cxr_lightning.data.labels import FINDINGS, NO_FINDING
from cxr_lightning.evaluation.predictions_file import label_column, probability_column

__all__ = ["AIRSPACE_OPACITY_NIH_LABELS", "NIH_LABELS_OF", "MappedFinding", "map_finding"]

AIRSPACE_OPACITY_NIH_LABELS = ("Consolidation", "Infiltration", "Pneumonia", "Edema")
ABNORMAL = "Abnormal"

#: Expert finding -> the NIH labels whose maximum scores it; ``()``: NIH has no counterpart.
NIH_LABELS_OF: dict[str, tuple[str, ...]] = {
    **{finding.replace("_", " "): (finding,) for finding in FINDINGS},  # Pneumothorax and the 14 by name
    "Nodule or mass": ("Nodule", "Mass"),
    "Airspace opacity": AIRSPACE_OPACITY_NIH_LABELS,
    "Fracture": (),
    "Other": (),
}


@dataclass(frozen=True)
class MappedFinding:
    """One expert finding on a run: ``probs``/``nih`` per image (``None`` with ``reason`` when it cannot be scored)."""

    finding: str
    source: str  #: how the score is made, for the tables: "max(Nodule, Mass)", "1 - No Finding"
    probs: np.ndarray | None
    nih: np.ndarray | None
    reason: str = ""


def _maximum(frame: pd.DataFrame, finding: str, labels: tuple[str, ...], source: str) -> MappedFinding:
    absent = [probability_column(n) for n in labels if probability_column(n) not in frame.columns]
    if absent:
        return MappedFinding(finding, source, None, None, f"the run has no {', '.join(absent)}")
    probs = frame[[probability_column(n) for n in labels]].to_numpy(dtype=np.float64).max(axis=1)
    nih = frame[[label_column(n) for n in labels]].to_numpy(dtype=np.int64).max(axis=1)
    return MappedFinding(finding, source, probs, nih)


def map_finding(frame: pd.DataFrame, finding: str) -> MappedFinding:
    """The run's score and NIH's label of expert ``finding`` for each row of the predictions ``frame``."""
    if finding == ABNORMAL:
        if probability_column(NO_FINDING) in frame.columns:
            probs = 1.0 - frame[probability_column(NO_FINDING)].to_numpy(dtype=np.float64)
            nih = 1 - frame[label_column(NO_FINDING)].to_numpy(dtype=np.int64)
            return MappedFinding(finding, f"1 - {NO_FINDING}", probs, nih)
        return _maximum(frame, finding, FINDINGS, "max of the 14 findings (the run has no No Finding)")
    if finding not in NIH_LABELS_OF:
        raise KeyError(f"no NIH mapping for expert finding {finding!r}; known: {sorted(NIH_LABELS_OF)}")
    labels = NIH_LABELS_OF[finding]
    if not labels:
        return MappedFinding(finding, "none", None, None, "NIH has no such label")
    source = labels[0] if len(labels) == 1 else f"max({', '.join(labels)})"
    return _maximum(frame, finding, labels, source)
