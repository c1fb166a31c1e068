"""Over-sampling of images with rare findings (a sampler-level alternative to loss re-weighting).

* :func:`rare_finding_weights` gives every training image a sampling weight from the frequency of
  its RAREST positive finding.
* :class:`RareFindingSampler` draws an epoch's indices with probability proportional to those
  weights (with replacement by default), deterministically from ``(seed, epoch)``, and shards the
  draw over DDP processes.

Weight definition
-----------------
With ``N`` images and ``n_l`` positives of finding ``l``, the finding's weight is
``(N / n_l) ** power`` (``power="inverse"`` means 1: inverse frequency; the default 0.5 is the
gentler square root, which over-samples Hernia (~0.2 % of NIH) ~22x rather than ~500x). An image's
weight is the largest weight among its positive findings, i.e. that of its rarest finding. Images
with no positive finding (``No Finding`` images, or all-zero rows) get the **base weight**: by
default the weight ``No Finding`` itself would get, ``(N / n_no_finding) ** power`` where
``n_no_finding`` counts those images, so that they are treated like one more label; pass
``base_weight`` to set it. ``max_ratio`` optionally caps every weight at ``max_ratio`` times the base
weight. Weights are returned normalised to mean 1 (only ratios matter to the sampler).

The ``No Finding`` column, if present, is never a "finding": it is identified by name from
``label_names`` (default: the 15 NIH labels when ``L == 15``) or given as ``no_finding_index``.

DDP and Lightning
-----------------
Every process draws the same global sequence of ``num_replicas * ceil(num_samples / num_replicas)``
indices from ``torch.Generator().manual_seed(seed + epoch)`` and keeps ``sequence[rank::num_replicas]``,
so the ranks' shards are disjoint slices of one draw that together are exactly that draw.
The class subclasses ``DistributedSampler`` so that Lightning (``use_distributed_sampler=True``, the
default) keeps it as it is instead of wrapping it in another distributed sampler; Lightning calls
:meth:`RareFindingSampler.set_epoch` at the start of each epoch. Without an initialised process
group, ``num_replicas=1, rank=0``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler

from cxr_lightning.data.labels import LABELS, NO_FINDING
from cxr_lightning.data.loading import ResumableMixin, tag_repeats

__all__ = ["rare_finding_weights", "RareFindingSampler"]


def _no_finding_index(num_labels: int, label_names: Sequence[str] | None, no_finding_index: int | None) -> int | None:
    if no_finding_index is not None:
        if not 0 <= no_finding_index < num_labels:
            raise ValueError(f"no_finding_index {no_finding_index} out of range for {num_labels} labels")
        return int(no_finding_index)
    if label_names is None and num_labels == len(LABELS):
        label_names = LABELS
    if label_names is None:
        return None
    names = list(label_names)
    if len(names) != num_labels:
        raise ValueError(f"{len(names)} label names for {num_labels} labels")
    return names.index(NO_FINDING) if NO_FINDING in names else None


def rare_finding_weights(
    labels: Any,
    power: float | str = 0.5,
    label_names: Sequence[str] | None = None,
    no_finding_index: int | None = None,
    base_weight: float | None = None,
    max_ratio: float | None = None,
) -> np.ndarray:
    """Per-image sampling weights ``(N,)`` float64 (mean 1) from each image's rarest positive finding.

    Args:
        labels: ``(N, L)`` 0/1 (uint8, bool, int; numpy or torch).
        power: exponent of the inverse frequency, or ``"inverse"`` (= 1). 0 gives uniform weights.
        label_names / no_finding_index: locate the ``No Finding`` column (see the module docstring).
        base_weight: weight of images without a positive finding, on the same scale as
            ``(N / n_l) ** power`` (default: ``No Finding``'s own ``(N / n_nf) ** power``).
        max_ratio: cap each weight at ``max_ratio * base_weight`` (``None``: no cap).
    """
    if hasattr(labels, "detach"):
        labels = labels.detach().cpu().numpy()
    y = np.asarray(labels)
    if y.ndim != 2 or y.shape[0] == 0:
        raise ValueError(f"labels must be a non-empty (N, L) matrix; got shape {y.shape}")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0/1")
    y = y.astype(bool)
    if power == "inverse":
        power = 1.0
    if isinstance(power, str) or not float(power) >= 0:
        raise ValueError(f"power must be a non-negative number or 'inverse'; got {power!r}")
    power = float(power)
    n, num_labels = y.shape
    nf = _no_finding_index(num_labels, label_names, no_finding_index)
    findings = np.array([j for j in range(num_labels) if j != nf], dtype=np.int64)
    yf = y[:, findings]
    positives = yf.sum(axis=0)
    with np.errstate(divide="ignore"):
        label_weight = np.where(positives > 0, (n / np.maximum(positives, 1)) ** power, 0.0)
    # Rarest positive finding = largest label weight among the image's positives.
    image_weight = (yf * label_weight[None, :]).max(axis=1) if findings.size else np.zeros(n)
    without = ~yf.any(axis=1)
    if base_weight is None:
        count = int(without.sum())
        base_weight = (n / count) ** power if count else 1.0
    if not base_weight > 0:
        raise ValueError(f"base_weight must be positive; got {base_weight}")
    image_weight = np.where(without, float(base_weight), image_weight)
    if max_ratio is not None:
        if not max_ratio > 0:
            raise ValueError(f"max_ratio must be positive; got {max_ratio}")
        image_weight = np.minimum(image_weight, max_ratio * float(base_weight))
    return image_weight / image_weight.mean()


class RareFindingSampler(ResumableMixin, DistributedSampler):
    """Weighted random sampling, deterministic per ``(seed, epoch)``, sharded over DDP ranks.

    Args:
        weights: ``(N,)`` non-negative sampling weights (e.g. :func:`rare_finding_weights`).
        num_samples: indices drawn per epoch over ALL ranks (default ``N``); each rank yields
            ``ceil(num_samples / num_replicas)`` (the global draw is rounded up so every rank gets
            the same number, like ``DistributedSampler``).
        replacement: draw with replacement (default). Without, ``num_samples`` must not exceed the
            number of positive weights.
        seed: the epoch's generator is seeded with ``seed + epoch``.
        num_replicas, rank: default from ``torch.distributed`` when initialised, else 1 and 0.
        epoch_tensor: optional shared tensor that :meth:`set_epoch` fills with the epoch (as
            :class:`cxr_lightning.data.loading.ResumableSampler` does for worker processes).

    :meth:`skip` drops the first samples of the next pass of this rank (mid-epoch resume), like
    ``ResumableSampler``.
    """

    def __init__(
        self,
        weights: Any,
        num_samples: int | None = None,
        replacement: bool = True,
        seed: int = 0,
        num_replicas: int | None = None,
        rank: int | None = None,
        epoch_tensor: torch.Tensor | None = None,
    ):
        if hasattr(weights, "detach"):
            weights = weights.detach().cpu().numpy()
        w = torch.as_tensor(np.asarray(weights, dtype=np.float64))
        if w.ndim != 1 or w.numel() == 0:
            raise ValueError(f"weights must be a non-empty 1-d sequence; got shape {tuple(w.shape)}")
        if not torch.isfinite(w).all() or (w < 0).any() or not (w > 0).any():
            raise ValueError("weights must be finite, non-negative and not all zero")
        if num_replicas is None:
            num_replicas = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        if rank is None:
            rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        # DistributedSampler's bookkeeping (epoch, seed, rank, num_replicas); its sizes are replaced.
        super().__init__(w, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=False)
        self.weights = w
        self.replacement = bool(replacement)
        total = len(w) if num_samples is None else int(num_samples)
        if total < 1:
            raise ValueError(f"num_samples must be positive; got {total}")
        self.num_samples = -(-total // self.num_replicas)  # per rank
        self.total_size = self.num_samples * self.num_replicas
        if not self.replacement and self.total_size > int((w > 0).sum()):
            raise ValueError(
                f"without replacement at most {int((w > 0).sum())} samples can be drawn; "
                f"asked {self.total_size} ({self.num_replicas} ranks x {self.num_samples})"
            )
        self.epoch_tensor = epoch_tensor
        self._skip = 0

    def global_indices(self, epoch: int | None = None) -> torch.Tensor:
        """The epoch's whole draw (``total_size`` indices), identical on every rank."""
        epoch = self.epoch if epoch is None else int(epoch)
        generator = torch.Generator().manual_seed(int(self.seed) + epoch)
        return torch.multinomial(self.weights, self.total_size, self.replacement, generator=generator)

    def __iter__(self) -> Iterator[int]:
        # Repeats are tagged (see tag_repeats): the dataset reads index % N and seeds each draw apart.
        tagged = tag_repeats(self.global_indices(), len(self.weights))
        shard = tagged[self.rank : self.total_size : self.num_replicas].tolist()
        start, self._skip = self._skip, 0
        return iter(shard[start:])

    def __len__(self) -> int:
        return self.num_samples

    @classmethod
    def from_labels(
        cls, labels: Any, power: float | str = 0.5, label_names: Sequence[str] | None = None, **kwargs
    ) -> RareFindingSampler:
        """:func:`rare_finding_weights` of ``labels`` (``power``, ``label_names``) wrapped in a sampler;
        other keyword arguments go to the weights (``no_finding_index``, ``base_weight``,
        ``max_ratio``) or the sampler (the rest)."""
        weight_keys = {"no_finding_index", "base_weight", "max_ratio"}
        weight_kwargs = {k: kwargs.pop(k) for k in list(kwargs) if k in weight_keys}
        return cls(rare_finding_weights(labels, power, label_names, **weight_kwargs), **kwargs)
