"""The training-side view of a cache: a Dataset of cached uint8 images that reads whole batches at once."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, get_worker_info
from torch.utils.data._utils.collate import default_collate

from cxr_lightning.data.cache.reader import ImageCache
from cxr_lightning.data.gpu_augment import AugmentParams
from cxr_lightning.data.loading import sample_seed


def _uint8_batch(shape: tuple[int, ...], pin_memory: bool = False) -> torch.Tensor:
    """An uninitialised uint8 tensor: in shared memory inside a DataLoader worker (no copy on the
    way out, as ``default_collate`` does), else pinned when asked and CUDA is available."""
    if get_worker_info() is not None:
        numel = math.prod(shape)
        storage = torch.empty(0, dtype=torch.uint8)._typed_storage()._new_shared(numel, device="cpu")
        return torch.empty(0, dtype=torch.uint8).new(storage).view(shape)
    if pin_memory and torch.cuda.is_available():
        return torch.empty(shape, dtype=torch.uint8, pin_memory=True)
    return torch.empty(shape, dtype=torch.uint8)


class CachedBatch(dict):
    """A batch that :meth:`CachedChestXrayDataset.__getitems__` already collated."""


class CachedChestXrayDataset(Dataset):
    """:class:`~cxr_lightning.data.dataset.ChestXrayDataset`'s samples with ``image`` read from an :class:`ImageCache`.

    ``image`` is the cached ``(1, S, S)`` uint8 tensor: convert, augment and normalise it on the
    device with :mod:`cxr_lightning.data.gpu_augment`. With a DataLoader's automatic batching,
    :meth:`__getitems__` reads a whole batch with one fancy index of the memmap (rows sorted for
    locality) and returns it collated; pass ``collate_fn=cached_collate``. Samples of a batch
    come in cache-row order (all fields permuted alike); with ``shuffle=False`` over a dataset
    in CSV order that is the sampler's order.

    With an ``augmentation`` (the training part), each sample/batch also carries ``augment``: the
    ``(5,)``/``(B, 5)`` float32 parameters (angle, brightness, contrast, contrast_first, flip) drawn like
    :class:`~cxr_lightning.data.dataset.ChestXrayDataset` draws them, from
    ``sample_seed(seed, epoch, index)`` (``epoch`` is the shared tensor a
    :class:`~cxr_lightning.data.loading.ResumableSampler` writes), for
    :class:`~cxr_lightning.data.gpu_augment.BatchAugment` to apply on the device. Batches carry
    ``skipped: []`` like ``collate_skipping_bad``'s (bad images are left out when the cache is built).

    ``pin_memory=True`` (for ``num_workers=0`` on CUDA): batches read in the main process go
    straight into pinned memory, so the DataLoader's ``pin_memory`` step has nothing to copy.
    """

    def __init__(
        self,
        cache: ImageCache,
        names: Sequence[str] | np.ndarray,
        labels: np.ndarray,
        metadata: np.ndarray,
        seed: int = 0,
        augmentation=None,
        pin_memory: bool = False,
    ):
        if not (len(names) == len(labels) == len(metadata)):
            raise ValueError(f"names, labels and metadata differ in length: {len(names)}, {len(labels)}, {len(metadata)}")
        self.cache = cache
        self.names = np.asarray([str(n) for n in names], dtype=np.str_)
        self.cache_rows = cache.rows(self.names)
        self.labels = torch.from_numpy(np.ascontiguousarray(labels, dtype=np.float32))
        self.metadata = torch.from_numpy(np.ascontiguousarray(metadata, dtype=np.float32))
        self.size = cache.size
        self.seed = seed
        self.augmentation = augmentation
        self.pin_memory = pin_memory
        # Written by the sampler's set_epoch; shared memory so DataLoader workers see it too.
        self.epoch = torch.zeros(1, dtype=torch.int64).share_memory_()

    def augment_params(self, indices: Sequence[int] | np.ndarray) -> torch.Tensor:
        """``(B, 5)`` float32 augmentation parameters of these samples in this epoch."""
        a, epoch = self.augmentation, int(self.epoch[0])
        seeds = [sample_seed(self.seed, epoch, int(i)) for i in indices]
        return AugmentParams.from_seeds(seeds, a.rotation_degrees, a.brightness, a.contrast, a.horizontal_flip).as_tensor()

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> dict:
        draw, index = int(index), int(index) % len(self)  # a repeated draw reads index % len (tag_repeats)
        image = torch.from_numpy(np.array(self.cache.array[self.cache_rows[index]])).unsqueeze(0)
        sample = {
            "image": image,
            "metadata": self.metadata[index],
            "labels": self.labels[index],
            "name": str(self.names[index]),
            "index": int(index),
        }
        if self.augmentation is not None:
            sample["augment"] = self.augment_params([draw])[0]
        return sample

    def __getitems__(self, indices: Sequence[int]) -> CachedBatch:
        idx = np.asarray(indices, dtype=np.int64)
        if idx.ndim != 1:
            raise ValueError("__getitems__ takes a flat list of indices")
        if len(idx) and idx.min() < -len(self):
            raise IndexError(f"index out of range for a dataset of {len(self)}")
        # Indices >= len are a sampler's repeated draws (tag_repeats): the image at index % len,
        # augmented with the whole index as its seed.
        draws = np.where(idx < 0, idx + len(self), idx)
        idx = draws % len(self)
        rows = self.cache_rows[idx]
        order = np.argsort(rows, kind="stable")
        idx, rows, draws = idx[order], rows[order], draws[order]
        s = self.size
        image = _uint8_batch((len(idx), 1, s, s), self.pin_memory)
        # mode="clip": rows are valid, and the default mode="raise" would buffer `out` (a second copy).
        np.take(self.cache.array, rows, axis=0, out=image.numpy().reshape(len(idx), s, s), mode="clip")
        positions = torch.from_numpy(idx)
        batch = CachedBatch(
            image=image,
            metadata=self.metadata.index_select(0, positions),
            labels=self.labels.index_select(0, positions),
            name=self.names[idx].tolist(),
            index=positions,
            skipped=[],
        )
        if self.augmentation is not None:
            batch["augment"] = self.augment_params(draws)
        return batch


def cached_collate(batch):
    """Collate for :class:`CachedChestXrayDataset`: passes a pre-collated batch through, else ``default_collate``."""
    if isinstance(batch, CachedBatch):
        return dict(batch)
    out = default_collate(batch)
    if isinstance(out, dict):
        out.setdefault("skipped", [])
    return out
