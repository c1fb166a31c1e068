"""The label set of NIH ChestX-ray14, in one fixed order.

The order is the paper's (and its code's): alphabetical, with ``No Finding`` included as the
11th of 15 columns. Every tensor, CSV and checkpoint in this project uses this order; the
release spells one finding ``Pleural_Thickening`` and so do we.
"""

from __future__ import annotations

NO_FINDING = "No Finding"

LABELS: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Effusion",
    "Emphysema",
    "Fibrosis",
    "Hernia",
    "Infiltration",
    "Mass",
    NO_FINDING,
    "Nodule",
    "Pleural_Thickening",
    "Pneumonia",
    "Pneumothorax",
)

#: The 14 findings, without ``No Finding`` (the label set most of the literature reports).
FINDINGS: tuple[str, ...] = tuple(label for label in LABELS if label != NO_FINDING)


def label_names(include_no_finding: bool = True) -> tuple[str, ...]:
    """The 15 columns (the paper's) or the 14 findings only."""
    return LABELS if include_no_finding else FINDINGS
