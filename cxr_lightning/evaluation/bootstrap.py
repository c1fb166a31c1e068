"""Patient-cluster bootstrap: confidence intervals of the whole-test-set metrics and paired model comparisons.

A single macro AUROC per model (the paper's 0.780 / 0.770 / 0.758) says nothing about whether the
ranking would survive another test sample. This module adds:

* :func:`bootstrap_ci`: percentile confidence intervals of the macro metrics (recall, precision,
  F1 at fixed thresholds; AUROC; exact match) and of every label's AUROC, by a **patient-cluster
  bootstrap**.
* :func:`paired_bootstrap_test`: the same resamples applied to two models' predictions of the same
  images; interval and p-value of each metric's difference.

Why by patient
--------------
The NIH test set holds ~25.6k images of ~2.8k patients (about 9 each, follow-ups of the same person).
Images of one patient share anatomy, devices, disease and often labels, so they are not independent.
Resampling images would treat 25.6k correlated draws as independent and give intervals that are too
narrow. The cluster bootstrap draws *patients* with replacement (as many as there are in the test
set) and keeps all images of a drawn patient, once per draw; this respects any within-patient
dependence without modelling it. It is the cluster-robust alternative to DeLong's test
(:mod:`cxr_lightning.evaluation.delong`), whose variance assumes independent images.

Implementation
--------------
Resample ``b`` is a vector of patient multiplicities ``c_b`` (P,) (the counts of each patient among
P draws with replacement); image ``i`` of patient ``p`` then has weight ``c_b[p]``. Every metric is a
function of weighted counts:

* confusion counts: ``c (B, P) @ A (P, L)`` where ``A`` sums, per patient, the indicators
  ``pred & target``, ``pred`` and ``target`` of its images (one matrix product per chunk);
* AUROC (Mann-Whitney with ties counted 1/2, the trapezoidal area sklearn computes): per label the
  negatives are sorted once by score and every positive's two ``searchsorted`` positions (first
  negative ``>=`` it, first ``>`` it) are precomputed. The cumulative negative weight is only read
  at those positions, so the negatives between two consecutive ones form a block, and the blocks'
  weights in a chunk of resamples are one sparse product ``S (K, P) @ c.T (P, b)`` (``S[k, p]``:
  patient ``p``'s negatives in block ``k``); their ``cumsum`` read at each positive's two positions
  gives the weight of the negatives below it plus half those tied with it (:class:`_LabelAUROC`).
  Every sum runs over contiguous rows of ``b`` resamples: 2,000 resamples of 25,596 x 15 took
  0.82 s against 3.3 s when the ``(b, n_neg)`` per-image weights were cumulated
  (``benchmarks/bootstrap_delong.py``, same machine and hour).

Resamples are processed in chunks (``chunk_size``), which bounds memory and keeps the working set
in cache. All counts are integers and are summed exactly, so a replicate equals what sklearn computes on the explicitly concatenated
resample (the tests check this against a slow loop with the same draws).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from cxr_lightning.data.labels import NO_FINDING
from cxr_lightning.evaluation.inputs import check_scores_and_targets, resolve_label_names
from cxr_lightning.evaluation.metrics import MACRO_METRICS

__all__ = ["bootstrap_ci", "bootstrap_ci_at_thresholds", "draw_cluster_resamples", "encode_groups", "paired_bootstrap_test", "paired_test_from_intervals", "resample_counts", "seed_averaged_paired_test"]

# The macro metrics of bootstrap_ci are those of cxr_lightning.evaluation.metrics (MACRO_METRICS);
# ``auroc_findings`` (mean AUROC over the labels other than ``No Finding``) is only reported when
# the label names contain ``No Finding``.

#: Working-set target (bytes) of one chunk of resamples: ``n_images x chunk`` int32. On 25,596 x 15
#: the bootstrap of 2,000 resamples measured 1.27 s at 16 resamples a chunk, 0.79 s at 64 and flat
#: up to 256 (2 cores); this target gives ~80 there and 256 (the cap) on small sets.
_CHUNK_BYTES = 8 * 2**20


def encode_groups(groups: Any, n: int) -> tuple[np.ndarray, int]:
    """``(codes (N,) int64 in [0, P), P)``: column ``codes[i]`` of :func:`resample_counts` weighs image ``i``
    (groups numbered in sorted order); ``groups=None`` makes every image its own group."""
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


def resample_counts(n_groups: int, n_resamples: int, seed: int) -> np.ndarray:
    """``(n_resamples, n_groups)`` int32: how often each group (patient) is in each resample of
    :func:`draw_cluster_resamples` -- the weights every bootstrap here (and the subgroup gaps) applies."""
    return _multiplicities(draw_cluster_resamples(n_groups, n_resamples, seed), n_groups)


def _multiplicities(draws: np.ndarray, n_groups: int) -> np.ndarray:
    """``(B, P)`` int32: how often each group occurs in each row of ``draws`` (which it overwrites)."""
    b = draws.shape[0]
    draws += np.arange(b, dtype=np.int64)[:, None] * n_groups  # row r's groups -> r * P + group, in place
    return np.bincount(draws.ravel(), minlength=b * n_groups).reshape(b, n_groups).astype(np.int32)


class _WeightedMetrics:
    """Weighted whole-set metrics of one model, for many weight vectors (resamples) at once."""

    def __init__(self, probs: np.ndarray, targets: np.ndarray, thresholds: Sequence[np.ndarray], codes: np.ndarray, n_groups: int):
        n, num_labels = probs.shape
        self.n, self.num_labels, self.n_groups = n, num_labels, n_groups
        self.codes = codes

        def per_group(x: np.ndarray) -> np.ndarray:  # (N, k) -> (P, k) sums over each group's images
            out = np.zeros((n_groups, x.shape[1]), dtype=np.float64)
            np.add.at(out, codes, x.astype(np.float64))
            return out

        def counts_at(thr: np.ndarray) -> np.ndarray:
            # Columns: TP (L) | predicted positive (L) | actual positive (L) | exact match | images.
            pred = probs >= thr[None, :]
            exact = np.all(pred == targets, axis=1, keepdims=True)
            return per_group(np.concatenate([pred & targets, pred, targets, exact, np.ones((n, 1), bool)], axis=1))

        # One set of thresholded counts per threshold vector; the AUROC (threshold-free) is shared.
        self.counts_by_thresholds = [counts_at(t) for t in thresholds]

        # AUROC: one sparse block plan per label (threshold-free), and each group's image count for
        # the resample's total weight (negatives' weight = total - positives').
        self.images_per_group = np.bincount(codes, minlength=n_groups).astype(np.float64)
        self.label_aurocs = [_LabelAUROC(probs[:, j], targets[:, j], codes, n_groups) for j in range(num_labels)]

    def summaries(self, counts: np.ndarray, findings: np.ndarray | None) -> list[dict[str, np.ndarray]]:
        """:func:`_summaries` for each row of ``counts (b, P)`` (group multiplicities), one per threshold vector."""
        auroc = self.auroc(counts)  # threshold-free: once for all of them
        return [_summaries({**self.thresholded(counts, k), "auroc": auroc}, findings) for k in range(len(self.counts_by_thresholds))]

    def thresholded(self, counts: np.ndarray, k: int) -> dict[str, np.ndarray]:
        """Precision, recall, F1 and exact match per resample at the ``k``-th threshold vector."""
        num_labels = self.num_labels
        w = counts.astype(np.float64)
        agg = w @ self.counts_by_thresholds[k]  # (b, 3L + 2), exact: integer sums far below 2**53
        tp, pp, ap = agg[:, :num_labels], agg[:, num_labels : 2 * num_labels], agg[:, 2 * num_labels : 3 * num_labels]
        exact, images = agg[:, 3 * num_labels], agg[:, 3 * num_labels + 1]
        with np.errstate(divide="ignore", invalid="ignore"):
            precision = np.where(pp > 0, tp / pp, 0.0)
            recall = np.where(ap > 0, tp / ap, 0.0)
            f1 = np.where(pp + ap > 0, 2.0 * tp / (pp + ap), 0.0)
            exact_match = np.where(images > 0, exact / images, np.nan)
        return {"precision": precision, "recall": recall, "f1": f1, "exact_match": exact_match}

    def auroc(self, counts: np.ndarray) -> np.ndarray:
        """Per-label AUROC ``(b, L)`` of each resample (NaN where a resample lacks a class)."""
        # (P, b) layout: a patient's weights in all resamples side by side, so every sum below runs
        # over contiguous rows of b values.
        counts_t = np.ascontiguousarray(counts.T, dtype=np.int32)
        total_weight = self.images_per_group @ counts_t
        return np.stack([label(counts_t, total_weight) for label in self.label_aurocs], axis=1)


class _LabelAUROC:
    """One label's AUROC under patient weights, set up once and applied to every chunk of resamples.

    AUROC is Mann-Whitney with ties counted 1/2: for each positive, the weight of the negatives
    below it plus half the weight of those tied with it. With the negatives sorted by score, those
    are the cumulative negative weight at two positions per positive (first negative ``>=`` it,
    first ``>`` it), and the cumulative weight is read nowhere else. So the negatives between two
    consecutive such positions are summed as one block, and a block's weight in a resample is a
    sparse product: ``S (K, P) @ counts.T (P, b)``, ``S[k, q]`` being how many of patient ``q``'s
    negatives fall in block ``k``. Every term is an integer, so the result is exact.
    """

    def __init__(self, scores: np.ndarray, positive: np.ndarray, codes: np.ndarray, n_groups: int):
        neg_scores = scores[~positive]
        order = np.argsort(neg_scores, kind="stable")
        neg_sorted, neg_codes = neg_scores[order], codes[~positive][order]
        pos_scores = scores[positive]
        self.pos_codes = codes[positive]
        self.defined = len(neg_codes) > 0 and len(self.pos_codes) > 0
        lo = np.searchsorted(neg_sorted, pos_scores, side="left")
        hi = np.searchsorted(neg_sorted, pos_scores, side="right")
        # The positions read, ascending and above 0 (the weight below position 0 is 0); block k holds
        # the negatives in [ends[k-1], ends[k]), so the weight below ends[k] is the sum of blocks 0..k.
        ends = np.unique(np.concatenate([lo, hi]))
        ends = ends[ends > 0]
        block = np.searchsorted(ends, np.arange(len(neg_codes)), side="right")
        inside = block < len(ends)  # negatives above the highest positive are never below one
        self.blocks = sp.csr_matrix((np.ones(int(inside.sum()), dtype=np.int32), (block[inside], neg_codes[inside])),
                                    shape=(len(ends), n_groups), dtype=np.int32)  # fmt: skip
        self.blocks.sum_duplicates()
        # Row of the cumulative sums (which has a leading zero row) for each positive's two positions.
        self.lo_rows = np.where(lo > 0, np.searchsorted(ends, lo) + 1, 0)
        self.hi_rows = np.where(hi > 0, np.searchsorted(ends, hi) + 1, 0)

    def __call__(self, counts_t: np.ndarray, total_weight: np.ndarray) -> np.ndarray:
        """AUROC ``(b,)`` for ``counts_t (P, b)`` int32 patient multiplicities (NaN where a class has no weight)."""
        b = counts_t.shape[1]
        if not self.defined:
            return np.full(b, np.nan)
        cumulative = np.empty((self.blocks.shape[0] + 1, b), dtype=np.int32)  # int32: sums <= the total weight
        cumulative[0] = 0
        np.cumsum(self.blocks @ counts_t, axis=0, out=cumulative[1:])
        below_twice = np.take(cumulative, self.lo_rows, axis=0)  # (n_pos, b): below + tied/2, times two
        below_twice += np.take(cumulative, self.hi_rows, axis=0)
        pos_w = np.take(counts_t, self.pos_codes, axis=0)
        numerator = 0.5 * np.einsum("kb,kb->b", pos_w, below_twice, dtype=np.float64)
        total_pos = pos_w.sum(axis=0, dtype=np.float64)
        total_neg = total_weight - total_pos
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where((total_pos > 0) & (total_neg > 0), numerator / (total_pos * total_neg), np.nan)


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


def _replicates(engines: Sequence[_WeightedMetrics], counts: np.ndarray, chunk: int, findings) -> list[list[dict[str, np.ndarray]]]:
    """Per engine and threshold vector, every metric's replicates over the resamples ``counts``, ``chunk`` at a time."""
    parts = [[[] for _ in engine.counts_by_thresholds] for engine in engines]
    for start in range(0, counts.shape[0], chunk):
        block = counts[start : start + chunk]
        for engine, engine_parts in zip(engines, parts):
            for part, summary in zip(engine_parts, engine.summaries(block, findings)):
                part.append(summary)
    return [[{key: np.concatenate([p[key] for p in part], axis=0) for key in part[0]} for part in engine_parts] for engine_parts in parts]


