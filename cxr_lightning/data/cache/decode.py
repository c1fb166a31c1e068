"""Decoding for the cache: one image to uint8 at the cache's size, and the worker processes' chunk of rows."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import numpy as np
import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as F

from cxr_lightning.data.cache.format import MISSING, OK, UNREADABLE
from cxr_lightning.data.images import ImageDecodeError, load_grey

# One decoded chunk row: (row, status, source size, source mtime_ns, reason).
RowResult = tuple[int, int, int, int, str]


def decode_resized(path: str | Path, size: int) -> np.ndarray:
    """One image as ``(size, size)`` uint8: ``round(255 * resize(load_grey(path)))``.

    The resize is :class:`~cxr_lightning.data.transforms.ImageTransform`'s: bilinear with
    antialiasing on the float image (skipped when the image already has that size).
    """
    image = load_grey(path)
    if image.shape[-2:] != (size, size):
        image = F.resize(image, [size, size], interpolation=InterpolationMode.BILINEAR, antialias=True)
    return image.mul_(255.0).round_().clamp_(0.0, 255.0).to(torch.uint8)[0].numpy()


def init_worker(parent: int) -> None:
    """Initialiser of a decoding process: one thread, and exit when the builder ``parent`` is gone."""
    torch.set_num_threads(1)

    # A killed builder leaves its pool workers behind; make them exit instead of waiting forever.
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="cache-parent-watchdog").start()


def decode_chunk(task: tuple[str, int, int, list[int], list[str | None]]) -> list[RowResult]:
    """Decode a chunk of rows and write them into the .npy file; ``(row, status, size, mtime_ns, reason)`` each.

    Pixels are written with ``pwrite`` at the row's offset and flushed (``fdatasync``) before the
    chunk is reported, so a row the caller marks done is on disk.
    """
    array_path, offset, size, rows, paths = task
    results = []
    row_bytes = size * size
    fd = os.open(array_path, os.O_WRONLY)
    try:
        for row, path in zip(rows, paths):
            if path is None:
                results.append((row, MISSING, 0, 0, "not found under the image folders"))
                continue
            try:
                st = os.stat(path)
                stats = (st.st_size, st.st_mtime_ns)
            except FileNotFoundError:
                stats = None  # gone, or a broken symbolic link: the decoder says which
            except OSError:
                stats = (0, 0)  # a symbolic link loop...: the decoder names the problem
            try:
                pixels = decode_resized(path, size)
            except ImageDecodeError as err:
                status = MISSING if str(err).endswith(": file not found") else UNREADABLE
                results.append((row, status, *(stats or (0, 0)), str(err)))
                continue
            except Exception as err:  # noqa: BLE001 - any failure of one file is that file's problem
                results.append((row, UNREADABLE, *(stats or (0, 0)), f"{path}: {type(err).__name__}: {err}"))
                continue
            data = np.ascontiguousarray(pixels).tobytes()
            written = os.pwrite(fd, data, offset + row * row_bytes)
            if written != row_bytes:
                raise OSError(f"short write to {array_path} (row {row}: {written} of {row_bytes} bytes)")
            # a file that appeared after the stat records (0, 0): a later build sees it as changed
            results.append((row, OK, *(stats or (0, 0)), ""))
        if hasattr(os, "fdatasync"):
            os.fdatasync(fd)
        else:  # pragma: no cover - non-Linux
            os.fsync(fd)
    finally:
        os.close(fd)
    return results
