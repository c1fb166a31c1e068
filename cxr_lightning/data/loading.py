"""Resumable, deterministic training batches.

A training run that is killed mid-epoch and resumed with ``fit --ckpt_path last`` must see
the same batches, with the same augmentation, as a run that never stopped:

* :class:`ResumableSampler` draws each epoch's order from ``(seed, epoch)`` only, shards it across
  processes like ``DistributedSampler`` (so Lightning keeps it as it is), publishes the epoch
  to the dataset through shared memory (read by DataLoader workers), and can skip the samples
  a checkpoint says were already used.
* :class:`ResumableDataLoader` is a ``DataLoader`` with ``state_dict``/``load_state_dict``, which
  Lightning saves in every checkpoint and restores on resume; its state is the number of batches
  of the current epoch that training has processed.
* the dataset seeds each sample's augmentation from ``(seed, epoch, index)``, so it does not
  depend on worker processes, prefetching or the interruption.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch.utils.data import DataLoader, DistributedSampler
from torch.utils.data._utils.collate import default_collate


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A distinct 63-bit seed per (run seed, epoch, sample)."""
    return (seed * 1_000_003 + epoch * 2_147_483_659 + index * 97) % (2**63 - 1)


def tag_repeats(draw: torch.Tensor, size: int) -> torch.Tensor:
    """``draw`` with the k-th repeat (k = 0, 1, ...) of a dataset position p written as ``p + k * size``.

    A sampler with replacement draws some images several times an epoch. Datasets read the image
    at ``index % size`` and seed its augmentation with the whole index, so every draw of an image
    gets its own augmentation. A draw without repeats is returned unchanged.
    """
    draw = torch.as_tensor(draw, dtype=torch.int64)
    if draw.numel() == 0:
        return draw.clone()
    order = torch.sort(draw, stable=True).indices
    ordered = draw[order]
    starts = torch.ones_like(ordered, dtype=torch.bool)
    starts[1:] = ordered[1:] != ordered[:-1]
    first = torch.cummax(torch.where(starts, torch.arange(len(draw)), torch.zeros_like(draw)), dim=0).values
    repeat = torch.empty_like(draw)
    repeat[order] = torch.arange(len(draw)) - first
    return draw + repeat * int(size)


class ResumableMixin:
    """For ``DistributedSampler`` subclasses: publish the epoch to the dataset, and skip ahead once.

    The subclass sets ``epoch_tensor`` (or None) and ``_skip = 0`` and honours ``_skip`` in ``__iter__``.
    """

    epoch_tensor: torch.Tensor | None = None
    _skip: int = 0

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        if self.epoch_tensor is not None:
            self.epoch_tensor.fill_(epoch)

    def skip(self, samples: int) -> None:
        """Leave out the first ``samples`` of this process's next pass (once)."""
        self._skip = max(0, int(samples))


class ResumableSampler(ResumableMixin, DistributedSampler):
    """Epoch-seeded shuffled order, sharded over ``num_replicas``; ``skip(n)`` resumes mid-epoch.

    Subclassing ``DistributedSampler`` tells Lightning the sharding is already done.
    """

    def __init__(self, dataset, seed: int = 0, shuffle: bool = True, num_replicas: int = 1, rank: int = 0, epoch_tensor: torch.Tensor | None = None):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=False)
        self.epoch_tensor = epoch_tensor
        self._skip = 0

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        start, self._skip = self._skip, 0
        return iter(indices[start:])


class ResumableDataLoader(DataLoader):
    """A ``DataLoader`` whose position inside the epoch is saved in checkpoints.

    ``progress`` returns how many batches of the current epoch training has processed (the
    DataModule reads it from the trainer); it is what ``state_dict`` records.
    """

    def __init__(self, *args, progress: Callable[[], int] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.progress = progress

    def state_dict(self) -> dict:
        sampler = self.sampler
        return {"epoch": int(getattr(sampler, "epoch", 0)), "batches": int(self.progress() if self.progress else 0)}

    def load_state_dict(self, state: dict) -> None:
        batches = int(state.get("batches", 0))
        if hasattr(self.sampler, "skip") and 0 < batches < len(self):
            self.sampler.skip(batches * int(self.batch_size))


def collate_skipping_bad(samples: list[dict]) -> dict:
    """Collate the good samples; the names of images that failed to decode go to ``skipped``."""
    good = [s for s in samples if "skipped" not in s]
    skipped = [s["skipped"] for s in samples if "skipped" in s]
    batch = default_collate(good) if good else {"labels": torch.empty(0), "name": [], "index": torch.empty(0, dtype=torch.long)}
    batch["skipped"] = skipped
    return batch

