"""Performance per patient group: AUROC, and true- and false-positive rates at the tuned thresholds, by sex, age band and view.

A model can rank well overall and still miss disease more often in one group. The clearest sign
is *underdiagnosis*: a higher false-positive rate of ``No Finding`` in a group means that more of
its sick patients are called healthy; ``No Finding`` is therefore scored like every label.

* Groups: ``sex`` (``M``, ``F``), ``age_band`` (:data:`AGE_BANDS`: 0-19, 20-39, 40-59, 60-79,
  80+ years, lower bound included) and ``view`` (``PA``, ``AP``); values that are missing or
  unparseable form the group ``unknown``. They come from the predictions file's ``age``, ``sex``,
  ``view`` columns where it carries them, else from the metadata by image name
  (:func:`attach_demographics`); both go through the parsers of :mod:`cxr_lightning.data.fields`.
* Too few cases: a group with fewer than :data:`MIN_POSITIVES` positives (or negatives) of a
  label gets no AUROC for that label, only its counts (an AUROC on 3 positives is noise); a
  rate needs that many cases in its denominator (TPR: positives; FPR: negatives).
* Macro AUROC of a group: the mean AUROC over the labels that have enough cases in *every*
  known group of the attribute, so the groups' macros average the same labels (``No Finding``
  included when the run has it, as in the paper's macro). Its interval comes from the same
  replicates as the labels' (:func:`cxr_lightning.evaluation.bootstrap.bootstrap_ci`).
* Gaps: ``F - M``, ``PA - AP``, and for age the band with the largest rate minus the band with
  the smallest (chosen per label and rate on the full data, among bands with enough cases; the
  interval does not account for that choice). The interval resamples patients of the whole
  frame (:func:`~cxr_lightning.evaluation.bootstrap.draw_cluster_resamples`) and recomputes both
  groups' rates on each resample: a patient imaged at two ages or in both views moves both
  groups together, as it should.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from cxr_lightning.data.fields import SEXES, VIEWS, parse_ages, parse_sex, parse_view
from cxr_lightning.data.metadata import NIHMetadata, packaged_metadata
from cxr_lightning.evaluation.bootstrap import bootstrap_ci, encode_groups, resample_counts
from cxr_lightning.evaluation.markdown import number, table
from cxr_lightning.evaluation.prediction_frames import (
    DEMOGRAPHIC_COLUMNS,
    PATIENT_COLUMN,
    as_predictions_frame,
    frame_label_names,
)
from cxr_lightning.evaluation.predictions_file import IMAGE_COLUMN, PredictionsFile, label_column, probability_column

__all__ = [
    "AGE_BANDS",
    "ATTRIBUTES",
    "MIN_POSITIVES",
    "UNKNOWN",
    "SubgroupAUROC",
    "SubgroupRates",
    "age_band",
    "attach_demographics",
    "auroc_markdown_table",
    "rates_markdown_table",
    "subgroup_auroc",
    "subgroup_rates",
    "too_few",
]

#: Fewest positives (and negatives) of a label in a group for its AUROC or rate to be reported.
MIN_POSITIVES = 10
#: ``(lowest age, first age not included, name)``, years; ``None``: no upper bound.
AGE_BANDS: tuple[tuple[float, float | None, str], ...] = (
    (0, 20, "0-19"), (20, 40, "20-39"), (40, 60, "40-59"), (60, 80, "60-79"), (80, None, "80+"),
)  # fmt: skip
ATTRIBUTES = ("sex", "age_band", "view")
UNKNOWN = "unknown"
#: Group order of each attribute (``unknown`` last, when present).
_GROUPS = {"sex": SEXES, "age_band": tuple(name for _, _, name in AGE_BANDS), "view": VIEWS}
#: The fixed pairs whose gap is reported (``a - b``); the age gap is the largest band minus the smallest.
GAP_PAIRS = {"sex": ("F", "M"), "view": ("PA", "AP")}
_RATES = ("tpr", "fpr")


def too_few(positives: int, negatives: int, minimum: int = MIN_POSITIVES) -> str:
    """Why a group's AUROC is not reported (``""``: it is): fewer than ``minimum`` positives or negatives."""
    if positives < minimum:
        return f"fewer than {minimum} positives ({positives})"
    if negatives < minimum:
        return f"fewer than {minimum} negatives ({negatives})"
    return ""