def _points(engine: _WeightedMetrics, findings) -> list[dict[str, np.ndarray]]:
    """The metrics on the full data (every group once), one per threshold vector."""
    return engine.summaries(np.ones((1, engine.n_groups), dtype=np.int32), findings)


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
        groups: ``(N,)`` cluster ids, normally patient ids (``predictions_file.patient_ids_from_images``).
            ``None`` resamples single images (not recommended for the NIH test set, see module doc).
        n_resamples, seed: the resamples are :func:`draw_cluster_resamples` ``(P, n_resamples, seed)``.
        alpha: the intervals are the ``alpha/2`` and ``1 - alpha/2`` percentiles (linear
            interpolation, ``numpy.quantile``) of the replicates.
        label_names: names of the ``L`` columns (default: the 15 NIH labels when ``L == 15``).
        chunk_size: resamples processed together (default: a ~8 MiB int32 working set, 8 to 256).
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
    (result,) = bootstrap_ci_at_thresholds(probs, targets, [thresholds], groups, n_resamples=n_resamples, seed=seed, alpha=alpha,
                                           label_names=label_names, chunk_size=chunk_size, return_replicates=return_replicates)  # fmt: skip
    return result


def bootstrap_ci_at_thresholds(
    probs: Any,
    targets: Any,
    thresholds: Sequence[Any],
    groups: Any,
    n_resamples: int = 2000,
    seed: int = 0,
    alpha: float = 0.05,
    label_names: Sequence[str] | None = None,
    chunk_size: int | None = None,
    return_replicates: bool = False,
) -> list[dict[str, Any]]:
    """:func:`bootstrap_ci` at several threshold vectors of one model (the report's 0.5 and tuned), in one pass.

    One result per entry of ``thresholds``, each exactly what :func:`bootstrap_ci` returns for it;
    the AUROCs do not depend on the thresholds, so they are computed once for all of them (about
    half the work of two calls).
    """
    p, t = check_scores_and_targets(probs, targets)
    n, num_labels = p.shape
    if n == 0:
        raise ValueError("no predictions")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1); got {alpha}")
    if not thresholds:
        raise ValueError("give at least one threshold vector")
    names = resolve_label_names(label_names, num_labels)
    findings = _findings_index(names)
    codes, n_groups = encode_groups(groups, n)
    vectors = [_thresholds(thr, num_labels) for thr in thresholds]
    engine = _WeightedMetrics(p, t, vectors, codes, n_groups)
    (all_reps,) = _replicates([engine], resample_counts(n_groups, n_resamples, seed), _chunk_size(chunk_size, n), findings)
    points = _points(engine, findings)
    return [_result(reps, point, names, n_resamples, seed, alpha, n, n_groups, groups is None, return_replicates)
            for reps, point in zip(all_reps, points)]  # fmt: skip


