"""Decoding radiographs of any PNG/JPEG mode to one grey channel in [0, 1].

NIH PNGs are 8-bit grey (mode ``L``), a few are ``RGBA`` with equal colour channels and an
opaque alpha; other archives bring 16-bit (``I;16``), ``LA``, ``RGB``, palette and 1-bit
images. All of them become a ``float32`` tensor of shape ``(1, H, W)`` with values in [0, 1]:
8-bit values are divided by 255, so no precision is lost before the resize.

**16-bit images** are divided by ``2**bits - 1`` of the bits the samples really use:

* a PNG with an ``sBIT`` chunk (significant bits ``b``, read from the file: Pillow does not parse
  it): the PNG standard says the samples are then scaled up to fill 16 bits, and such a file is
  divided by 65535. Many writers store the unscaled ``b``-bit values instead; a file whose values
  all fit in ``b`` bits and do not look scaled (some value has a non-zero bit below the top ``b``)
  is read as unscaled and divided by ``2**b - 1``;
* without ``sBIT`` (any 16-bit PNG or TIFF) the bit depth is guessed from the largest value: at
  most 4095 is read as 12-bit data (divided by 4095: the common depth of radiographs, which as
  16-bit would decode almost black); above that as 16-bit (divided by 65535). The guess is
  announced with a :class:`UserWarning` naming the file, once per process for each guess
  (12-bit, or 16-bit for a largest value below 16384, which may be 14-bit data): an ``sBIT``
  chunk in the files, or values rescaled to the full 16-bit range, removes the doubt.

**Unreadable files** raise :class:`ImageDecodeError` naming the file and the reason: missing,
empty, a directory, a symbolic link loop or a broken link, not a regular file, permission denied,
truncated or not an image, or too large. An image of more than :data:`MAX_IMAGE_PIXELS`
(64 Mpx, e.g. 8192x8192, four times a 4000x4000 radiograph) is refused from its header, before it
is decompressed; Pillow's own decompression-bomb limit (``PIL.Image.MAX_IMAGE_PIXELS``, refused
above twice it) applies too and gives the same error.
"""

from __future__ import annotations

import struct
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image

from cxr_lightning.data.image_files import unreadable_reason

#: Images with more pixels than this are refused unread (64 Mpx; a 1024x1024 NIH image is 1 Mpx).
MAX_IMAGE_PIXELS = 8192 * 8192

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")
#: which bit-depth guesses this process has announced (one warning each)
_ANNOUNCED: set[str] = set()


class ImageDecodeError(ValueError):
    """An image file that is missing, empty, truncated, not an image or otherwise unreadable; the message names it."""


def png_significant_bits(handle: BinaryIO) -> int | None:
    """The grey significant bits of a PNG's ``sBIT`` chunk (read from ``handle``'s start), or None.

    Only the chunks before the image data are read; ``handle`` is left at its start.
    """
    handle.seek(0)
    try:
        if handle.read(8) != _PNG_SIGNATURE:
            return None
        while True:
            header = handle.read(8)
            if len(header) < 8:
                return None
            length, kind = struct.unpack(">I4s", header)
            if kind in (b"IDAT", b"IEND", b"PLTE"):  # sBIT comes before these
                return None
            if kind == b"sBIT":
                data = handle.read(min(length, 4))
                # grey: 1 byte; grey+alpha: grey, alpha; RGB(A)/palette: the largest colour value
                bits = data[0] if length in (1, 2) else max(data[:3], default=0)
                return int(bits) if 1 <= bits <= 16 else None
            handle.seek(length + 4, 1)  # data and CRC
    finally:
        handle.seek(0)


def _announce(guess: str, message: str) -> None:
    if guess not in _ANNOUNCED:
        _ANNOUNCED.add(guess)
        warnings.warn(message + " (said once per process)", UserWarning, stacklevel=4)