def age_band(years: Any) -> np.ndarray:
    """The :data:`AGE_BANDS` name of each age in years (NaN: ``unknown``)."""
    years = np.asarray(years, dtype=np.float64)
    out = np.full(years.shape, UNKNOWN, dtype=object)
    for low, high, name in AGE_BANDS:
        out[(years >= low) & (years < (np.inf if high is None else high))] = name
    return out


def attach_demographics(predictions: PredictionsFile | pd.DataFrame, metadata: NIHMetadata | None = None) -> pd.DataFrame:
    """The predictions frame with ``age`` (years), ``sex``, ``view`` and ``age_band``.

    A column the predictions carry is used (parsed); the others are joined from ``metadata`` (the
    packaged NIH metadata when ``None``) by image name. An image the metadata lacks, and a value
    that does not parse, is ``unknown`` (NaN age), shown as its own group in the tables.
    """
    frame = as_predictions_frame(predictions)
    absent = [c for c in DEMOGRAPHIC_COLUMNS if c not in frame.columns]
    if absent:
        meta = (metadata if metadata is not None else packaged_metadata()).frame.set_index("image")
        joined = meta.reindex(frame[IMAGE_COLUMN])
        for column in absent:
            frame[column] = joined[column].to_numpy()
    frame["age"] = parse_ages(frame["age"]).years
    frame["sex"] = _parse_each_distinct(frame["sex"], parse_sex)
    frame["view"] = _parse_each_distinct(frame["view"], parse_view)
    frame["age_band"] = age_band(frame["age"])
    return frame


def _parse_each_distinct(column: pd.Series, parse) -> np.ndarray:
    """``parse(value) or UNKNOWN`` for every value, parsing each distinct value once (a column holds a few: M, F, PA, AP).

    Values that compare equal but differ in type (``1``, ``1.0``, ``True``) share a parse; that is
    safe for sex and view, whose parsers read strings only (and a string never equals a number).
    """
    codes, distinct = pd.factorize(column.to_numpy(dtype=object), use_na_sentinel=False)
    return np.asarray([parse(value) or UNKNOWN for value in distinct], dtype=object)[codes]


def _groups(frame: pd.DataFrame, attribute: str) -> list[str]:
    if attribute not in _GROUPS:
        raise ValueError(f"attribute must be one of {list(_GROUPS)}; got {attribute!r}")
    present = set(frame[attribute])
    return [g for g in _GROUPS[attribute] if g in present] + ([UNKNOWN] if UNKNOWN in present else [])


def _with_demographics(predictions: PredictionsFile | pd.DataFrame) -> pd.DataFrame:
    """A frame made by :func:`attach_demographics` as it is; anything else through it."""
    if isinstance(predictions, pd.DataFrame) and {"age_band", PATIENT_COLUMN} <= set(predictions.columns):
        return predictions.copy()
    return attach_demographics(predictions)


def _labels(frame: pd.DataFrame, label_names: Sequence[str] | None) -> tuple[str, ...]:
    names = tuple(label_names) if label_names is not None else frame_label_names(frame)
    absent = [c for n in names for c in (probability_column(n), label_column(n)) if c not in frame.columns]
    if absent:
        raise KeyError(f"the predictions have no column(s) {absent}")
    return names


