"""The map-style dataset over one split part, and where NIH images live on disk.

Everything a sample needs is looked up once, before training, into numpy arrays indexed by
position; ``__getitem__`` only decodes one file and indexes arrays (no pandas, no search).
Paths are a fixed-width ``numpy.str_`` array, so DataLoader workers share it without the
copy-on-read that Python lists of strings cause under ``fork``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from cxr_lightning.data.image_files import FolderEntry, scan_folder
from cxr_lightning.data.images import ImageDecodeError, load_grey
from cxr_lightning.data.loading import sample_seed

DOWNLOAD_HINT = (
    "Download the NIH ChestX-ray14 images (112,120 PNGs, about 45 GB) with\n"
    "    cxr-lightning data download --data_root {root}\n"
    "or point data.data_root at a folder holding images/ (or the Kaggle images_*/images/ folders).\n"
    "To try the pipeline without the images: cxr-lightning data synth --out {root}_synthetic"
)


class DataNotFoundError(FileNotFoundError):
    """The images of a split are not under the data root."""


def _image_folders(root: Path) -> list[Path]:
    """``root/images`` and the Kaggle ``root/images_*/images`` that are folders (a link loop is none)."""
    return [f for f in [root / "images"] + sorted(p / "images" for p in root.glob("images_*")) if f.is_dir()]


def _entries(folder: Path) -> Iterator[FolderEntry]:
    try:
        yield from scan_folder(folder)
    except OSError as err:  # the folder itself (its permissions): the error the commands report in one line
        raise DataNotFoundError(f"{err.strerror or err}: check the folder's permissions") from err


def has_images(root: str | Path) -> bool:
    """Whether ``root/images`` (or a Kaggle ``root/images_*/images``) holds at least one non-folder entry, without listing it all.

    A broken link or a link loop counts: the images are there, and decoding says what is wrong with each.
    """
    return any(not entry.is_dir for folder in _image_folders(Path(root)) for entry in _entries(folder))


def index_images(root: str | Path) -> dict[str, Path]:
    """Map image name -> path for ``root/images/*`` and the Kaggle layout ``root/images_*/images/*``.

    Every entry is indexed, not only regular files: a symbolic link loop, a broken link or a folder
    named like an image is then reported by name, with what it is, when it is decoded
    (:func:`~cxr_lightning.data.images.load_grey`) instead of passing for missing. A folder gives
    way to a non-folder entry of the same name in a later image folder. The first of the folders
    above that holds a name wins.
    """
    found: dict[str, Path] = {}
    folders_only: set[str] = set()
    for folder in _image_folders(Path(root)):
        for entry in _entries(folder):
            if entry.name not in found or (entry.name in folders_only and not entry.is_dir):
                found[entry.name] = entry.path
                if entry.is_dir:
                    folders_only.add(entry.name)
                else:
                    folders_only.discard(entry.name)
    return found


class ChestXrayDataset(Dataset):
    """Samples ``{"image", "metadata", "labels", "name", "index"}`` of one split part.

    ``image`` is what ``transform`` makes of the grey image (``(C, S, S)`` float32), ``metadata``
    is ``(M,)`` float32, ``labels`` is ``(L,)`` float32 0/1 and ``index`` the position in this
    dataset (used to drop the samples a distributed sampler repeats). With ``skip_bad_images``
    an image that cannot be decoded gives ``{"skipped": name}`` instead (see
    :func:`cxr_lightning.data.loading.collate_skipping_bad`); otherwise the error names the file.
    """

    def __init__(
        self,
        paths: list[str] | np.ndarray,
        labels: np.ndarray,
        metadata: np.ndarray,
        transform: Callable[..., torch.Tensor],
        seed: int = 0,
        skip_bad_images: bool = False,
    ):
        if not (len(paths) == len(labels) == len(metadata)):
            raise ValueError(f"paths, labels and metadata differ in length: {len(paths)}, {len(labels)}, {len(metadata)}")
        self.paths = np.asarray([str(p) for p in paths], dtype=np.str_)
        self.names = np.asarray([os.path.basename(p) for p in self.paths.tolist()], dtype=np.str_)
        self.labels = torch.from_numpy(np.ascontiguousarray(labels, dtype=np.float32))
        self.metadata = torch.from_numpy(np.ascontiguousarray(metadata, dtype=np.float32))
        self.transform = transform
        self.seed = seed
        self.skip_bad_images = skip_bad_images
        # Written by the sampler's set_epoch; shared memory so DataLoader workers see it too.
        self.epoch = torch.zeros(1, dtype=torch.int64).share_memory_()

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict:
        # index >= len: a sampler's repeated draw (loading.tag_repeats): the image at index % len,
        # its own augmentation.
        draw, index = int(index), int(index) % len(self.paths)
        path, name = str(self.paths[index]), str(self.names[index])
        try:
            grey = load_grey(path)
        except ImageDecodeError as err:
            if self.skip_bad_images:
                return {"skipped": name}
            raise ImageDecodeError(
                f"{err}. Replace or remove it, or pass --data.images.on_bad skip to leave unreadable images out (counted and reported)"
            ) from err
        # Augmentation randomness comes from (seed, epoch, index) alone: the same sample gets the
        # same augmentation whatever the worker, the prefetching or an interruption and resume.
        generator = torch.Generator().manual_seed(sample_seed(self.seed, int(self.epoch[0]), draw))
        return {
            "image": self.transform(grey, generator),
            "metadata": self.metadata[index],
            "labels": self.labels[index],
            "name": name,
            "index": index,
        }
