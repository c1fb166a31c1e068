"""Uncertainty and significance for whole-test-set metrics: patient bootstrap and DeLong.

A single macro AUROC per model (the paper's 0.780 / 0.770 / 0.758) says nothing about whether the
ranking would survive another test sample. This module adds:

* :func:`bootstrap_ci`: percentile confidence intervals of the macro metrics (recall, precision,
  F1 at fixed thresholds; AUROC; exact match) and of every label's AUROC, by a **patient-cluster
  bootstrap**.
* :func:`paired_bootstrap_test`: the same resamples applied to two models' predictions of the same
  images; interval and p-value of each metric's difference.
* :func:`delong_test` / :func:`delong_multilabel`: DeLong's paired test of two correlated AUROCs,
  with the fast O(N log N) midrank algorithm of Sun & Xu (2014), per label, optionally with Holm's
  step-down adjustment (:func:`holm_adjust`).

Why by patient
--------------
The NIH test set holds ~25.6k images of ~2.8k patients (about 9 each, follow-ups of the same person).
Images of one patient share anatomy, devices, disease and often labels, so they are not independent.
Resampling images would treat 25.6k correlated draws as independent and give intervals that are too
narrow. The cluster bootstrap draws *patients* with replacement (as many as there are in the test
set) and keeps all images of a drawn patient, once per draw; this respects any within-patient
dependence without modelling it.

DeLong's variance, in contrast, assumes independent images (it is a U-statistic variance over
independent cases and controls). On clustered data its standard errors are too small and its
p-values too optimistic; treat :func:`delong_test` results on the NIH test set as a
non-cluster-robust approximation and prefer :func:`paired_bootstrap_test` with patient groups
(the cluster-robust alternative) for claims such as "ResNet-50 beats BEiT".

Implementation of the bootstrap
-------------------------------
Resample ``b`` is a vector of patient multiplicities ``c_b`` (P,) (the counts of each patient among
P draws with replacement); image ``i`` of patient ``p`` then has weight ``c_b[p]``. Every metric is a
function of weighted counts:

* confusion counts: ``c (B, P) @ A (P, L)`` where ``A`` sums, per patient, the indicators
  ``pred & target``, ``pred`` and ``target`` of its images (one matrix product per chunk);
* AUROC (Mann-Whitney with ties counted 1/2, the trapezoidal area sklearn computes): per label the
  negatives are sorted once by score and every positive's two ``searchsorted`` positions (first
  negative ``>=`` it, first ``>`` it) are precomputed; per chunk of resamples the negatives' weights
  are cumulated in that order (``cumsum`` of a ``(b, n_neg)`` int32 matrix) and the weight of the
  negatives below each positive, plus half those tied with it, is read at those two positions.

Resamples are processed in small chunks (``chunk_size``), which bounds memory and keeps the working
set in cache. All counts are integers and
are summed exactly, so a replicate equals what sklearn computes on the explicitly concatenated
resample (the tests check this against a slow loop with the same draws).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
from scipy import stats as _stats

from cxr_lightning.data.labels import LABELS, NO_FINDING
from cxr_lightning.evaluation.metrics import MACRO_METRICS

__all__ = [
    "MACRO_METRICS",
    "PredictionsFile",
    "PredictionsFileError",
    "DeLongResult",
    "patient_ids_from_images",
    "read_predictions",
    "draw_cluster_resamples",
    "bootstrap_ci",
    "paired_bootstrap_test",
    "ci_table",
    "delong_test",
    "delong_auc_ci",
    "delong_multilabel",
    "holm_adjust",
]

# The macro metrics of bootstrap_ci are those of cxr_lightning.evaluation.metrics (MACRO_METRICS);
# ``auroc_findings`` (mean AUROC over the labels other than ``No Finding``) is only reported when
# the label names contain ``No Finding``.

_IMAGE_NAME = re.compile(r"^(\d{8})_\d+\.\w+$")

#: Working-set target (bytes) of one chunk's int32 per-image weight matrix in the bootstrap. Chunks
#: that stay in cache are faster: on 25,596 x 15 the AUROC work of 2,000 resamples measured ~2x
#: faster at ~20 resamples a chunk (this default) than at ~300 (benchmarks/bootstrap_delong.py).
_CHUNK_BYTES = 2 * 2**20


# --------------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------------


def patient_ids_from_images(names: Sequence[str]) -> np.ndarray:
    """Patient ids (``"00000013"``) of NIH image names (``"00000013_005.png"``, directories allowed).

    The NIH file name is ``<8-digit patient id>_<3-digit follow-up>.png``. Returns a string array;
    raises ``ValueError`` naming the first name that does not have this form.
    """
    out = []
    for name in names:
        base = os.path.basename(str(name))
        match = _IMAGE_NAME.match(base)
        if match is None:
            raise ValueError(f"not an NIH image name (expected like 00000013_005.png): {name!r}")
        out.append(match.group(1))
    return np.asarray(out, dtype=object).astype(str)


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
    try:
        frame = pd.read_csv(path)
    except pd.errors.EmptyDataError as err:
        raise PredictionsFileError(f"{path} is empty (no header)") from err
    except (OSError, UnicodeDecodeError, pd.errors.ParserError) as err:
        raise PredictionsFileError(f"cannot read {path}: {err}") from err
    if label_names is None:
        label_names = [c[len("prob_") :] for c in frame.columns if c.startswith("prob_")]
    label_names = tuple(label_names)
    missing = [c for name in label_names for c in (f"prob_{name}", f"label_{name}") if c not in frame.columns]
    if missing or "image" not in frame.columns or not label_names:
        raise PredictionsFileError(f"{path}: missing columns {(['image'] if 'image' not in frame.columns else []) + (missing or ['prob_<label>'])}")
    if frame.empty:
        raise PredictionsFileError(f"{path} has a header but no rows")
    images = frame["image"].astype(str).to_numpy()
    probs = _checked_block(frame, [f"prob_{n}" for n in label_names], path, "a probability in [0, 1]", lambda a: (a >= 0) & (a <= 1))
    targets = _checked_block(frame, [f"label_{n}" for n in label_names], path, "a 0/1 label", lambda a: (a == 0) | (a == 1))
    try:
        patients = patient_ids_from_images(images)
    except ValueError as err:
        row = next(i for i, name in enumerate(images) if not _IMAGE_NAME.match(os.path.basename(name)))
        raise PredictionsFileError(f"{path}, line {row + 2} (data row {row + 1}), column image: {err}") from err
    return PredictionsFile(images, probs, targets.astype(np.int64), label_names, patients)


def as_matrix(name: str, x: Any, dtype: Any = None) -> np.ndarray:
    """``x`` (array, list or tensor, bf16 included) as an (N, L) array; a vector becomes one column."""
    if hasattr(x, "detach"):
        x = x.detach()
        x = (x.float() if x.is_floating_point() else x).cpu().numpy()
    arr = np.asarray(x, dtype=dtype)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2:
        raise ValueError(f"{name} must be (N, L) or (N,); got shape {arr.shape}")
    return arr


def _check_inputs(probs: Any, targets: Any) -> tuple[np.ndarray, np.ndarray]:
    p = as_matrix("probs", probs, np.float64)
    t = as_matrix("targets", targets)
    if p.shape != t.shape:
        raise ValueError(f"probs {p.shape} and targets {t.shape} differ in shape")
    if not np.isfinite(p).all():
        raise ValueError("probs contains NaN or inf")
    if not np.isin(t, (0, 1)).all():
        raise ValueError("targets must be 0/1")
    return p, t.astype(bool)


def _encode_groups(groups: Any, n: int) -> tuple[np.ndarray, int]:
    """``(codes (N,) int64 in [0, P), P)``; ``groups=None`` makes every image its own group."""
    if groups is None:
        return np.arange(n, dtype=np.int64), n
    if hasattr(groups, "detach"):
        groups = groups.detach().cpu().numpy()
    g = np.asarray(groups)
    if g.shape != (n,):
        raise ValueError(f"groups must have one id per image, shape ({n},); got {g.shape}")
    _, codes = np.unique(g, return_inverse=True)
    codes = codes.reshape(-1).astype(np.int64)
    return codes, int(codes.max()) + 1 if n else 0


def _thresholds(thresholds: Any, num_labels: int) -> np.ndarray:
    if hasattr(thresholds, "detach"):
        thresholds = thresholds.detach().cpu().numpy()
    thr = np.asarray(thresholds, dtype=np.float64)
    if thr.ndim == 0:
        thr = np.full(num_labels, float(thr))
    if thr.shape != (num_labels,):
        raise ValueError(f"thresholds must be a scalar or ({num_labels},); got {thr.shape}")
    return thr


def _label_names(label_names: Sequence[str] | None, num_labels: int) -> tuple[str, ...]:
    if label_names is None:
        return LABELS if num_labels == len(LABELS) else tuple(f"label_{i}" for i in range(num_labels))
    names = tuple(label_names)
    if len(names) != num_labels:
        raise ValueError(f"{len(names)} label names for {num_labels} labels")
    return names


# --------------------------------------------------------------------------------------------------
# Bootstrap
# --------------------------------------------------------------------------------------------------


def draw_cluster_resamples(n_groups: int, n_resamples: int, seed: int) -> np.ndarray:
    """The bootstrap draws: ``(n_resamples, n_groups)`` int64 group indices, uniform with replacement.

    Row ``b`` lists the groups (patients) of resample ``b``; a group drawn ``k`` times contributes
    all its images ``k`` times. :func:`bootstrap_ci` and :func:`paired_bootstrap_test` use exactly
    these draws (``numpy.random.default_rng(seed).integers``), so a reference implementation can
    reproduce any replicate.
    """
    if n_groups < 1 or n_resamples < 1:
        raise ValueError(f"need at least one group and one resample; got {n_groups}, {n_resamples}")
    rng = np.random.default_rng(seed)
    return rng.integers(0, n_groups, size=(n_resamples, n_groups), dtype=np.int64)


def _multiplicities(draws: np.ndarray, n_groups: int) -> np.ndarray:
    """``(B, P)`` int32: how often each group occurs in each row of ``draws``."""
    b = draws.shape[0]
    flat = (draws + np.arange(b, dtype=np.int64)[:, None] * n_groups).ravel()
    return np.bincount(flat, minlength=b * n_groups).reshape(b, n_groups).astype(np.int32)


class _WeightedMetrics:
    """Weighted whole-set metrics of one model, for many weight vectors (resamples) at once."""

    def __init__(self, probs: np.ndarray, targets: np.ndarray, thresholds: np.ndarray, codes: np.ndarray, n_groups: int):
        n, num_labels = probs.shape
        self.n, self.num_labels, self.n_groups = n, num_labels, n_groups
        self.codes = codes
        pred = probs >= thresholds[None, :]

        def per_group(x: np.ndarray) -> np.ndarray:  # (N, k) -> (P, k) sums over each group's images
            out = np.zeros((n_groups, x.shape[1]), dtype=np.float64)
            np.add.at(out, codes, x.astype(np.float64))
            return out

        # Columns: TP (L) | predicted positive (L) | actual positive (L) | exact match | images.
        exact = np.all(pred == targets, axis=1, keepdims=True)
        self.group_counts = per_group(np.concatenate([pred & targets, pred, targets, exact, np.ones((n, 1), bool)], axis=1))

        # AUROC: per label, the negatives in ascending score order (their group codes) and, per
        # positive, how many negatives score strictly below (lo) and at most equal (hi).
        self.auroc_plan = []
        for label in range(num_labels):
            scores, positive = probs[:, label], targets[:, label]
            neg_scores = scores[~positive]
            order = np.argsort(neg_scores, kind="stable")
            neg_sorted = neg_scores[order]
            pos_scores = scores[positive]
            lo = np.searchsorted(neg_sorted, pos_scores, side="left")
            hi = np.searchsorted(neg_sorted, pos_scores, side="right")
            self.auroc_plan.append((codes[~positive][order], codes[positive], lo, hi))

    def __call__(self, counts: np.ndarray) -> dict[str, np.ndarray]:
        """Metrics for each row of ``counts (b, P)`` (group multiplicities)."""
        num_labels = self.num_labels
        w = counts.astype(np.float64)
        agg = w @ self.group_counts  # (b, 3L + 2), exact: integer sums far below 2**53
        tp, pp, ap = agg[:, :num_labels], agg[:, num_labels : 2 * num_labels], agg[:, 2 * num_labels : 3 * num_labels]
        exact, images = agg[:, 3 * num_labels], agg[:, 3 * num_labels + 1]
        with np.errstate(divide="ignore", invalid="ignore"):
            precision = np.where(pp > 0, tp / pp, 0.0)
            recall = np.where(ap > 0, tp / ap, 0.0)
            f1 = np.where(pp + ap > 0, 2.0 * tp / (pp + ap), 0.0)
            exact_match = np.where(images > 0, exact / images, np.nan)

        counts = np.ascontiguousarray(counts, dtype=np.int32)
        b = counts.shape[0]
        auroc = np.full((b, num_labels), np.nan)
        for label, (neg_codes, pos_codes, lo, hi) in enumerate(self.auroc_plan):
            if len(neg_codes) == 0 or len(pos_codes) == 0:
                continue
            # Cumulative negative weight in ascending score order, with a leading zero column:
            # cum[:, j] = weight of the j lowest-scoring negatives. int32 is exact (sums <= total
            # weight); (b, n) layout because numpy accumulates fastest along the last axis.
            cum = np.empty((b, len(neg_codes) + 1), dtype=np.int32)
            cum[:, 0] = 0
            np.cumsum(np.take(counts, neg_codes, axis=1), axis=1, out=cum[:, 1:])
            pos_w = np.take(counts, pos_codes, axis=1).astype(np.float64)  # (b, n_pos)
            # Mann-Whitney with ties 1/2: negatives below + half the tied ones = (cum[lo] + cum[hi]) / 2.
            below = np.take(cum, lo, axis=1).astype(np.float64) + np.take(cum, hi, axis=1)
            numerator = 0.5 * np.einsum("bk,bk->b", pos_w, below)
            total_pos, total_neg = pos_w.sum(axis=1), cum[:, -1].astype(np.float64)
            with np.errstate(divide="ignore", invalid="ignore"):
                auroc[:, label] = np.where((total_pos > 0) & (total_neg > 0), numerator / (total_pos * total_neg), np.nan)
        return {"precision": precision, "recall": recall, "f1": f1, "exact_match": exact_match, "auroc": auroc}


def _summaries(raw: dict[str, np.ndarray], findings: np.ndarray | None) -> dict[str, np.ndarray]:
    """Macro metrics ``(b,)`` and per-label AUROC ``(b, L)`` from :class:`_WeightedMetrics` output."""
    auroc = raw["auroc"]
    with np.errstate(invalid="ignore"):
        valid = np.isfinite(auroc)
        count = valid.sum(axis=1)
        macro = np.where(count > 0, np.where(valid, auroc, 0.0).sum(axis=1) / np.maximum(count, 1), np.nan)
    out = {
        "auroc_macro": macro,
        "f1_macro": raw["f1"].mean(axis=1),
        "precision_macro": raw["precision"].mean(axis=1),
        "recall_macro": raw["recall"].mean(axis=1),
        "exact_match": raw["exact_match"],
        "auroc_per_label": auroc,
    }
    if findings is not None:
        sub = auroc[:, findings]
        ok = np.isfinite(sub)
        k = ok.sum(axis=1)
        out["auroc_findings"] = np.where(k > 0, np.where(ok, sub, 0.0).sum(axis=1) / np.maximum(k, 1), np.nan)
    return out


def _chunk_size(chunk_size: int | None, n: int) -> int:
    if chunk_size is not None:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be positive; got {chunk_size}")
        return int(chunk_size)
    return max(8, min(256, _CHUNK_BYTES // (4 * max(n, 1))))


def _replicates(engines: Sequence[_WeightedMetrics], counts: np.ndarray, chunk: int, findings) -> list[dict[str, np.ndarray]]:
    parts: list[list[dict[str, np.ndarray]]] = [[] for _ in engines]
    for start in range(0, counts.shape[0], chunk):
        block = counts[start : start + chunk]
        for k, engine in enumerate(engines):
            parts[k].append(_summaries(engine(block), findings))
    return [{key: np.concatenate([p[key] for p in part], axis=0) for key in part[0]} for part in parts]


def _point(engine: _WeightedMetrics, findings) -> dict[str, np.ndarray]:
    return _summaries(engine(np.ones((1, engine.n_groups), dtype=np.int32)), findings)


def _interval(samples: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval over axis 0, ignoring NaN replicates (all-NaN gives NaN)."""
    samples = np.asarray(samples, dtype=np.float64)
    finite = np.isfinite(samples)
    lower = np.full(samples.shape[1:], np.nan)
    upper = np.full(samples.shape[1:], np.nan)
    has = finite.any(axis=0)
    if np.any(has):
        q = np.nanquantile(samples[:, has] if samples.ndim > 1 else samples[finite], [alpha / 2, 1 - alpha / 2], axis=0)
        if samples.ndim > 1:
            lower[has], upper[has] = q[0], q[1]
        else:
            lower, upper = q[0], q[1]
    return lower, upper