def _sixteen_bit_divisor(values: np.ndarray, path: Path, significant_bits: int | None) -> float:
    """What 16-bit samples are divided by (the rule of the module docstring)."""
    peak = int(values.max(initial=0))
    if significant_bits is not None:
        if significant_bits >= 16:
            return 65535.0
        full, below = 2**significant_bits - 1, 2 ** (16 - significant_bits) - 1
        unscaled = peak <= full and bool((values.astype(np.uint32) & below).any())
        return float(full) if unscaled else 65535.0
    if peak <= 4095:
        _announce("12", f"{path}: 16-bit image without an sBIT chunk and no value above 4095: read as 12-bit data "
                        "(divided by 4095); add an sBIT chunk to the files if that is wrong")  # fmt: skip
        return 4095.0
    if peak <= 16383:
        _announce("16", f"{path}: 16-bit image without an sBIT chunk and no value above 16383: read as 16-bit data "
                        "(divided by 65535), dark if it is 14-bit data; add an sBIT chunk to the files if that is wrong")  # fmt: skip
    return 65535.0


def _to_grey_array(image: Image.Image, path: Path, significant_bits: int | None) -> np.ndarray:
    mode = image.mode
    if mode in _SIXTEEN_BIT_MODES:
        values = np.asarray(image)
        return values.astype(np.float32) / np.float32(_sixteen_bit_divisor(values, path, significant_bits))
    if mode == "I":  # 32-bit ints: PIL's mode for 16-bit PNGs on some versions, and for 32-bit TIFFs
        values = np.asarray(image)
        if values.max(initial=0) <= 255:
            return values.astype(np.float32) / 255.0
        divisor = _sixteen_bit_divisor(np.clip(values, 0, 65535), path, significant_bits)
        return np.clip(values.astype(np.float32) / np.float32(divisor), 0.0, 1.0)
    if mode == "F":
        return np.clip(np.asarray(image, dtype=np.float32), 0.0, 1.0)
    if mode == "1":
        return np.asarray(image, dtype=np.float32)
    if mode != "L":
        # RGBA/LA: alpha is dropped (NIH's RGBA files are opaque); colour becomes ITU-R 601 luma.
        image = image.convert("RGB").convert("L") if mode not in ("LA", "La") else image.getchannel("L")
    return np.asarray(image, dtype=np.float32) / 255.0


def _decode(handle: BinaryIO, path: Path) -> np.ndarray:
    significant_bits = png_significant_bits(handle)
    with Image.open(handle) as image:
        width, height = image.size
        if width * height > MAX_IMAGE_PIXELS:
            raise ImageDecodeError(
                f"{path}: image too large to decode ({width}x{height} = {width * height:,} pixels; the limit is "
                f"{MAX_IMAGE_PIXELS:,}, e.g. 8192x8192): a decompression bomb, or not a radiograph"
            )
        image.load()
        return _to_grey_array(image, path, significant_bits)


def load_grey(path: str | Path) -> torch.Tensor:
    """The image at ``path`` as a ``(1, H, W)`` float32 tensor in [0, 1].

    Raises:
        ImageDecodeError: the file cannot be read as an image; the message names it and says why.
    """
    path = Path(path)
    reason = unreadable_reason(path)
    if reason is not None:
        raise ImageDecodeError(f"{path}: {reason}")
    try:
        with open(path, "rb") as handle:
            array = _decode(handle, path)
    except ImageDecodeError:
        raise
    except FileNotFoundError as err:  # removed since it was examined
        raise ImageDecodeError(f"{path}: file not found") from err
    except PermissionError as err:
        raise ImageDecodeError(f"{path}: permission denied (cannot open it for reading: check its owner and mode)") from err
    except Image.DecompressionBombError as err:
        raise ImageDecodeError(f"{path}: image too large to decode (Pillow refuses it: {err})") from err
    except Exception as err:  # noqa: BLE001 - whatever a damaged file makes the decoder raise is that file's problem
        raise ImageDecodeError(f"{path}: cannot decode image ({type(err).__name__}: {err})") from err
    return torch.from_numpy(np.ascontiguousarray(array)).unsqueeze(0)
