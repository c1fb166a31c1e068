"""DeLong's paired test of two correlated AUROCs, per label, with Holm's step-down adjustment.

* :func:`delong_test`: two models' scores of the same images, one label; the fast O(N log N)
  midrank algorithm of Sun & Xu (2014).
* :func:`delong_multilabel`: the same for every label of ``(N, L)`` predictions, optionally with
  Holm's adjustment across labels (:func:`holm_adjust`, kept here because only this test uses it).

DeLong's variance assumes independent images (it is a U-statistic variance over independent cases
and controls). On clustered data, such as the NIH test set with about 9 images a patient, its
standard errors are too small and its p-values too optimistic; treat :func:`delong_test` results
there as a non-cluster-robust approximation and prefer
:func:`cxr_lightning.evaluation.bootstrap.paired_bootstrap_test` with patient groups (the
cluster-robust alternative) for claims such as "ResNet-50 beats BEiT".
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
from scipy import stats as _stats

from cxr_lightning.evaluation.inputs import as_matrix, resolve_label_names

__all__ = ["DeLongResult", "delong_multilabel", "delong_test", "holm_adjust"]


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
    # Midranks: 1-based ranks along each row, tied values sharing the mean of their positions.
    t_z = _stats.rankdata(np.concatenate([pos, neg], axis=1), method="average", axis=1)
    t_x = _stats.rankdata(pos, method="average", axis=1)
    t_y = _stats.rankdata(neg, method="average", axis=1)
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
    interval pROC's ``roc.test`` reports), cut to ``[-1, 1]``: a difference of two AUROCs cannot
    lie outside it, though the normal approximation's interval can on small sets. When ``se == 0`` (e.g. identical predictions) and
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
    low, high = max(-1.0, diff - q * se), min(1.0, diff + q * se)
    return DeLongResult(float(aucs[0]), float(aucs[1]), diff, se, float(z), p, low, high)


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
    names = resolve_label_names(label_names, t.shape[1])
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
