"""The individual radiologists' operating points: each reader scored against the majority of the other readers.

Both papers show every radiologist as a point (1 - specificity, sensitivity) beside the model's
ROC curve. A reader cannot be scored against a reference he voted in, so reader ``r``'s reference
on an image is the **majority of the other readers** of that image:

* images where the other readers tie (1 YES, 1 NO of two others; 2-2 of four) or where no other
  reader gave a usable read have no reference; they are left out of ``r``'s point and counted
  (``ties``);
* **HEDGE** (a four-findings reader unsure; 165 Pneumothorax and 261 Nodule/mass reads of
  13,081) is by default **excluded** (``hedge="exclude"``): neither ``r``'s own hedges nor the
  others' count, and the hedged own reads are counted (``hedged``). Counting a hedge as NO would
  lower every reader's sensitivity and add to the others' NO votes for the very images that
  are hard; as YES it would do the opposite. Both are available (``hedge="no"``,
  ``hedge="yes"``) to show how much the choice moves the points.
* a reader with two rows for one image (4 pairs in the four-findings test readers, e.g.
  ``00030573_013.png``): identical reads count once; reads that differ count as a HEDGE (the
  reader gave both answers), and are counted (``conflicting_duplicates``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import numpy as np
import pandas as pd

from cxr_lightning.evaluation.expert.sets import HEDGE, NO, YES, ExpertLabelSet
from cxr_lightning.evaluation.markdown import number, table

__all__ = ["HedgePolicy", "markdown_table", "reader_operating_points"]

HedgePolicy = Literal["exclude", "no", "yes"]
_HEDGE_VALUE = {"exclude": np.nan, "no": 0.0, "yes": 1.0}
_COLUMNS = ["finding", "reader", "images", "positives", "tp", "fn", "tn", "fp", "sensitivity", "specificity", "ties", "hedged",
            "conflicting_duplicates"]  # fmt: skip


def _one_read_per_reader(reads: pd.DataFrame, finding: str) -> tuple[pd.Series, pd.Series]:
    """``(image, reader) -> YES/NO/HEDGE``, a reader's differing duplicate reads made HEDGE; and per reader how many those were."""
    grouped = reads.groupby(["image", "reader"], sort=True)[finding]
    distinct = grouped.nunique()
    combined = grouped.first().where(distinct == 1, HEDGE)
    return combined, (distinct > 1).groupby(level="reader").sum()


def _finding_points(reads: pd.DataFrame, finding: str, hedge: HedgePolicy) -> list[dict]:
    combined, conflicts = _one_read_per_reader(reads, finding)
    by_reader = combined.unstack("reader")  # images x readers; NaN: the reader did not read the image
    readers = list(by_reader.columns)
    read = by_reader.notna().to_numpy()
    hedged = (by_reader == HEDGE).to_numpy()
    votes = by_reader.replace({YES: 1.0, NO: 0.0, HEDGE: _HEDGE_VALUE[hedge]}).to_numpy(dtype=np.float64)
    rows = []
    for r, reader in enumerate(readers):
        others = np.delete(votes, r, axis=1)
        yes, no = (others == 1).sum(axis=1), (others == 0).sum(axis=1)
        reference = (yes > no).astype(np.float64)
        has_reference = yes != no
        own = votes[:, r]
        usable = read[:, r] & np.isfinite(own)
        scored = usable & has_reference
        positive, negative = scored & (reference == 1), scored & (reference == 0)
        tp, fn = int((positive & (own == 1)).sum()), int((positive & (own == 0)).sum())
        tn, fp = int((negative & (own == 0)).sum()), int((negative & (own == 1)).sum())
        rows.append({
            "finding": finding,
            "reader": str(reader),
            "images": int(scored.sum()),
            "positives": tp + fn,
            "tp": tp, "fn": fn, "tn": tn, "fp": fp,
            "sensitivity": tp / (tp + fn) if tp + fn else np.nan,
            "specificity": tn / (tn + fp) if tn + fp else np.nan,
            "ties": int((usable & ~has_reference).sum()),
            "hedged": int((read[:, r] & hedged[:, r] & ~np.isfinite(own)).sum()),
            "conflicting_duplicates": int(conflicts.get(reader, 0)),
        })  # fmt: skip
    return rows


def reader_operating_points(
    expert_set: ExpertLabelSet,
    findings: Iterable[str] | None = None,
    hedge: HedgePolicy = "exclude",
    images: Iterable[str] | None = None,
) -> pd.DataFrame:
    """Sensitivity and specificity of every reader of ``expert_set`` per finding, against the others' majority.

    ``images``: score only these (the images a run was tested on, so that the points and the
    model's curve share their images); default every image of the set. One row per (finding,
    reader): ``images`` scored, ``positives`` (of the reference), ``tp``/``fn``/``tn``/``fp``,
    ``sensitivity``, ``specificity`` (NaN without positives / negatives), ``ties`` (no majority
    among the others), ``hedged`` (own hedges left out), ``conflicting_duplicates``.
    """
    if hedge not in _HEDGE_VALUE:
        raise ValueError(f"hedge must be one of {list(_HEDGE_VALUE)}; got {hedge!r}")
    reads = expert_set.readers
    if images is not None:
        reads = reads[reads["image"].isin(set(images))]
    rows = []
    for finding in findings if findings is not None else expert_set.findings:
        if finding not in reads.columns:
            raise KeyError(f"{expert_set.name} has no finding {finding!r}; it has {list(expert_set.findings)}")
        if len(reads):
            rows.extend(_finding_points(reads, finding, hedge))
    return pd.DataFrame(rows, columns=_COLUMNS)


def markdown_table(points: pd.DataFrame) -> str:
    """The readers' points as a markdown table (one row per finding and reader)."""
    header = ["Finding", "Reader", "Images", "Positives", "Sensitivity", "Specificity", "Ties left out", "Hedges left out"]
    rows = [[row.finding, row.reader, str(row.images), str(row.positives), number(row.sensitivity, 3, undefined="-"),
             number(row.specificity, 3, undefined="-"), str(row.ties), str(row.hedged)] for row in points.itertuples(index=False)]  # fmt: skip
    return table(header, rows) + "\n"
