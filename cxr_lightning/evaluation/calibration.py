"""Calibration of multi-label probabilities: ECE, Brier score, reliability diagrams, temperature.

Every function treats each label as its own binary problem (a sigmoid output per label).

* :func:`expected_calibration_error`: per-label ECE with equal-width bins.
* :func:`brier_score`: per-label mean squared error of the probabilities (sklearn's
  ``brier_score_loss`` per column).
* :func:`calibration_table`: both, per label and macro, as a DataFrame.
* :func:`reliability_diagram`: a PNG grid, one panel per label.
* :func:`fit_temperature` / :func:`apply_temperature`: one temperature ``T`` for all labels, fitted
  on VALIDATION predictions by minimising the mean binary cross-entropy of ``sigmoid(logit / T)``;
  applied to test probabilities through their logits. Scaling logits by one positive constant
  keeps every label's ranking, so AUROC is unchanged; thresholds tuned on uncalibrated
  probabilities must be re-tuned (or mapped through the same transform).

ECE definition (Naeini et al. 2015; Guo et al. 2017): the interval ``[0, 1]`` is cut into
``n_bins`` equal-width bins ``[k/n, (k+1)/n)``, the last one closed (a probability of exactly 1
falls in it). With ``B_k`` the predictions of a label in bin ``k`` and ``N`` all of them,
``ECE = sum_k |B_k| / N * |mean(y in B_k) - mean(p in B_k)|``; empty bins contribute 0. The default of
15 bins follows Guo et al.; ECE depends on the binning and is biased upwards for small ``N``
(a perfectly calibrated model has ECE ~ sqrt(bins / N), not 0), so compare models at equal
``n_bins`` and ``N``. The value is torchmetrics' ``binary_calibration_error`` (``norm="l1"``), and
the reliability curve bins with the same edges (``torch.linspace(0, 1, n_bins + 1)``): a probability
lying exactly on an inner edge that float64 cannot represent exactly falls where that edge puts it
(with 10 bins, 0.3 is below the edge 0.30000000000000004, so in ``[0.2, 0.3)``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy.optimize import minimize_scalar
from scipy.special import expit, log_expit, logit
from torchmetrics.functional.classification import binary_calibration_error

from cxr_lightning.evaluation.inputs import as_matrix

__all__ = [
    "DEFAULT_BINS",
    "expected_calibration_error",
    "brier_score",
    "calibration_table",
    "reliability_curve",
    "reliability_diagram",
    "fit_temperature",
    "apply_temperature",
]

DEFAULT_BINS = 15
#: Probabilities are clipped to ``[EPS, 1 - EPS]`` before taking logits (only exact 0/1 and values
#: closer to them than float32 can represent are affected; the order of all others is kept).
EPS = 1e-12


def _check(probs: Any, targets: Any) -> tuple[np.ndarray, np.ndarray]:
    p, t = as_matrix("probs", probs, np.float64), as_matrix("targets", targets, np.float64)
    if p.shape != t.shape:
        raise ValueError(f"probs {p.shape} and targets {t.shape} differ in shape")
    if p.shape[0] == 0:
        raise ValueError("no predictions")
    if not np.isfinite(p).all() or p.min() < 0 or p.max() > 1:
        raise ValueError("probs must be finite and in [0, 1]")
    if not np.isin(t, (0, 1)).all():
        raise ValueError("targets must be 0/1")
    return p, t


def _check_bins(n_bins: int) -> None:
    if n_bins < 1:
        raise ValueError(f"n_bins must be positive; got {n_bins}")


def _bin_index(p: np.ndarray, n_bins: int) -> np.ndarray:
    """Bin of each probability, by the edges torchmetrics' calibration error uses (so curve and ECE agree)."""
    _check_bins(n_bins)
    edges = torch.linspace(0, 1, n_bins + 1, dtype=torch.float64)
    # A copy: torch warns on read-only arrays, which a caller's (or pandas') array may be.
    index = torch.bucketize(torch.from_numpy(np.array(p, dtype=np.float64, order="C")), edges, right=True) - 1
    return np.minimum(index.numpy(), n_bins - 1)  # the last bin is closed: a probability of 1 falls in it