def _result(reps, point, names, n_resamples, seed, alpha, n, n_groups, by_image: bool, return_replicates: bool) -> dict[str, Any]:
    """:func:`bootstrap_ci`'s result from the replicates and point values of one threshold vector."""
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
        resampling="image" if by_image else "cluster",
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
    return seed_averaged_paired_test([probs_a], [probs_b], targets, [thresholds_a], [thresholds_b], groups, n_resamples=n_resamples,
                                     seed=seed, alpha=alpha, label_names=label_names, chunk_size=chunk_size,
                                     return_replicates=return_replicates)  # fmt: skip


def seed_averaged_paired_test(
    probs_a: Sequence[Any],
    probs_b: Sequence[Any],
    targets: Any,
    thresholds_a: Sequence[Any],
    thresholds_b: Sequence[Any],
    groups: Any,
    n_resamples: int = 2000,
    seed: int = 0,
    alpha: float = 0.05,
    label_names: Sequence[str] | None = None,
    chunk_size: int | None = None,
    return_replicates: bool = False,
) -> dict[str, Any]:
    """:func:`paired_bootstrap_test` of two models each trained with several seeds, on the same images.

    ``probs_a`` holds one ``(N, L)`` matrix per training seed of model A (``thresholds_a`` one
    threshold vector per seed), likewise B. Every seed of both models is scored on the SAME patient
    resamples; a replicate's value of a model is the mean over its seeds, so the difference is that
    of the seed-averaged metrics and its interval holds the patients' sampling variation with every
    seed used (the spread between seeds is reported beside it, as mean +- sd). With one seed each it
    is exactly :func:`paired_bootstrap_test`.
    """
    if not probs_a or not probs_b or len(probs_a) != len(thresholds_a) or len(probs_b) != len(thresholds_b):
        raise ValueError("give one probability matrix and one threshold vector per seed of each model")
    checked_a = [check_scores_and_targets(p, targets) for p in probs_a]
    checked_b = [check_scores_and_targets(p, targets) for p in probs_b]
    t = checked_a[0][1]
    n, num_labels = t.shape
    if n == 0:
        raise ValueError("no predictions")
    if any(p.shape != t.shape for p, _ in checked_a + checked_b):
        raise ValueError("every seed's predictions must cover the same images and labels")
    names = resolve_label_names(label_names, num_labels)
    findings = _findings_index(names)
    codes, n_groups = encode_groups(groups, n)
    engines_a = [_WeightedMetrics(p, t, [_thresholds(thr, num_labels)], codes, n_groups) for (p, _), thr in zip(checked_a, thresholds_a)]
    engines_b = [_WeightedMetrics(p, t, [_thresholds(thr, num_labels)], codes, n_groups) for (p, _), thr in zip(checked_b, thresholds_b)]
    counts = resample_counts(n_groups, n_resamples, seed)
    # One threshold vector each: its replicates and point values are the first (only) entries.
    replicates = [reps for (reps,) in _replicates([*engines_a, *engines_b], counts, _chunk_size(chunk_size, n), findings)]
    points = [_points(e, findings)[0] for e in (*engines_a, *engines_b)]
    split = len(engines_a)
    facts = {"n_resamples": int(n_resamples), "seed": int(seed), "n_images": int(n), "n_groups": int(n_groups),
             "resampling": "image" if groups is None else "cluster"}  # fmt: skip
    return _paired_result(replicates[:split], replicates[split:], points[:split], points[split:], names, alpha, facts, return_replicates)


