"""Whole-set evaluation for multi-label chest X-ray classification.

Everything here works on the predictions of a whole split at once (not on per-batch averages),
because the paper's numbers are sklearn scores over the full validation / test set and F1-optimal
thresholds need every prediction of a label.

* :class:`PredictionCollector` gathers ``probs``/``targets``/``indices`` over an epoch (and over DDP
  ranks), dropping the samples a ``DistributedSampler`` repeats to pad the last batch.
* :func:`best_f1_thresholds` picks, per label, the threshold that maximises F1.
* :func:`classification_metrics` computes the paper's macro metrics, the 14-finding AUROC, exact
  match and per-label values.
* :func:`format_metrics_table` / :func:`per_label_table` turn results into markdown / a DataFrame.

Definitions follow sklearn (``average="macro"``, ``zero_division=0``, ``roc_auc_score``) with one
deliberate difference: a label whose targets hold a single class has an undefined AUROC. Here it
is ``NaN``, left out of the AUROC means, and a warning names it; sklearn's ``roc_auc_score``
raises (older versions) or returns ``NaN`` for the label and so also for the macro mean (1.9).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, Literal, NamedTuple, get_args

import pandas as pd
import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.functional.classification import (
    binary_auroc,
    multilabel_auroc,
    multilabel_exact_match,
    multilabel_f1_score,
    multilabel_precision,
    multilabel_recall,
)
from torchmetrics.utilities.data import dim_zero_cat

from cxr_lightning.data.labels import NO_FINDING

__all__ = [
    "EpochPredictions",
    "PredictionCollector",
    "best_f1_thresholds",
    "classification_metrics",
    "format_metrics_table",
    "per_label_table",
    "MACRO_METRICS",
    "NO_SAMPLES_WARNING",
    "PER_LABEL_COLUMNS",
    "THRESHOLD_RULES",
    "ThresholdRule",
]

#: The whole-set scalar metrics of :func:`classification_metrics`, in table order.
MACRO_METRICS: tuple[str, ...] = (
    "auroc_macro",
    "auroc_findings",
    "f1_macro",
    "precision_macro",
    "recall_macro",
    "exact_match",
)

#: The per-label fields of :func:`classification_metrics`, in column order.
PER_LABEL_COLUMNS: tuple[str, ...] = ("auroc", "f1", "precision", "recall", "threshold", "positives")

#: Threshold returned for a label without positives, where F1 is undefined.
NO_POSITIVES_THRESHOLD = 0.5

#: Start of the warning :func:`classification_metrics` gives for zero samples.
NO_SAMPLES_WARNING = "no samples to score"


class EpochPredictions(NamedTuple):
    """One split's predictions, one row per distinct sample, in ascending ``indices`` order.

    ``probs``: ``(N, L)`` float32; ``targets``: ``(N, L)`` int64 0/1; ``indices``: ``(N,)`` int64.
    """

    probs: Tensor
    targets: Tensor
    indices: Tensor


class PredictionCollector(Metric):
    """Collect an epoch's ``probs (B, L)``, ``targets (B, L)`` and dataset ``indices (B,)``.

    States are lists reduced with ``"cat"``, so after a DDP sync every rank holds all ranks' samples.
    :meth:`compute` returns :class:`EpochPredictions` sorted by index with duplicate indices removed:
    a ``DistributedSampler`` pads the dataset by repeating samples so that every rank gets the same
    count, and those repeats must not be scored twice.

    Use it with explicit ``update()`` / ``compute()`` / ``reset()``; its result is not a scalar, so it
    cannot be passed to ``LightningModule.log``.

    Args:
        num_labels: if given, ``update`` checks ``probs.shape[1]`` against it and an empty
            ``compute`` returns ``(0, num_labels)`` tensors.
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = None

    probs: list[Tensor] | Tensor
    targets: list[Tensor] | Tensor
    indices: list[Tensor] | Tensor

    def __init__(self, num_labels: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.num_labels = num_labels
        self.add_state("probs", default=[], dist_reduce_fx="cat")
        self.add_state("targets", default=[], dist_reduce_fx="cat")
        self.add_state("indices", default=[], dist_reduce_fx="cat")

    def update(self, probs: Tensor, targets: Tensor, indices: Tensor) -> None:
        """Append one batch: ``probs (B, L)`` in [0, 1], ``targets (B, L)`` 0/1, ``indices (B,)`` int."""
        if probs.ndim != 2 or targets.shape != probs.shape:
            raise ValueError(f"probs and targets must both be (B, L); got {tuple(probs.shape)} and {tuple(targets.shape)}")
        if indices.shape != probs.shape[:1]:
            raise ValueError(f"indices must be (B,) = ({probs.shape[0]},); got {tuple(indices.shape)}")
        if self.num_labels is not None and probs.shape[1] != self.num_labels:
            raise ValueError(f"expected {self.num_labels} labels, got probs of shape {tuple(probs.shape)}")
        if indices.is_floating_point():
            raise TypeError(f"indices must be an integer tensor, got {indices.dtype}")
        # One fixed dtype keeps the all_gather across ranks consistent. (The fusion head already
        # computes float32 logits under bf16 autocast, so the probabilities carry no bf16 ties.)
        self.probs.append(probs.detach().to(torch.float32))
        self.targets.append(targets.detach().to(torch.int64))
        self.indices.append(indices.detach().to(torch.int64))

    def compute(self) -> EpochPredictions:
        """All collected samples once each, ascending by index (first occurrence of a repeat kept)."""
        # After a DDP sync the states are already concatenated tensors; before it (single process)
        # they are lists. dim_zero_cat accepts both. It raises on an empty list, hence the guard.
        if isinstance(self.indices, list) and len(self.indices) == 0:
            return self._empty()
        # The casts matter only after a sync in which some rank had no data: torchmetrics then
        # contributes an empty float tensor, and torch.cat's type promotion would make all float.
        probs = dim_zero_cat(self.probs).to(torch.float32)
        targets = dim_zero_cat(self.targets).to(torch.int64)
        indices = dim_zero_cat(self.indices).to(torch.int64)
        if indices.numel() == 0:
            return self._empty()
        unique, inverse = torch.unique(indices, sorted=True, return_inverse=True)
        # First position of every distinct index: a deterministic pick among the repeats (which are
        # the same image, so their predictions agree up to kernel nondeterminism).
        positions = torch.arange(indices.numel(), device=indices.device)
        first = torch.full_like(unique, indices.numel()).scatter_reduce_(0, inverse, positions, reduce="amin")
        # On the CPU for every consumer (thresholds, metrics, CSVs, plots): the states sit on the
        # model's device, and numpy() of a CUDA tensor fails.
        return EpochPredictions(probs[first].cpu(), targets[first].cpu(), unique.cpu())

    def _empty(self) -> EpochPredictions:
        width = self.num_labels or 0
        return EpochPredictions(
            torch.empty(0, width, dtype=torch.float32),
            torch.empty(0, width, dtype=torch.int64),
            torch.empty(0, dtype=torch.int64),
        )


#: How a threshold is placed in the F1-maximising gap between two validation scores.
ThresholdRule = Literal["score", "midpoint"]
THRESHOLD_RULES: tuple[str, ...] = get_args(ThresholdRule)


def best_f1_thresholds(probs: Tensor, targets: Tensor, rule: ThresholdRule = "score") -> Tensor:
    """Per-label F1-maximising threshold, for predictions ``probs >= threshold``.

    Args:
        probs: ``(N, L)`` scores.
        targets: ``(N, L)`` 0/1.
        rule: ``score`` (the paper's code): the lowest validation score predicted positive at the
            best cut. ``midpoint``: halfway between that score and the next lower validation score,
            the same cut on validation but not sitting on a validation image's score, so a test
            image scored a little below it is not lost (on a small validation set the ``score``
            threshold is as high as the cut allows). A best cut at the lowest score keeps that score.

    Returns:
        ``(L,)`` thresholds, dtype of ``probs``; with ``score``, each is one of that label's predicted
        scores (the candidates of sklearn ``precision_recall_curve``). Among thresholds with equal
        maximal F1 the LARGEST cut is taken (fewest positive predictions). A label without positives
        gets ``0.5`` (F1 is 0 for every threshold there).

    One sort per label, O(N log N); ties in scores are handled by scoring only the last position of
    each run of equal scores, i.e. the cut that includes every sample with that score.
    """
    if probs.ndim != 2 or targets.shape != probs.shape:
        raise ValueError(f"probs and targets must both be (N, L); got {tuple(probs.shape)} and {tuple(targets.shape)}")
    n, num_labels = probs.shape
    if n == 0:
        return torch.full((num_labels,), NO_POSITIVES_THRESHOLD, dtype=probs.dtype, device=probs.device)
    if not torch.isfinite(probs).all():
        raise ValueError("probs contains NaN or inf")
    sorted_probs, order = torch.sort(probs, dim=0, descending=True)
    sorted_targets = torch.gather(targets.to(torch.float64), 0, order)
    # Position i (0-based) predicts the top i+1 scores as positive: tp = cumsum, tp + fp = i + 1.
    tp = torch.cumsum(sorted_targets, dim=0)
    positives = tp[-1]  # (L,)
    predicted = torch.arange(1, n + 1, dtype=torch.float64, device=probs.device).unsqueeze(1)
    # F1 = 2tp / (2tp + fp + fn) = 2tp / (predicted + positives): exact integers divided once, so
    # equal F1 values compare equal exactly and tie-breaking is well defined.
    f1 = 2.0 * tp / (predicted + positives)
    # Only the last element of a run of equal scores is a reachable cut: `>= threshold` takes the
    # whole run. The last row always is.
    run_end = torch.ones_like(sorted_probs, dtype=torch.bool)
    run_end[:-1] = sorted_probs[:-1] != sorted_probs[1:]
    f1 = torch.where(run_end, f1, torch.full_like(f1, -1.0))
    # argmax returns the first maximum; scores are descending, so that is the largest threshold.
    best = torch.argmax(f1, dim=0)  # (L,)
    thresholds = sorted_probs.gather(0, best.unsqueeze(0)).squeeze(0)
    if rule == "midpoint":
        # best is the last of its run of equal scores, so best + 1 holds the next lower score.
        below = sorted_probs.gather(0, torch.clamp(best + 1, max=n - 1).unsqueeze(0)).squeeze(0)
        thresholds = torch.where(best + 1 < n, (thresholds + below) / 2, thresholds)
    elif rule != "score":
        raise ValueError(f"threshold rule {rule!r}: use one of {', '.join(THRESHOLD_RULES)}")
    return torch.where(positives > 0, thresholds, torch.full_like(thresholds, NO_POSITIVES_THRESHOLD))


def _single_class_labels(targets: Tensor) -> Tensor:
    """``(L,)`` bool: the labels whose targets are all 0 or all 1 (AUROC undefined)."""
    positives = targets.sum(0)
    return (positives == 0) | (positives == targets.shape[0])


def classification_metrics(
    probs: Tensor,
    targets: Tensor,
    thresholds: Tensor | float | Sequence[float],
    label_names: Sequence[str],
    no_finding: str | None = NO_FINDING,
) -> dict[str, Any]:
    """Whole-set metrics of ``probs (N, L)`` against ``targets (N, L)`` 0/1.

    Args:
        probs: ``(N, L)`` probabilities.
        targets: ``(N, L)`` 0/1.
        thresholds: a scalar or ``(L,)``; a label is predicted when ``prob >= threshold``.
        label_names: the ``L`` column names.
        no_finding: the label left out of ``auroc_findings`` (``None``: leave none out).

    Returns:
        ``recall_macro``, ``precision_macro``, ``f1_macro`` (unweighted means over all ``L`` labels,
        ``zero_division=0``, as sklearn ``average="macro"``), ``auroc_macro`` (mean AUROC over the
        labels where it is defined), ``auroc_findings`` (the same without ``no_finding``),
        ``exact_match`` (fraction of samples with all ``L`` labels right) and ``per_label``
        (``{name: {auroc, f1, precision, recall, threshold, positives}}``); plain Python numbers.

    A label whose targets are a single class gets AUROC ``NaN`` and a ``UserWarning`` naming it,
    and is left out of the AUROC means (sklearn's macro ``roc_auc_score`` raises or is ``NaN``).
    Zero samples (``N == 0``) give every metric ``NaN`` and a ``UserWarning``.
    """
    if probs.ndim != 2 or targets.shape != probs.shape:
        raise ValueError(f"probs and targets must both be (N, L); got {tuple(probs.shape)} and {tuple(targets.shape)}")
    num_labels = probs.shape[1]
    label_names = list(label_names)
    if len(label_names) != num_labels:
        raise ValueError(f"{len(label_names)} label names for {num_labels} columns")
    # float64 for the comparison so that a Python-float threshold such as 0.3 means the same as
    # in numpy/sklearn; probs values themselves are unchanged by the cast.
    probs = probs.detach().to(torch.float64)
    targets = targets.detach().to(torch.int64)
    thr = torch.as_tensor(thresholds, dtype=torch.float64, device=probs.device)
    thr = thr.expand(num_labels) if thr.ndim == 0 else thr
    if thr.shape != (num_labels,):
        raise ValueError(f"thresholds must be a scalar or ({num_labels},); got {tuple(thr.shape)}")
    if probs.shape[0] == 0:
        return _no_samples_metrics(label_names, thr)
    # torchmetrics' multilabel functions take one scalar threshold (and sigmoid scores outside
    # [0, 1]); passing already-binarised integer predictions bypasses both.
    preds = (probs >= thr).to(torch.int64)

    # average="none" and our own mean: the macro mean over ALL labels, zero-division labels
    # counting as 0, exactly like sklearn average="macro", zero_division=0.
    precision = multilabel_precision(preds, targets, num_labels, average="none", zero_division=0).double()
    recall = multilabel_recall(preds, targets, num_labels, average="none", zero_division=0).double()
    f1 = multilabel_f1_score(preds, targets, num_labels, average="none", zero_division=0).double()
    exact_match = multilabel_exact_match(preds, targets, num_labels)

    undefined = _single_class_labels(targets)
    auroc = torch.full((num_labels,), math.nan, dtype=torch.float64, device=probs.device)
    if (~undefined).any():
        # Only the defined labels go to torchmetrics, which would otherwise warn and return 0 for
        # the others. thresholds=None: exact AUROC over all distinct scores, like sklearn.
        defined = int((~undefined).sum())
        if defined == 1:  # torchmetrics' multilabel functions need at least two labels
            auroc[~undefined] = binary_auroc(probs[:, ~undefined][:, 0], targets[:, ~undefined][:, 0], thresholds=None).double()
        else:
            auroc[~undefined] = multilabel_auroc(
                probs[:, ~undefined], targets[:, ~undefined], defined, average="none", thresholds=None
            ).double()
    if undefined.any():
        names = [name for name, bad in zip(label_names, undefined.tolist()) if bad]
        warnings.warn(
            f"AUROC is undefined for label(s) {names}: their targets hold a single class; "
            "reporting NaN and leaving them out of the AUROC means",
            UserWarning,
            stacklevel=2,
        )
    findings = torch.tensor([name != no_finding for name in label_names], device=probs.device)

    def nanmean(values: Tensor) -> float:
        values = values[~torch.isnan(values)]
        return float(values.mean()) if values.numel() else math.nan

    positives = targets.sum(0)
    per_label = {
        name: {
            "auroc": float(auroc[i]),
            "f1": float(f1[i]),
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "threshold": float(thr[i]),
            "positives": int(positives[i]),
        }
        for i, name in enumerate(label_names)
    }
    return {
        "recall_macro": float(recall.mean()),
        "precision_macro": float(precision.mean()),
        "f1_macro": float(f1.mean()),
        "auroc_macro": nanmean(auroc),
        "auroc_findings": nanmean(auroc[findings]),
        "exact_match": float(exact_match),
        "per_label": per_label,
    }


def _no_samples_metrics(label_names: list[str], thresholds: Tensor) -> dict[str, Any]:
    """:func:`classification_metrics` of zero samples: every score NaN (undefined, not 0), with a warning.

    torchmetrics cannot score an empty set (it fails on a reshape); an evaluation whose every
    image was unreadable and skipped has one, and must report it instead of crashing.
    """
    warnings.warn(f"{NO_SAMPLES_WARNING}: every metric is NaN", UserWarning, stacklevel=3)
    undefined = {"auroc": math.nan, "f1": math.nan, "precision": math.nan, "recall": math.nan}
    per_label = {name: {**undefined, "threshold": float(t), "positives": 0} for name, t in zip(label_names, thresholds.tolist())}
    return {**{name: math.nan for name in MACRO_METRICS}, "per_label": per_label}


def format_metrics_table(metrics_by_name: Mapping[str, Mapping[str, Any]], digits: int = 4) -> str:
    """Markdown table of :data:`MACRO_METRICS` (rows) for each named result (columns).

    Example: ``format_metrics_table({"threshold 0.5": m1, "tuned": m2})``. Missing values print ``-``.
    """
    names = list(metrics_by_name)
    lines = [
        "| metric | " + " | ".join(names) + " |",
        "|---|" + "---:|" * len(names),
    ]
    for key in MACRO_METRICS:
        cells = []
        for name in names:
            value = metrics_by_name[name].get(key)
            cells.append("-" if value is None else f"{value:.{digits}f}")
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def per_label_table(metrics: Mapping[str, Any]) -> pd.DataFrame:
    """One row per label (index ``label``, in label order) with :data:`PER_LABEL_COLUMNS`."""
    frame = pd.DataFrame.from_dict(metrics["per_label"], orient="index", columns=list(PER_LABEL_COLUMNS))
    frame.index.name = "label"
    return frame.astype({"positives": "int64"})
