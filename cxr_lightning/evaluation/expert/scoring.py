"""A run's AUROC against the radiologists' labels, beside its AUROC against NIH's labels on the same images.

For each finding of an expert set (:mod:`~cxr_lightning.evaluation.expert.sets`), the run's score
and NIH's label come from :func:`~cxr_lightning.evaluation.expert.mapping.map_finding`; both
AUROCs are computed on the images the run and the set share, with patient-bootstrap intervals
(:func:`cxr_lightning.evaluation.bootstrap.bootstrap_ci`, the same resamples for both references:
same patients, same seed). The set's images the run lacks are counted and listed, never filled in.
A reference with fewer than :data:`~cxr_lightning.evaluation.subgroups.MIN_POSITIVES` positives
(or negatives) on those images gets no AUROC, only the count (the 810 all-findings images hold 2
Pneumonia positives).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from cxr_lightning.evaluation.bootstrap import bootstrap_ci
from cxr_lightning.evaluation.expert.mapping import map_finding
from cxr_lightning.evaluation.expert.sets import ExpertLabelSet
from cxr_lightning.evaluation.markdown import table
from cxr_lightning.evaluation.prediction_frames import PATIENT_COLUMN, as_predictions_frame
from cxr_lightning.evaluation.predictions_file import IMAGE_COLUMN, PredictionsFile
from cxr_lightning.evaluation.subgroups import MIN_POSITIVES, too_few

__all__ = ["ExpertScores", "FindingCurves", "markdown_table", "score_against_experts"]

_REFERENCES = ("expert", "nih")


@dataclass(frozen=True)
class FindingCurves:
    """The aligned arrays behind one finding's row (the ROC figures draw them): one entry per shared image."""

    probs: np.ndarray
    expert: np.ndarray
    nih: np.ndarray
    images: np.ndarray


@dataclass(frozen=True)
class ExpertScores:
    """One run on one expert set.

    ``table``: one row per finding of the set: ``finding``, ``scored_as`` (the mapping),
    ``images`` (shared with the run), and for each reference ``expert`` / ``nih``:
    ``<ref>_positives``, ``<ref>_auroc``, ``<ref>_lower``, ``<ref>_upper`` (NaN when not scored),
    and ``note`` (why a value is absent). ``missing_images``: the set's images the run lacks.
    """

    set_name: str
    citation: str
    set_images: int
    missing_images: tuple[str, ...]
    table: pd.DataFrame
    curves: dict[str, FindingCurves] = field(default_factory=dict)
    n_resamples: int = 2000
    alpha: float = 0.05


def _empty_reference(row: dict, reference: str, positives: int | None) -> None:
    row.update({f"{reference}_positives": positives, f"{reference}_auroc": np.nan, f"{reference}_lower": np.nan,
                f"{reference}_upper": np.nan})  # fmt: skip


def score_against_experts(
    predictions: PredictionsFile | pd.DataFrame,
    expert_set: ExpertLabelSet,
    n_resamples: int = 2000,
    seed: int = 0,
    alpha: float = 0.05,
    min_positives: int = MIN_POSITIVES,
) -> ExpertScores:
    """AUROC with patient-bootstrap intervals of ``predictions`` against ``expert_set``'s and NIH's labels, per finding."""
    frame = as_predictions_frame(predictions)
    labels = expert_set.labels
    shared = labels.merge(frame, on=IMAGE_COLUMN, how="inner", suffixes=("", "_run"))  # the set's order
    missing = tuple(labels[IMAGE_COLUMN][~labels[IMAGE_COLUMN].isin(frame[IMAGE_COLUMN])])

    rows: dict[str, dict] = {}
    curves: dict[str, FindingCurves] = {}
    for finding in expert_set.findings:
        mapped = map_finding(shared, finding)
        rows[finding] = {"finding": finding, "scored_as": mapped.source, "images": len(shared), "note": mapped.reason}
        if mapped.probs is not None and len(shared):
            curves[finding] = FindingCurves(mapped.probs, shared[finding].to_numpy(dtype=np.int64), mapped.nih,
                                            shared[IMAGE_COLUMN].to_numpy())  # fmt: skip
        else:
            rows[finding]["note"] = mapped.reason or "the run has none of the set's images"
            for reference in _REFERENCES:
                _empty_reference(rows[finding], reference, None)

    scored = list(curves)
    if scored:
        probs = np.stack([curves[f].probs for f in scored], axis=1)
        for reference in _REFERENCES:
            targets = np.stack([getattr(curves[f], reference) for f in scored], axis=1)
            # Same patients and seed for both references: the same resamples.
            per_label = bootstrap_ci(probs, targets, 0.5, shared[PATIENT_COLUMN].to_numpy(), n_resamples=n_resamples, seed=seed,
                                     alpha=alpha, label_names=scored)["per_label"]  # fmt: skip
            for j, finding in enumerate(scored):
                row, positives = rows[finding], int(targets[:, j].sum())
                shortage = too_few(positives, len(targets) - positives, min_positives)
                if shortage:
                    _empty_reference(row, reference, positives)
                    who = "radiologists" if reference == "expert" else "NIH"
                    row["note"] = "; ".join(filter(None, [row["note"], f"{who}: {shortage}"]))
                    continue
                row.update({f"{reference}_positives": positives, f"{reference}_auroc": per_label.at[finding, "auroc"],
                            f"{reference}_lower": per_label.at[finding, "lower"], f"{reference}_upper": per_label.at[finding, "upper"]})  # fmt: skip

    columns = (
        ["finding", "scored_as", "images"]
        + [f"{r}_{k}" for r in _REFERENCES for k in ("positives", "auroc", "lower", "upper")]
        + ["note"]
    )
    return ExpertScores(
        set_name=expert_set.name,
        citation=expert_set.citation,
        set_images=len(labels),
        missing_images=missing,
        table=pd.DataFrame(list(rows.values()))[columns],
        curves=curves,
        n_resamples=int(n_resamples),
        alpha=float(alpha),
    )


def _auroc_cell(row: pd.Series, reference: str) -> str:
    positives = row[f"{reference}_positives"]
    if positives is None or pd.isna(positives):
        return "-"
    if not np.isfinite(row[f"{reference}_auroc"]):
        return f"- ({int(positives)} pos.)"
    return f"{row[f'{reference}_auroc']:.3f} [{row[f'{reference}_lower']:.3f}, {row[f'{reference}_upper']:.3f}] ({int(positives)} pos.)"


def markdown_table(scores: ExpertScores) -> str:
    """The run's AUROC against the radiologists' and NIH's labels, one row per finding, with a line on the images."""
    level = round(100 * (1 - scores.alpha))
    shared = scores.set_images - len(scores.missing_images)
    lines = [
        f"`{scores.set_name}`: {shared} of its {scores.set_images} images are in the run"
        + (f" ({len(scores.missing_images)} missing, e.g. {scores.missing_images[0]})" if scores.missing_images else "")
        + f"; {level}% intervals from {scores.n_resamples} patient-bootstrap resamples.",
        "",
    ]
    header = ["Finding", "Scored as", "Images", f"AUROC vs radiologists [{level}% CI]", f"AUROC vs NIH labels [{level}% CI]", "Note"]
    rows = [[row["finding"], row["scored_as"], str(row["images"]), _auroc_cell(row, "expert"), _auroc_cell(row, "nih"), row["note"]]
            for _, row in scores.table.iterrows()]  # fmt: skip
    return "\n".join(lines) + "\n" + table(header, rows) + "\n"