def paired_test_from_intervals(results_a: Sequence[dict[str, Any]], results_b: Sequence[dict[str, Any]], alpha: float = 0.05,
                               return_replicates: bool = False) -> dict[str, Any]:  # fmt: skip
    """:func:`seed_averaged_paired_test` from each seed's :func:`bootstrap_ci` result, with no new resampling.

    Every result must hold its replicates (``return_replicates=True``) and come from predictions of
    the SAME images (any order) with the same ``n_resamples`` and ``seed``: the resamples depend only
    on the set of patients, ``n_resamples`` and ``seed``, and a replicate is a sum over images, so
    the replicates are exactly those :func:`seed_averaged_paired_test` would draw, and so is the
    result. The report tests its models this way, from the intervals it has already computed.
    """
    results = [*results_a, *results_b]
    if not results_a or not results_b:
        raise ValueError("give at least one bootstrap result for each model")
    if any("replicates" not in r for r in results):
        raise ValueError("every bootstrap result must hold its replicates (bootstrap_ci(..., return_replicates=True))")
    keys = ("n_resamples", "seed", "n_images", "n_groups", "resampling")
    facts = {k: results[0][k] for k in keys}
    differing = [k for k in keys if any(r[k] != facts[k] for r in results)]
    names = tuple(results[0]["per_label"].index)
    if differing or any(tuple(r["per_label"].index) != names for r in results):
        raise ValueError(f"the bootstrap results differ in {differing or ['label names']}: they are not of the same resamples")
    points = [_point_of_result(r) for r in results]
    replicates = [r["replicates"] for r in results]
    split = len(results_a)
    return _paired_result(replicates[:split], replicates[split:], points[:split], points[split:], names, alpha, facts, return_replicates)


