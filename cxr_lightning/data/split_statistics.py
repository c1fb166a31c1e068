"""Class prevalence per split part: the paper's Appendix D (Table 4), plus image and patient counts."""

from __future__ import annotations

import pandas as pd

from cxr_lightning.data.labels import LABELS
from cxr_lightning.data.metadata import NIHMetadata
from cxr_lightning.data.splits import PARTS, Split

PART_TITLES = {"train": "Training", "val": "Validation", "test": "Testing"}


def prevalence_table(meta: NIHMetadata, split: Split, labels: tuple[str, ...] = LABELS) -> pd.DataFrame:
    """Percent of positive images per label (rows) and part (columns), then image/patient counts.

    The last three rows are ``images``, ``patients`` and ``% of images``; values are not rounded.
    """
    total = sum(len(split.part(p)) for p in PARTS)
    columns = {}
    for part in PARTS:
        rows = meta.frame.iloc[split.part(part)]
        column = {label: 100.0 * rows[label].mean() for label in labels}
        column["images"] = len(rows)
        column["patients"] = rows["patient_id"].nunique()
        column["% of images"] = 100.0 * len(rows) / total
        columns[PART_TITLES[part]] = column
    return pd.DataFrame(columns)


def format_markdown(table: pd.DataFrame, decimals: int = 2) -> str:
    """A GitHub markdown table; percentages to ``decimals`` places, counts as integers."""
    header = ["Label"] + [f"% positive in {c}" if c != "Label" else c for c in table.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * len(table.columns)) + "|"]
    for name, row in table.iterrows():
        cells = [f"{int(v):,}" if name in ("images", "patients") else f"{v:.{decimals}f}" for v in row]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_csv(table: pd.DataFrame, decimals: int = 2) -> str:
    cells = {
        name: [str(int(v)) if name in ("images", "patients") else f"{v:.{decimals}f}" for v in row]
        for name, row in table.iterrows()
    }
    out = pd.DataFrame.from_dict(cells, orient="index", columns=table.columns)
    return out.rename_axis("label").to_csv()