def _below_one(p: np.ndarray) -> np.ndarray:
    """``p`` with exact 1s moved to the largest float below 1.

    torchmetrics gives a probability of exactly 1 a bin of its own, ``[1, 1]``; here the last bin is
    closed (see the module docstring). The move changes that bin's mean by at most 1.2e-16.
    """
    return np.minimum(p, np.nextafter(1.0, 0.0))


def reliability_curve(probs: Any, targets: Any, n_bins: int = DEFAULT_BINS) -> dict[str, np.ndarray]:
    """Per label and equal-width bin: ``count``, ``mean_prob``, ``frac_pos`` (each ``(L, n_bins)``).

    Empty bins have ``count`` 0 and NaN means.
    """
    p, t = _check(probs, targets)
    idx = _bin_index(p, n_bins)
    num_labels = p.shape[1]
    count = np.zeros((num_labels, n_bins))
    sum_p = np.zeros((num_labels, n_bins))
    sum_y = np.zeros((num_labels, n_bins))
    for j in range(num_labels):
        count[j] = np.bincount(idx[:, j], minlength=n_bins)
        sum_p[j] = np.bincount(idx[:, j], weights=p[:, j], minlength=n_bins)
        sum_y[j] = np.bincount(idx[:, j], weights=t[:, j], minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_p = np.where(count > 0, sum_p / count, np.nan)
        frac = np.where(count > 0, sum_y / count, np.nan)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    return {"count": count, "mean_prob": mean_p, "frac_pos": frac, "edges": edges}


def expected_calibration_error(probs: Any, targets: Any, n_bins: int = DEFAULT_BINS) -> np.ndarray:
    """``(L,)`` ECE of each label with ``n_bins`` equal-width bins (see the module docstring)."""
    p, t = _check(probs, targets)
    _check_bins(n_bins)
    # One row per label: torch's bucketize copies non-contiguous inputs (and warns).
    scores = torch.from_numpy(np.ascontiguousarray(_below_one(p).T))
    outcomes = torch.from_numpy(np.ascontiguousarray(t.T, dtype=np.int64))
    return np.array([binary_calibration_error(s, y, n_bins=n_bins, norm="l1").item() for s, y in zip(scores, outcomes)])


def brier_score(probs: Any, targets: Any) -> np.ndarray:
    """``(L,)`` Brier score of each label: ``mean((p - y) ** 2)`` (sklearn ``brier_score_loss``)."""
    p, t = _check(probs, targets)
    return ((p - t) ** 2).mean(axis=0)


def calibration_table(
    probs: Any, targets: Any, label_names: Sequence[str] | None = None, n_bins: int = DEFAULT_BINS
) -> pd.DataFrame:
    """Per-label ``ece``, ``brier``, ``positives``, ``mean_prob``, ``prevalence``, plus a ``macro`` row (means)."""
    p, t = _check(probs, targets)
    names = list(label_names) if label_names is not None else [f"label_{j}" for j in range(p.shape[1])]
    if len(names) != p.shape[1]:
        raise ValueError(f"{len(names)} label names for {p.shape[1]} labels")
    frame = pd.DataFrame(
        {
            "ece": expected_calibration_error(p, t, n_bins),
            "brier": brier_score(p, t),
            "positives": t.sum(axis=0).astype(np.int64),
            "mean_prob": p.mean(axis=0),
            "prevalence": t.mean(axis=0),
        },
        index=pd.Index(names, name="label"),
    )
    macro = frame[["ece", "brier", "mean_prob", "prevalence"]].mean()
    frame.loc["macro"] = [macro["ece"], macro["brier"], int(frame["positives"].sum()), macro["mean_prob"], macro["prevalence"]]
    frame["positives"] = frame["positives"].astype(np.int64)
    return frame


def reliability_diagram(
    probs: Any,
    targets: Any,
    label_names: Sequence[str] | None,
    path: str | Path,
    n_bins: int = DEFAULT_BINS,
    ncols: int = 5,
    title: str | None = None,
    dpi: int = 120,
    scaled_probs: Any = None,
    temperature: float | None = None,
) -> Path:
    """Save a grid of reliability diagrams (one panel per label) as a PNG; returns the path.

    Each panel: observed fraction of positives against mean predicted probability per non-empty
    equal-width bin (points joined by a line, marker area ~ bin count), the diagonal of perfect
    calibration, a histogram of the predictions (log scale, lower third of the panel) and the label's ECE.
    With ``scaled_probs`` (the same predictions after temperature scaling) each panel also shows
    the curve after scaling and both ECEs; the legend says which is which.
    Renders with matplotlib's Agg canvas (no display needed; pyplot's state is not touched).
    """
    # The object-oriented API with an Agg canvas: no display, and pyplot's global backend and
    # figure list are left alone.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    p, t = _check(probs, targets)
    num_labels = p.shape[1]
    names = list(label_names) if label_names is not None else [f"label_{j}" for j in range(num_labels)]
    if len(names) != num_labels:
        raise ValueError(f"{len(names)} label names for {num_labels} labels")
    curve = reliability_curve(p, t, n_bins)
    ece = expected_calibration_error(p, t, n_bins)
    scaled = None
    if scaled_probs is not None:
        scaled_p, _ = _check(scaled_probs, t)
        scaled = (reliability_curve(scaled_p, t, n_bins), expected_calibration_error(scaled_p, t, n_bins))
    before_label = "before temperature scaling" if scaled is not None else "model"
    after_label = f"after temperature scaling (T = {temperature:.3f})" if temperature is not None else "after temperature scaling"
    ncols = max(1, min(ncols, num_labels))
    nrows = math.ceil(num_labels / ncols)
    # Fixed margins (in inches, so any grid size reads the same): a constrained layout looked the
    # same and took two thirds of the drawing time, measuring every tick label of 30 axes.
    width, height = 3.2 * ncols, 3.0 * nrows + 0.5
    fig = Figure(figsize=(width, height))
    fig.subplots_adjust(left=0.55 / width, right=1 - 0.15 / width, bottom=0.5 / height, top=1 - 0.75 / height,
                        wspace=0.3, hspace=0.45)  # fmt: skip
    FigureCanvasAgg(fig)
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    centers = 0.5 * (curve["edges"][:-1] + curve["edges"][1:])
    for j, ax in enumerate(axes):
        if j >= num_labels:
            ax.set_visible(False)
            continue
        count = curve["count"][j]
        ok = count > 0
        # Histogram of the predictions on a log axis, its tallest bar at ~1/3 of the panel height.
        hist = ax.twinx()
        hist.bar(centers[ok], count[ok], width=1.0 / n_bins, color="0.88", zorder=0)
        hist.set_yscale("log")
        hist.set_ylim(0.8, max(count.max(), 2.0) ** 3)
        hist.set_yticks([])
        hist.minorticks_off()
        ax.set_zorder(hist.get_zorder() + 1)
        ax.patch.set_visible(False)
        ax.plot([0, 1], [0, 1], ls="--", color="0.5", lw=1, label="perfect calibration")
        ax.plot(curve["mean_prob"][j][ok], curve["frac_pos"][j][ok], color="C0", lw=1.2, marker="o", ms=3, label=before_label)
        ax.scatter(curve["mean_prob"][j][ok], curve["frac_pos"][j][ok], s=8 + 40 * count[ok] / count.max(), color="C0")
        panel_title = f"{names[j]}  ECE {ece[j]:.3f}"
        if scaled is not None:
            after, after_ece = scaled
            shown = after["count"][j] > 0
            ax.plot(after["mean_prob"][j][shown], after["frac_pos"][j][shown], color="C1", lw=1.2, marker="s", ms=3, label=after_label)
            panel_title += f" -> {after_ece[j]:.3f}"
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_title(panel_title, fontsize=9)
        if j == 0:
            # An explicit patch: an empty bar() gives the legend the colour cycle's blue, not the bars' grey.
            handles = [*ax.get_legend_handles_labels()[0], Patch(facecolor="0.88", label="predictions per bin (log)")]
            ax.legend(handles=handles, fontsize=6, loc="upper left")
        ax.tick_params(labelsize=7)
        if j % ncols == 0:
            ax.set_ylabel("fraction positive", fontsize=8)
        if j >= num_labels - ncols:
            ax.set_xlabel("mean predicted", fontsize=8)
    if title:
        fig.suptitle(title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, format="png")
    return path


def _to_logits(values: Any, kind: str) -> np.ndarray:
    if hasattr(values, "detach"):
        values = values.detach().float().cpu().numpy()
    v = np.asarray(values, dtype=np.float64)
    if not np.isfinite(v).all():
        raise ValueError("inputs contain NaN or inf")
    if kind == "auto":
        kind = "probs" if v.size and v.min() >= 0.0 and v.max() <= 1.0 else "logits"
    if kind == "probs":
        if v.size and (v.min() < 0 or v.max() > 1):
            raise ValueError("probabilities must be in [0, 1]")
        return logit(np.clip(v, EPS, 1.0 - EPS))
    if kind == "logits":
        return v
    raise ValueError(f"kind must be 'auto', 'logits' or 'probs'; got {kind!r}")


def _mean_bce(z: np.ndarray, y: np.ndarray, temperature: float) -> float:
    s = z / temperature
    # -[y log sigmoid(s) + (1 - y) log sigmoid(-s)], stable for any s.
    return float(-(y * log_expit(s) + (1.0 - y) * log_expit(-s)).mean())


def fit_temperature(
    logits_or_probs_val: Any,
    targets_val: Any,
    kind: str = "auto",
    bounds: tuple[float, float] = (0.05, 20.0),
) -> float:
    """One temperature ``T > 0`` minimising the validation BCE of ``sigmoid(logit / T)`` over all labels.

    Args:
        logits_or_probs_val: ``(N, L)`` (or ``(N,)``) validation logits or probabilities. Fit on
            validation predictions only, never on the test set you report.
        targets_val: the matching 0/1 targets.
        kind: ``"logits"``, ``"probs"`` (converted with ``logit(clip(p, 1e-12, 1 - 1e-12))``) or
            ``"auto"``: probabilities iff every value lies in ``[0, 1]`` (logits that all happen
            to lie there would be misread; pass ``kind`` explicitly when in doubt).
        bounds: search interval of ``T``. The objective is minimised over ``log T`` with scipy's
            bounded Brent method (it is smooth and, for non-degenerate data, unimodal in ``log T``).

    Returns ``T`` as a float: ``T > 1`` softens over-confident predictions, ``T < 1`` sharpens.
    """
    z = _to_logits(logits_or_probs_val, kind)
    y = np.asarray(targets_val.detach().cpu().numpy() if hasattr(targets_val, "detach") else targets_val, dtype=np.float64)
    if z.shape != y.shape:
        raise ValueError(f"inputs {z.shape} and targets {y.shape} differ in shape")
    if z.size == 0:
        raise ValueError("no predictions")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("targets must be 0/1")
    lo, hi = bounds
    if not 0 < lo < hi:
        raise ValueError(f"bounds must satisfy 0 < low < high; got {bounds}")
    res = minimize_scalar(
        lambda log_t: _mean_bce(z, y, math.exp(log_t)),
        bounds=(math.log(lo), math.log(hi)),
        method="bounded",
        options={"xatol": 1e-7},
    )
    return float(math.exp(res.x))


def apply_temperature(probs: Any, temperature: float) -> np.ndarray:
    """``sigmoid(logit(p) / T)`` for probabilities ``p`` (clipped to ``[1e-12, 1 - 1e-12]`` first); numpy out.

    Logits ``z`` need no helper: the calibrated probability is ``sigmoid(z / T)``.
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be positive; got {temperature}")
    z = _to_logits(probs, "probs")
    return expit(z / float(temperature))