def _point_of_result(result: dict[str, Any]) -> dict[str, np.ndarray]:
    """A :func:`bootstrap_ci` result's point values in the shape of :func:`_point`'s."""
    point = {m: np.array([v]) for m, v in result["estimate"].items()}
    point["auroc_per_label"] = result["per_label"]["auroc"].to_numpy()[None, :]
    return point


def _paired_result(replicates_a, replicates_b, points_a, points_b, names, alpha: float, facts: dict, return_replicates: bool) -> dict[str, Any]:
    """The paired test's tables from each seed's replicates and point values (the mean over seeds of each model)."""
    reps_a, reps_b = _seed_mean(replicates_a), _seed_mean(replicates_b)
    point_a, point_b = _seed_mean(points_a), _seed_mean(points_b)
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
            "p_value": [_bootstrap_p_value(per_label_diff[:, j]) for j in range(len(names))],
        },
        index=pd.Index(names, name="label"),
    )
    result: dict[str, Any] = {
        "metrics": pd.DataFrame.from_dict(rows, orient="index").rename_axis("metric"),
        "per_label": per_label,
        "n_resamples": facts["n_resamples"],
        "seed": facts["seed"],
        "alpha": float(alpha),
        "n_images": facts["n_images"],
        "n_groups": facts["n_groups"],
        "resampling": facts["resampling"],
        "p_value_definition": "2*min((1+#{d*<=0})/(B+1), (1+#{d*>=0})/(B+1)), capped at 1 (percentile-interval inversion)",
        "seeds": (len(replicates_a), len(replicates_b)),
    }
    if return_replicates:
        result["replicates"] = {"a": reps_a, "b": reps_b}
    return result


def _seed_mean(per_seed: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The mean over seeds of each metric's replicates (one seed: the values themselves, unchanged)."""
    if len(per_seed) == 1:
        return per_seed[0]
    return {key: np.mean([values[key] for values in per_seed], axis=0) for key in per_seed[0]}