def _matrices(frame: pd.DataFrame, names: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    probs = frame[[probability_column(n) for n in names]].to_numpy(dtype=np.float64)
    targets = frame[[label_column(n) for n in names]].to_numpy(dtype=np.int64)
    return probs, targets


@dataclass(frozen=True)
class SubgroupAUROC:
    """``table``: one row per (attribute, group, label) and a ``macro`` row per group: ``images``, ``patients``,
    ``positives``, ``auroc``, ``lower``, ``upper`` (NaN when not reported) and ``note``."""

    table: pd.DataFrame
    n_resamples: int
    alpha: float


def subgroup_auroc(
    predictions: PredictionsFile | pd.DataFrame,
    attributes: Sequence[str] = ATTRIBUTES,
    label_names: Sequence[str] | None = None,
    n_resamples: int = 2000,
    seed: int = 0,
    alpha: float = 0.05,
    min_positives: int = MIN_POSITIVES,
) -> SubgroupAUROC:
    """Per-label and macro AUROC with patient-bootstrap intervals in each group of each attribute."""
    frame = _with_demographics(predictions)
    names = _labels(frame, label_names)
    rows = []
    for attribute in attributes:
        groups = _groups(frame, attribute)
        members = {g: (frame[attribute] == g).to_numpy() for g in groups}
        _, all_targets = _matrices(frame, names)
        positives = {g: all_targets[m].sum(axis=0) for g, m in members.items()}
        shortage = {g: [too_few(int(p), int(m.sum() - p), min_positives) for p in positives[g]] for g, m in members.items()}
        known = [g for g in groups if g != UNKNOWN]
        common = [j for j in range(len(names)) if all(not shortage[g][j] for g in known)]
        for group in groups:
            subset = frame[members[group]]
            probs, targets = _matrices(subset, names)
            base = {"attribute": attribute, "group": group, "images": len(subset), "patients": subset[PATIENT_COLUMN].nunique()}
            eligible = [j for j in range(len(names)) if not shortage[group][j]]
            result = None
            if eligible:
                result = bootstrap_ci(probs[:, eligible], targets[:, eligible], 0.5, subset[PATIENT_COLUMN].to_numpy(),
                                      n_resamples=n_resamples, seed=seed, alpha=alpha,
                                      label_names=[names[j] for j in eligible], return_replicates=True)  # fmt: skip
            for j, name in enumerate(names):
                row = {**base, "label": name, "positives": int(positives[group][j]), "auroc": np.nan, "lower": np.nan,
                       "upper": np.nan, "note": shortage[group][j]}  # fmt: skip
                if result is not None and name in result["per_label"].index:
                    row.update(result["per_label"].loc[name, ["auroc", "lower", "upper"]].to_dict())
                rows.append(row)
            rows.append({**base, "label": "macro", "positives": np.nan, **_macro(result, eligible, common, names, alpha)})
    return SubgroupAUROC(pd.DataFrame(rows), int(n_resamples), float(alpha))


def _macro(result: dict | None, eligible: list[int], common: list[int], names, alpha: float) -> dict:
    """The group's mean AUROC over the attribute's ``common`` labels, with the interval of its replicates."""
    if not common:
        return {"auroc": np.nan, "lower": np.nan, "upper": np.nan, "note": "no label has enough cases in every group"}
    if result is None or not set(common) <= set(eligible):
        lacking = [names[j] for j in common if j not in eligible]
        return {"auroc": np.nan, "lower": np.nan, "upper": np.nan, "note": f"too few cases of {', '.join(lacking)}"}
    columns = [eligible.index(j) for j in common]
    point = float(result["per_label"]["auroc"].to_numpy()[columns].mean())
    with np.errstate(invalid="ignore"):
        replicates = np.nanmean(result["replicates"]["auroc_per_label"][:, columns], axis=1)
    replicates = replicates[np.isfinite(replicates)]
    lower, upper = np.quantile(replicates, [alpha / 2, 1 - alpha / 2]) if replicates.size else (np.nan, np.nan)
    return {"auroc": point, "lower": float(lower), "upper": float(upper), "note": f"mean over {len(common)} labels"}


@dataclass(frozen=True)
class SubgroupRates:
    """``rates``: one row per (attribute, group, label): ``positives``, ``negatives``, ``tpr``, ``fpr`` (NaN when too few)
    and ``note``. ``gaps``: one row per (attribute, label, rate): ``group_a``, ``group_b``, ``value_a``, ``value_b``,
    ``gap`` (a - b), ``lower``, ``upper`` and ``note``."""

    rates: pd.DataFrame
    gaps: pd.DataFrame
    n_resamples: int
    alpha: float


def _thresholds(thresholds: Mapping[str, float] | Sequence[float] | np.ndarray, names: tuple[str, ...]) -> np.ndarray:
    if isinstance(thresholds, Mapping):
        absent = [n for n in names if n not in thresholds]
        if absent:
            raise KeyError(f"no tuned threshold for {absent}")
        return np.array([float(thresholds[n]) for n in names])
    values = np.asarray(thresholds, dtype=np.float64)
    if values.shape != (len(names),):
        raise ValueError(f"thresholds must be one per label ({len(names)}); got shape {values.shape}")
    return values


def _rate_counts(frame: pd.DataFrame, names, thresholds: np.ndarray, groups, attribute, codes, n_patients) -> np.ndarray:
    """Per patient ``(P, G, 4, L)``: the group's true positives, positives, false positives and negatives."""
    probs, targets = _matrices(frame, names)
    predicted = probs >= thresholds[None, :]
    per_image = np.stack([predicted & (targets == 1), targets == 1, predicted & (targets == 0), targets == 0], axis=1)
    out = np.zeros((n_patients, len(groups), 4, len(names)))
    for k, group in enumerate(groups):
        member = (frame[attribute] == group).to_numpy()
        np.add.at(out[:, k], codes[member], per_image[member].astype(np.float64))
    return out


def _ratios(counts: np.ndarray) -> dict[str, np.ndarray]:
    """``(..., G, 4, L)`` weighted counts -> ``tpr``, ``fpr`` ``(..., G, L)`` (NaN without a denominator)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return {"tpr": counts[..., 0, :] / counts[..., 1, :], "fpr": counts[..., 2, :] / counts[..., 3, :]}


def subgroup_rates(
    predictions: PredictionsFile | pd.DataFrame,
    thresholds: Mapping[str, float] | Sequence[float] | np.ndarray,
    attributes: Sequence[str] = ATTRIBUTES,
    label_names: Sequence[str] | None = None,
    n_resamples: int = 2000,
    seed: int = 0,
    alpha: float = 0.05,
    min_positives: int = MIN_POSITIVES,
) -> SubgroupRates:
    """TPR and FPR per group at ``thresholds`` (label -> threshold, or one per label in order) and the gaps between groups."""
    frame = _with_demographics(predictions)
    names = _labels(frame, label_names)
    threshold_values = _thresholds(thresholds, names)
    codes, n_patients = encode_groups(frame[PATIENT_COLUMN].to_numpy(dtype=str), len(frame))
    multiplicities = resample_counts(n_patients, n_resamples, seed).astype(np.float64)
    rate_rows, gap_rows = [], []
    for attribute in attributes:
        groups = _groups(frame, attribute)
        per_patient = _rate_counts(frame, names, threshold_values, groups, attribute, codes, n_patients)
        totals = per_patient.sum(axis=0)  # (G, 4, L)
        point = _ratios(totals)
        shape = per_patient.shape[1:]
        replicates = _ratios((multiplicities @ per_patient.reshape(n_patients, -1)).reshape(n_resamples, *shape))
        enough = {"tpr": totals[:, 1, :] >= min_positives, "fpr": totals[:, 3, :] >= min_positives}
        for k, group in enumerate(groups):
            for j, name in enumerate(names):
                positives, negatives = int(totals[k, 1, j]), int(totals[k, 3, j])
                rate_rows.append({
                    "attribute": attribute, "group": group, "label": name, "positives": positives, "negatives": negatives,
                    "tpr": point["tpr"][k, j] if enough["tpr"][k, j] else np.nan,
                    "fpr": point["fpr"][k, j] if enough["fpr"][k, j] else np.nan,
                    "note": too_few(positives, negatives, min_positives),
                })  # fmt: skip
        for j, name in enumerate(names):
            for rate in _RATES:
                gap_rows.append(_gap(attribute, name, rate, groups, point[rate][:, j], replicates[rate][:, :, j],
                                     enough[rate][:, j], alpha, min_positives))  # fmt: skip
    return SubgroupRates(pd.DataFrame(rate_rows), pd.DataFrame(gap_rows), int(n_resamples), float(alpha))


def _gap(attribute, name, rate, groups, point, replicates, enough, alpha, min_positives) -> dict:
    """One gap row: the pair of groups, their rates, the difference and its percentile interval over the replicates."""
    row = {"attribute": attribute, "label": name, "rate": rate, "group_a": "", "group_b": "", "value_a": np.nan,
           "value_b": np.nan, "gap": np.nan, "lower": np.nan, "upper": np.nan, "note": ""}  # fmt: skip
    cases = "positives" if rate == "tpr" else "negatives"
    if attribute in GAP_PAIRS:
        a, b = GAP_PAIRS[attribute]
        absent = [g for g in (a, b) if g not in groups or not enough[groups.index(g)]]
        if absent:
            row.update(group_a=a, group_b=b, note=f"fewer than {min_positives} {cases} in {', '.join(absent)}")
            return row
        ia, ib = groups.index(a), groups.index(b)
    else:  # age: the bands with the largest and the smallest rate, among those with enough cases
        candidates = [k for k, g in enumerate(groups) if g != UNKNOWN and enough[k]]
        if len(candidates) < 2:
            row["note"] = f"fewer than two groups with {min_positives} {cases}"
            return row
        ia = max(candidates, key=lambda k: point[k])
        ib = min(candidates, key=lambda k: point[k])
    differences = replicates[:, ia] - replicates[:, ib]
    differences = differences[np.isfinite(differences)]
    lower, upper = np.quantile(differences, [alpha / 2, 1 - alpha / 2]) if differences.size else (np.nan, np.nan)
    row.update(group_a=groups[ia], group_b=groups[ib], value_a=float(point[ia]), value_b=float(point[ib]),
               gap=float(point[ia] - point[ib]), lower=float(lower), upper=float(upper))  # fmt: skip
    return row


def _number(value: float) -> str:
    return number(value, 3, undefined="-")


def auroc_markdown_table(result: SubgroupAUROC) -> str:
    """Subgroup AUROCs as markdown: one row per attribute, group and label (``macro`` first)."""
    level = round(100 * (1 - result.alpha))
    attribute_order = {a: i for i, a in enumerate(dict.fromkeys(result.table["attribute"]))}
    ordered = result.table.assign(
        attribute_order=result.table["attribute"].map(attribute_order),
        labels_after_macro=(result.table["label"] != "macro").astype(int),
    ).sort_values(["attribute_order", "labels_after_macro"], kind="stable")
    rows = []
    for row in ordered.itertuples(index=False):
        value = "-" if not np.isfinite(row.auroc) else f"{row.auroc:.3f} [{_number(row.lower)}, {_number(row.upper)}]"
        positives = "" if pd.isna(row.positives) else str(int(row.positives))
        rows.append([row.attribute, row.group, row.label, str(row.images), str(row.patients), positives, value, row.note])
    header = ["Attribute", "Group", "Label", "Images", "Patients", "Positives", f"AUROC [{level}% CI]", "Note"]
    return table(header, rows) + "\n"


def rates_markdown_table(result: SubgroupRates) -> str:
    """True- and false-positive rates per group, then the gaps with their intervals, as two markdown tables."""
    level = round(100 * (1 - result.alpha))
    rates = [[r.attribute, r.group, r.label, str(r.positives), str(r.negatives), _number(r.tpr), _number(r.fpr), r.note]
             for r in result.rates.itertuples(index=False)]  # fmt: skip
    gaps = []
    for r in result.gaps.itertuples(index=False):
        pair = f"{r.group_a} - {r.group_b}" if r.group_a else "-"
        value = "-" if not np.isfinite(r.gap) else f"{r.gap:+.3f} [{r.lower:+.3f}, {r.upper:+.3f}]"
        gaps.append([r.attribute, r.label, r.rate.upper(), pair, _number(r.value_a), _number(r.value_b), value, r.note])
    return (
        table(["Attribute", "Group", "Label", "Positives", "Negatives", "TPR", "FPR", "Note"], rates)
        + "\n\n"
        + table(["Attribute", "Label", "Rate", "Groups (a - b)", "a", "b", f"Gap [{level}% CI]", "Note"], gaps)
        + "\n"
    )