def _findings_index(names: tuple[str, ...]) -> np.ndarray | None:
    if NO_FINDING not in names:
        return None
    return np.array([i for i, n in enumerate(names) if n != NO_FINDING], dtype=np.int64)


def bootstrap_ci(
    probs: Any,
    targets: Any,
    thresholds: Any,
    groups: Any,
    n_resamples: int = 2000,
    seed: int = 0,
    alpha: float = 0.05,
    label_names: Sequence[str] | None = None,
    chunk_size: int | None = None,
    return_replicates: bool = False,
) -> dict[str, Any]:
    """Patient-cluster bootstrap percentile intervals of the whole-set metrics.

    Args:
        probs: ``(N, L)`` scores (numpy, torch or array-like).
        targets: ``(N, L)`` 0/1.
        thresholds: scalar or ``(L,)``; a label is predicted when ``prob >= threshold`` (as in
            :func:`cxr_lightning.evaluation.metrics.classification_metrics`). Kept FIXED across resamples
            (choose them on validation data; re-tuning them on each resample is a different question).
        groups: ``(N,)`` cluster ids, normally patient ids (:func:`patient_ids_from_images`).
            ``None`` resamples single images (not recommended for the NIH test set, see module doc).
        n_resamples, seed: the resamples are :func:`draw_cluster_resamples` ``(P, n_resamples, seed)``.
        alpha: the intervals are the ``alpha/2`` and ``1 - alpha/2`` percentiles (linear
            interpolation, ``numpy.quantile``) of the replicates.
        label_names: names of the ``L`` columns (default: the 15 NIH labels when ``L == 15``).
        chunk_size: resamples processed together (default: a ~2 MiB int32 working set, 8 to 256).
        return_replicates: also return every replicate (``"replicates"``).

    Metric definitions (each replicate is computed on the resample as if its images had been
    concatenated, duplicates included):

    * ``recall_macro``, ``precision_macro``, ``f1_macro``: sklearn ``average="macro"``,
      ``zero_division=0``: the unweighted mean over all ``L`` labels, a label's value being 0 where
      its denominator is 0.
    * ``auroc_macro``: mean of the per-label AUROCs **over the labels whose resample holds both
      classes**; a label with only one class in a resample is left out of that resample's mean
      (with ~9 images a patient this only happens for very rare labels such as Hernia on small
      sets). ``auroc_findings``: the same over the labels other than ``No Finding`` (reported when
      ``label_names`` contains it).
    * ``exact_match``: fraction of images whose whole predicted label vector equals the target
      (sklearn ``accuracy_score`` on indicator matrices).
    * per-label AUROC: sklearn ``roc_auc_score`` (ties count 1/2); ``NaN`` in a resample without
      both classes, and the label's interval is over the remaining replicates (``n_valid``).

    Returns:
        dict with ``estimate``, ``lower``, ``upper`` (``{metric: float}``, point estimates on the
        full data), ``per_label`` (DataFrame indexed by label: ``auroc``, ``lower``, ``upper``,
        ``n_valid``), ``n_resamples``, ``seed``, ``alpha``, ``n_images``, ``n_groups``,
        ``resampling`` (``"cluster"`` or ``"image"``) and, if asked, ``replicates``
        (``{metric: (B,)}``, ``auroc_per_label: (B, L)``).
    """
    p, t = _check_inputs(probs, targets)
    n, num_labels = p.shape
    if n == 0:
        raise ValueError("no predictions")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1); got {alpha}")
    names = _label_names(label_names, num_labels)
    findings = _findings_index(names)
    codes, n_groups = _encode_groups(groups, n)
    engine = _WeightedMetrics(p, t, _thresholds(thresholds, num_labels), codes, n_groups)
    counts = _multiplicities(draw_cluster_resamples(n_groups, n_resamples, seed), n_groups)
    (reps,) = _replicates([engine], counts, _chunk_size(chunk_size, n), findings)
    point = _point(engine, findings)

    metrics = [m for m in MACRO_METRICS if m in reps]
    result: dict[str, Any] = {"estimate": {}, "lower": {}, "upper": {}}
    for m in metrics:
        lo, hi = _interval(reps[m], alpha)
        result["estimate"][m] = float(point[m][0])
        result["lower"][m] = float(lo)
        result["upper"][m] = float(hi)
    lo, hi = _interval(reps["auroc_per_label"], alpha)
    result["per_label"] = pd.DataFrame(
        {
            "auroc": point["auroc_per_label"][0],
            "lower": lo,
            "upper": hi,
            "n_valid": np.isfinite(reps["auroc_per_label"]).sum(axis=0),
        },
        index=pd.Index(names, name="label"),
    )
    result.update(
        n_resamples=int(n_resamples),
        seed=int(seed),
        alpha=float(alpha),
        n_images=int(n),
        n_groups=int(n_groups),
        resampling="image" if groups is None else "cluster",
    )
    if return_replicates:
        result["replicates"] = reps
    return result


