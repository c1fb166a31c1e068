"""Decoding radiographs of any PNG/JPEG mode to one grey channel in [0, 1].

NIH PNGs are 8-bit grey (mode ``L``), a few are ``RGBA`` with equal colour channels and an
opaque alpha; other archives bring 16-bit (``I;16``), ``LA``, ``RGB``, palette and 1-bit
images. All of them become a ``float32`` tensor of shape ``(1, H, W)`` with values in [0, 1]:
8-bit values are divided by 255 and 16-bit values by 65535, so no precision is lost before the
resize.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError


class ImageDecodeError(ValueError):
    """An image file that is missing, empty, truncated or not an image."""


def _to_grey_array(image: Image.Image) -> np.ndarray:
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        return np.asarray(image, dtype=np.float32) / 65535.0
    if mode == "I":  # 32-bit ints: PIL's mode for 16-bit PNGs on some versions
        array = np.asarray(image, dtype=np.float32)
        return array / (65535.0 if array.max(initial=0) > 255 else 255.0)
    if mode == "F":
        return np.clip(np.asarray(image, dtype=np.float32), 0.0, 1.0)
    if mode == "1":
        return np.asarray(image, dtype=np.float32)
    if mode != "L":
        # RGBA/LA: alpha is dropped (NIH's RGBA files are opaque); colour becomes ITU-R 601 luma.
        image = image.convert("RGB").convert("L") if mode not in ("LA", "La") else image.getchannel("L")
    return np.asarray(image, dtype=np.float32) / 255.0


def load_grey(path: str | Path) -> torch.Tensor:
    """The image at ``path`` as a ``(1, H, W)`` float32 tensor in [0, 1]."""
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise ImageDecodeError(f"{path}: empty file (0 bytes)")
        with Image.open(path) as image:
            image.load()
            array = _to_grey_array(image)
    except FileNotFoundError as err:
        raise ImageDecodeError(f"{path}: file not found") from err
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise ImageDecodeError(f"{path}: cannot decode image ({err})") from err
    return torch.from_numpy(np.ascontiguousarray(array)).unsqueeze(0)
