"""Decoding DICOM radiographs to one grey channel in [0, 1], as displayed, plus the tags we use.

The pixel pipeline is the DICOM display pipeline (PS3.3 C.11 / PS3.4 N.2), with pydicom 3's
``pydicom.pixels`` functions:

1. the stored values (``BitsStored`` of 8 to 16 bits in 8- or 16-bit words, unsigned or signed;
   pydicom masks the unused high bits and sign-extends signed data);
2. the **Modality LUT**: *Rescale Slope/Intercept* or a *Modality LUT Sequence*
   (:func:`pydicom.pixels.apply_modality_lut`);
3. the **VOI LUT**: a *VOI LUT Sequence*, else the first *Window Center/Width* pair with its
   *VOI LUT Function* (LINEAR, LINEAR_EXACT, SIGMOID) (:func:`pydicom.pixels.apply_voi_lut`);
4. the displayed range is mapped linearly to [0, 1]. With a window it is the window's output
   range (what pydicom maps the window onto: ``0..2**BitsStored - 1`` after the rescale, or the
   Modality LUT's output range), so everything at or below the window's bottom is 0 and at or
   above its top is 1. With a VOI LUT Sequence it is the range of the LUT's values. Without any
   VOI transform it is the image's own minimum..maximum after the Modality LUT (a constant image
   becomes all zeros);
5. ``MONOCHROME1`` (low values white) is inverted (``1 - x``), so bone is bright for both
   photometric interpretations.

RGB/YBR images (rare for radiographs) become ITU-R 601 luma of their values scaled by their bit
depth. Multi-frame images are refused. Compressed transfer syntaxes decode only if pydicom has a
decoder for them installed (``pylibjpeg``, ``pylibjpeg-openjpeg``, ``python-gdcm``...); the error
says so.

Tags: ``PatientAge`` (DICOM AS, e.g. ``058Y``, ``006M``, ``010W``, ``003D``, converted to years;
NaN when absent, malformed or above 120), ``PatientSex`` (``M``/``F``, else ``''``) and
``ViewPosition`` (``PA``/``AP``, else ``''``; laterals etc. are unknown to the models).
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cxr_lightning.data.images import ImageDecodeError

__all__ = ["DICOM_SUFFIXES", "is_dicom_file", "load_dicom_grey", "parse_dicom_age", "dicom_tags"]

DICOM_SUFFIXES = (".dcm", ".dicom", ".dic")
MAX_AGE_YEARS = 120
_AGE = re.compile(r"^\s*(\d{1,3})\s*([DWMY])?\s*$", re.IGNORECASE)
_AGE_UNIT_YEARS = {"D": 1 / 365.25, "W": 7 / 365.25, "M": 1 / 12, "Y": 1.0}


def is_dicom_file(path: str | Path) -> bool:
    """True for a ``.dcm``/``.dicom``/``.dic`` name or a file with the ``DICM`` magic at byte 128."""
    path = Path(path)
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    try:
        with open(path, "rb") as handle:
            handle.seek(128)
            return handle.read(4) == b"DICM"
    except OSError:
        return False


def parse_dicom_age(value: Any) -> float:
    """A DICOM Age String (``'058Y'``, ``'006M'``, ``'010W'``, ``'003D'``) or a plain number -> years; NaN if unusable."""
    if value is None:
        return math.nan
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        years = float(value)
    else:
        text = str(value).strip()
        match = _AGE.match(text)
        if match is not None:
            years = int(match.group(1)) * _AGE_UNIT_YEARS[(match.group(2) or "Y").upper()]
        else:
            try:
                years = float(text)
            except ValueError:
                return math.nan
    if math.isnan(years):
        return math.nan
    return years if 0 <= years <= MAX_AGE_YEARS else math.nan


def _category(value: Any, allowed: tuple[str, ...]) -> str:
    text = str(value or "").strip().upper()
    return text if text in allowed else ""


def dicom_tags(ds: Any) -> dict[str, Any]:
    """``{'age': years or NaN, 'sex': 'M'/'F'/'', 'view': 'PA'/'AP'/''}`` plus which tags were present."""
    present = [name for name in ("PatientAge", "PatientSex", "ViewPosition") if str(ds.get(name, "") or "").strip()]
    return {
        "age": parse_dicom_age(ds.get("PatientAge", None)),
        "sex": _category(ds.get("PatientSex", ""), ("M", "F")),
        "view": _category(ds.get("ViewPosition", ""), ("PA", "AP")),
        "present": present,
    }


def _voi_output_range(ds: Any) -> tuple[float, float] | None:
    """The (min, max) that :func:`pydicom.pixels.apply_voi_lut` maps the image onto; None if it does nothing."""
    voi = ds.get("VOILUTSequence")
    if voi and voi[0].get("LUTDescriptor") is not None and voi[0].get("LUTData") is not None:
        data = np.asarray(voi[0].LUTData, dtype=np.float64)
        return float(data.min()), float(data.max())
    if ds.get("WindowCenter") is None or ds.get("WindowWidth") is None:
        return None
    # As pydicom's apply_windowing: the stored range, through the Modality LUT.
    if ds.get("ModalityLUTSequence"):
        return 0.0, float(2 ** int(ds.ModalityLUTSequence[0].LUTDescriptor[2]) - 1)
    bits = int(ds.BitsStored)
    if int(ds.get("PixelRepresentation", 0)) == 0:
        low, high = 0.0, float(2**bits - 1)
    else:
        low, high = float(-(2 ** (bits - 1))), float(2 ** (bits - 1) - 1)
    slope, intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
    if slope is not None and intercept is not None:
        low, high = low * float(slope) + float(intercept), high * float(slope) + float(intercept)
    return (min(low, high), max(low, high))


def load_dicom_grey(path: str | Path) -> tuple[torch.Tensor, dict[str, Any]]:
    """The DICOM image at ``path`` as displayed: a ``(1, H, W)`` float32 tensor in [0, 1], and its tags.

    Tags: ``age`` (years, NaN if unknown), ``sex`` (``M``/``F``/``''``), ``view`` (``PA``/``AP``/``''``),
    ``present`` (which of PatientAge/PatientSex/ViewPosition had a value), ``photometric``,
    ``bits_stored``, ``windowed`` (a VOI LUT or window was applied) and ``original_size`` ``(W, H)``.

    Raises:
        ImageDecodeError: the file is missing, empty, not DICOM, has no or undecodable pixel data,
            or is multi-frame; the message names the file.
    """
    try:
        import pydicom
        from pydicom.errors import InvalidDicomError
        from pydicom.pixels import apply_modality_lut, apply_voi_lut
    except ImportError as err:  # pragma: no cover - pydicom is a dependency
        raise ImportError("reading DICOM needs pydicom>=3 (pip install pydicom)") from err

    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise ImageDecodeError(f"{path}: empty file (0 bytes)")
        ds = pydicom.dcmread(path)
    except FileNotFoundError as err:
        raise ImageDecodeError(f"{path}: file not found") from err
    except (InvalidDicomError, OSError, EOFError, ValueError, KeyError, TypeError) as err:
        if isinstance(err, ImageDecodeError):
            raise
        raise ImageDecodeError(f"{path}: cannot read DICOM ({type(err).__name__}: {err})") from err

    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise ImageDecodeError(f"{path}: DICOM file has no pixel data")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise ImageDecodeError(f"{path}: multi-frame DICOM ({frames} frames) is not a radiograph we can classify")
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    try:
        stored = ds.pixel_array
    except Exception as err:  # noqa: BLE001 - decoder missing, truncated data, bad attributes...
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        name = getattr(syntax, "name", syntax)
        raise ImageDecodeError(
            f"{path}: cannot decode DICOM pixel data (transfer syntax {name}; {type(err).__name__}: {err}). "
            "Compressed DICOM needs a pydicom decoder plugin, e.g. pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg"
        ) from err

    windowed = False
    try:
        if photometric in ("MONOCHROME1", "MONOCHROME2"):
            if stored.ndim != 2:
                raise ImageDecodeError(f"{path}: expected one grey frame, got pixel array of shape {stored.shape}")
            values = np.asarray(apply_modality_lut(stored, ds), dtype=np.float64)
            display_range = _voi_output_range(ds)
            if display_range is not None:
                values = np.asarray(apply_voi_lut(values, ds), dtype=np.float64)
                windowed = True
            else:
                display_range = (float(values.min()), float(values.max()))
        else:
            if stored.ndim != 3 or stored.shape[-1] != 3:
                raise ImageDecodeError(f"{path}: photometric interpretation {photometric} with pixel array shape {stored.shape}")
            if photometric.startswith("YBR"):
                from pydicom.pixels import convert_color_space

                stored = convert_color_space(stored, photometric, "RGB")
            rgb = stored.astype(np.float64) / float(2 ** int(ds.get("BitsStored", 8)) - 1)
            values = rgb @ np.array([0.299, 0.587, 0.114])
            display_range = (0.0, 1.0)
    except ImageDecodeError:
        raise
    except Exception as err:  # noqa: BLE001 - malformed LUT / window attributes
        raise ImageDecodeError(f"{path}: cannot apply the DICOM modality/VOI transforms ({type(err).__name__}: {err})") from err

    low, high = display_range
    if high > low:
        grey = np.clip((values - low) / (high - low), 0.0, 1.0)
    else:
        grey = np.zeros_like(values)
    if photometric == "MONOCHROME1":
        grey = 1.0 - grey
    tags = dicom_tags(ds)
    tags.update(
        photometric=photometric,
        bits_stored=int(ds.get("BitsStored", 0) or 0),
        windowed=windowed,
        original_size=(int(grey.shape[1]), int(grey.shape[0])),
    )
    tensor = torch.from_numpy(np.ascontiguousarray(grey, dtype=np.float32)).unsqueeze(0)
    return tensor, tags