def _bootstrap_p_value(diffs: np.ndarray) -> float:
    """Two-sided p-value of ``H0: difference = 0`` by inverting the percentile interval."""
    d = diffs[np.isfinite(diffs)]
    if d.size == 0:
        return math.nan
    below = (1 + np.count_nonzero(d <= 0)) / (d.size + 1)
    above = (1 + np.count_nonzero(d >= 0)) / (d.size + 1)
    return float(min(1.0, 2.0 * min(below, above)))


def paired_bootstrap_test(
    probs_a: Any,
    probs_b: Any,
    targets: Any,
    thresholds_a: Any,
    thresholds_b: Any,
    groups: Any,
    n_resamples: int = 2000,
    seed: int = 0,
    alpha: float = 0.05,
    label_names: Sequence[str] | None = None,
    chunk_size: int | None = None,
    return_replicates: bool = False,
) -> dict[str, Any]:
    """Paired patient-cluster bootstrap of the difference ``model A - model B`` on the same images.

    Both models are evaluated on the SAME resamples (the draws of :func:`bootstrap_ci` with the same
    ``seed``), each at its own fixed thresholds, so the correlation between the two models' errors
    is kept and the interval of the difference is narrower than combining two separate intervals.

    p-value (two-sided, for ``H0: difference = 0``): with ``d*_1..d*_B`` the replicate differences
    (NaN replicates dropped),

        ``p = min(1, 2 * min((1 + #{d* <= 0}) / (B + 1), (1 + #{d* >= 0}) / (B + 1)))``,

    i.e. the smallest ``alpha`` at which the equal-tailed percentile interval of the difference
    excludes 0 (interval inversion), with the usual ``+1`` so that a p-value is never 0; its
    resolution is ``2 / (B + 1)``. It is consistent with the reported interval: ``p < alpha`` iff,
    up to that resolution, the ``1 - alpha`` interval does not contain 0.

    Returns:
        dict with ``metrics`` (DataFrame indexed by macro metric: ``a``, ``b``, ``diff``, ``lower``,
        ``upper``, ``p_value``), ``per_label`` (the same for each label's AUROC), ``n_resamples``,
        ``seed``, ``alpha``, ``n_images``, ``n_groups``, ``resampling``, ``p_value_definition`` and,
        if asked, ``replicates`` (``{"a": {...}, "b": {...}}``).
    """
    pa, t = _check_inputs(probs_a, targets)
    pb, _ = _check_inputs(probs_b, targets)
    n, num_labels = pa.shape
    if n == 0:
        raise ValueError("no predictions")
    names = _label_names(label_names, num_labels)
    findings = _findings_index(names)
    codes, n_groups = _encode_groups(groups, n)
    engine_a = _WeightedMetrics(pa, t, _thresholds(thresholds_a, num_labels), codes, n_groups)
    engine_b = _WeightedMetrics(pb, t, _thresholds(thresholds_b, num_labels), codes, n_groups)
    counts = _multiplicities(draw_cluster_resamples(n_groups, n_resamples, seed), n_groups)
    reps_a, reps_b = _replicates([engine_a, engine_b], counts, _chunk_size(chunk_size, n), findings)
    point_a, point_b = _point(engine_a, findings), _point(engine_b, findings)

    rows = {}
    for m in [m for m in MACRO_METRICS if m in reps_a]:
        diff = reps_a[m] - reps_b[m]
        lo, hi = _interval(diff, alpha)
        a, b = float(point_a[m][0]), float(point_b[m][0])
        rows[m] = {"a": a, "b": b, "diff": a - b, "lower": float(lo), "upper": float(hi), "p_value": _bootstrap_p_value(diff)}
    per_label_diff = reps_a["auroc_per_label"] - reps_b["auroc_per_label"]
    lo, hi = _interval(per_label_diff, alpha)
    per_label = pd.DataFrame(
        {
            "a": point_a["auroc_per_label"][0],
            "b": point_b["auroc_per_label"][0],
            "diff": point_a["auroc_per_label"][0] - point_b["auroc_per_label"][0],
            "lower": lo,
            "upper": hi,
            "p_value": [_bootstrap_p_value(per_label_diff[:, j]) for j in range(num_labels)],
        },
        index=pd.Index(names, name="label"),
    )
    result: dict[str, Any] = {
        "metrics": pd.DataFrame.from_dict(rows, orient="index").rename_axis("metric"),
        "per_label": per_label,
        "n_resamples": int(n_resamples),
        "seed": int(seed),
        "alpha": float(alpha),
        "n_images": int(n),
        "n_groups": int(n_groups),
        "resampling": "image" if groups is None else "cluster",
        "p_value_definition": "2*min((1+#{d*<=0})/(B+1), (1+#{d*>=0})/(B+1)), capped at 1 (percentile-interval inversion)",
    }
    if return_replicates:
        result["replicates"] = {"a": reps_a, "b": reps_b}
    return result


def ci_table(result: dict[str, Any], digits: int | None = None) -> pd.DataFrame:
    """The macro rows of a :func:`bootstrap_ci` result as a DataFrame (``estimate``, ``lower``, ``upper``)."""
    frame = pd.DataFrame({k: result[k] for k in ("estimate", "lower", "upper")}).rename_axis("metric")
    return frame.round(digits) if digits is not None else frame


# --------------------------------------------------------------------------------------------------
# DeLong
# --------------------------------------------------------------------------------------------------


class DeLongResult(NamedTuple):
    """Paired DeLong comparison of two AUROCs (``diff = auc_a - auc_b``); unpacks as a tuple."""

    auc_a: float
    auc_b: float
    diff: float
    se: float
    z: float
    p_value: float
    ci_low: float
    ci_high: float


def _midranks(x: np.ndarray) -> np.ndarray:
    """Mid-ranks (1-based, ties get their average rank) along the last axis.

    Sun & Xu (2014), Algorithm 1, vectorised: sort once, find the runs of equal values, give every
    element of a run the mean of the run's positions. O(n log n); equals
    ``scipy.stats.rankdata(method="average")``.
    """
    x = np.atleast_2d(x)
    out = np.empty(x.shape, dtype=np.float64)
    n = x.shape[-1]
    for row in range(x.shape[0]):
        order = np.argsort(x[row], kind="mergesort")
        xs = x[row, order]
        starts = np.concatenate(([0], np.flatnonzero(xs[1:] != xs[:-1]) + 1))
        ends = np.concatenate((starts[1:], [n]))
        mid = 0.5 * (starts + ends - 1) + 1.0
        out[row, order] = np.repeat(mid, ends - starts)
    return out


def _fast_delong(scores: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """AUCs and DeLong covariance of ``k`` markers: ``scores (k, N)``, ``positive (N,)`` bool.

    Sun & Xu (2014), Algorithm 2: with ``m`` positives and ``n`` negatives, midranks ``T_z`` over all
    ``N`` scores, ``T_x`` among positives and ``T_y`` among negatives,

    * ``AUC = (sum_i T_z(x_i) - m(m+1)/2) / (m n)``,
    * positive placements ``V10_i = (T_z(x_i) - T_x(x_i)) / n`` (fraction of negatives below
      positive ``i``, ties 1/2) and negative placements ``V01_j = 1 - (T_z(y_j) - T_y(y_j)) / m``,
    * ``S = cov(V10) / m + cov(V01) / n`` (sample covariances, divisor ``m - 1`` / ``n - 1``,
      exactly DeLong et al. 1988's ``S10/m + S01/n``).

    Returns ``(aucs (k,), S (k, k), V10 (k, m), V01 (k, n))``.
    """
    pos = scores[:, positive]
    neg = scores[:, ~positive]
    m, n = pos.shape[1], neg.shape[1]
    t_z = _midranks(np.concatenate([pos, neg], axis=1))
    t_x = _midranks(pos)
    t_y = _midranks(neg)
    aucs = (t_z[:, :m].sum(axis=1) - m * (m + 1) / 2.0) / (m * n)
    v10 = (t_z[:, :m] - t_x) / n
    v01 = 1.0 - (t_z[:, m:] - t_y) / m
    s10 = np.atleast_2d(np.cov(v10, ddof=1)) if m > 1 else np.zeros((scores.shape[0],) * 2)
    s01 = np.atleast_2d(np.cov(v01, ddof=1)) if n > 1 else np.zeros((scores.shape[0],) * 2)
    return aucs, s10 / m + s01 / n, v10, v01


def _binary_inputs(*arrays: Any) -> list[np.ndarray]:
    out = []
    for a in arrays:
        if hasattr(a, "detach"):
            a = a.detach().cpu().numpy()
        out.append(np.asarray(a).reshape(-1))
    if len({a.shape for a in out}) != 1:
        raise ValueError(f"inputs differ in length: {[a.shape[0] for a in out]}")
    # The last array is the targets, the others scores: a NaN score would otherwise be ranked as
    # the highest and give a plausible-looking AUC.
    *scores, targets = out
    for i, a in enumerate(scores):
        if not np.isfinite(a.astype(np.float64)).all():
            raise ValueError(f"scores {i + 1} contain NaN or inf ({int((~np.isfinite(a.astype(np.float64))).sum())} values)")
    if not np.isin(targets, (0, 1)).all():
        raise ValueError("targets must be 0/1")
    return out


def delong_test(probs_a: Any, probs_b: Any, targets: Any, alpha: float = 0.05) -> DeLongResult:
    """Paired DeLong test of ``AUC(a) = AUC(b)`` on the same images (two-sided).

    ``probs_a``, ``probs_b``: ``(N,)`` scores, higher meaning "positive" (no automatic direction
    flip, unlike pROC's ``direction="auto"``); ``targets``: ``(N,)`` 0/1 with both classes.
    ``z = diff / se``, ``p = 2 * (1 - Phi(|z|))``, ``ci = diff -/+ z_{1-alpha/2} * se`` (the
    interval pROC's ``roc.test`` reports). When ``se == 0`` (e.g. identical predictions) and
    ``diff == 0``, ``z = 0`` and ``p = 1``, as in pROC.

    Assumes independent images: on the NIH test set (~9 images a patient) the standard error is
    optimistic; :func:`paired_bootstrap_test` with patient groups is the cluster-robust alternative.
    """
    a, b, y = _binary_inputs(probs_a, probs_b, targets)
    positive = _as_positive(y)
    aucs, cov, _, _ = _fast_delong(np.stack([a, b]).astype(np.float64), positive)
    diff = float(aucs[0] - aucs[1])
    var = float(cov[0, 0] + cov[1, 1] - 2.0 * cov[0, 1])
    se = math.sqrt(max(var, 0.0))
    if se > 0:
        z = diff / se
    else:
        z = 0.0 if diff == 0 else math.copysign(math.inf, diff)
    p = float(2.0 * _stats.norm.sf(abs(z)))
    q = float(_stats.norm.ppf(1.0 - alpha / 2.0))
    return DeLongResult(float(aucs[0]), float(aucs[1]), diff, se, float(z), p, diff - q * se, diff + q * se)


def delong_auc_ci(probs: Any, targets: Any, alpha: float = 0.05) -> tuple[float, float, float, float]:
    """``(auc, se, lower, upper)``: one AUROC with DeLong's standard error and a normal interval.

    The interval is clipped to ``[0, 1]`` like pROC's ``ci.auc(method="delong")``. Same
    independence caveat as :func:`delong_test`.
    """
    s, y = _binary_inputs(probs, targets)
    aucs, cov, _, _ = _fast_delong(s[None, :].astype(np.float64), _as_positive(y))
    auc, se = float(aucs[0]), math.sqrt(max(float(cov[0, 0]), 0.0))
    q = float(_stats.norm.ppf(1.0 - alpha / 2.0))
    return auc, se, max(0.0, auc - q * se), min(1.0, auc + q * se)


def _as_positive(y: np.ndarray) -> np.ndarray:
    if not np.isin(y, (0, 1)).all():
        raise ValueError("targets must be 0/1")
    positive = y.astype(bool)
    if positive.all() or not positive.any():
        raise ValueError("targets hold a single class: AUROC is undefined")
    return positive


def holm_adjust(p_values: Any) -> np.ndarray:
    """Holm (1979) step-down adjusted p-values; NaN entries stay NaN and do not count as tests.

    With the ``m`` finite p-values sorted ascending, ``p_(1) <= ... <= p_(m)``:
    ``adj_(i) = min(1, max_{j <= i} (m - j + 1) p_(j))``, returned in the input order. This is
    statsmodels' ``multipletests(method="holm")`` definition (running maximum of
    ``p_sorted * [m, m-1, ..., 1]``, capped at 1).
    """
    p = np.asarray(p_values, dtype=np.float64).reshape(-1)
    out = np.full(p.shape, np.nan)
    finite = np.flatnonzero(np.isfinite(p))
    if finite.size == 0:
        return out
    if np.any((p[finite] < 0) | (p[finite] > 1)):
        raise ValueError("p-values must be in [0, 1]")
    m = finite.size
    order = finite[np.argsort(p[finite], kind="stable")]
    adjusted = np.minimum(1.0, np.maximum.accumulate(p[order] * np.arange(m, 0, -1)))
    out[order] = adjusted
    return out


def delong_multilabel(
    probs_a: Any,
    probs_b: Any,
    targets: Any,
    label_names: Sequence[str] | None = None,
    holm: bool = False,
    alpha: float = 0.05,
) -> pd.DataFrame:
    """:func:`delong_test` for every label of ``(N, L)`` predictions; one row per label.

    Columns: ``positives``, ``negatives``, ``auc_a``, ``auc_b``, ``diff``, ``se``, ``z``,
    ``p_value``, ``ci_low``, ``ci_high`` and, with ``holm=True``, ``p_holm`` (Holm-adjusted over the
    labels with a defined test). A label with a single class gets NaN. Same independence caveat as
    :func:`delong_test`.
    """
    pa = as_matrix("probs_a", probs_a, np.float64)
    pb = as_matrix("probs_b", probs_b, np.float64)
    t = as_matrix("targets", targets)
    if not (pa.shape == pb.shape == t.shape):
        raise ValueError(f"shapes differ: {pa.shape}, {pb.shape}, {t.shape}")
    names = _label_names(label_names, t.shape[1])
    rows = []
    for j in range(t.shape[1]):
        y = t[:, j].astype(np.int64)
        pos = int(y.sum())
        row: dict[str, Any] = {"label": names[j], "positives": pos, "negatives": int(len(y) - pos)}
        if 0 < pos < len(y):
            row.update(delong_test(pa[:, j], pb[:, j], y, alpha=alpha)._asdict())
        else:
            row.update(dict.fromkeys(DeLongResult._fields, math.nan))
        rows.append(row)
    frame = pd.DataFrame(rows).set_index("label")
    if holm:
        frame["p_holm"] = holm_adjust(frame["p_value"].to_numpy())
    return frame
