"""Decoding DICOM radiographs to one grey channel in [0, 1], as displayed, plus the tags we use.

The pixel pipeline is the DICOM display pipeline (PS3.3 C.11 / PS3.4 N.2), with pydicom 3's
``pydicom.pixels`` functions:

1. the stored values (``BitsStored`` of 8 to 16 bits in 8- or 16-bit words, unsigned or signed;
   pydicom masks the unused high bits and sign-extends signed data);
2. the **Modality LUT**: *Rescale Slope/Intercept* or a *Modality LUT Sequence*
   (:func:`pydicom.pixels.apply_modality_lut`);
3. the **VOI LUT**: a *VOI LUT Sequence*, else the first *Window Center/Width* pair with its
   *VOI LUT Function* (LINEAR, LINEAR_EXACT, SIGMOID) (:func:`pydicom.pixels.apply_voi_lut`);
4. the displayed range is mapped linearly to [0, 1]. Without a VOI LUT Sequence it is the
   **stored range through the Modality LUT**: ``0..2**BitsStored - 1`` (signed:
   ``-2**(BitsStored-1)..2**(BitsStored-1) - 1``) through the rescale, or ``0..2**n - 1`` for a
   Modality LUT Sequence of ``n``-bit entries. That is what pydicom maps a window onto, so with a
   window everything at or below its bottom is 0 and at or above its top is 1. Without any VOI
   transform the image is thus ``stored / (2**BitsStored - 1)`` (a linear rescale with a positive
   slope only relabels the units and changes nothing; a negative slope inverts): an 8-bit DICOM
   gives exactly the tensor of the same pixels in a PNG, and two images of one scanner map alike
   whatever their own minimum and maximum (this is not a per-image min..max stretch). With a
   VOI LUT Sequence it is the range of the LUT's values;
5. the **Presentation LUT Shape** (2050,0020) or, without one, the Photometric Interpretation says
   whether the greyscale is inverted (``1 - x``) so that bone is bright: ``INVERSE`` inverts,
   ``IDENTITY`` does not; without the tag ``MONOCHROME1`` (low values white) inverts and
   ``MONOCHROME2`` does not. ``INVERSE`` on a ``MONOCHROME1`` image is that image's one inversion,
   not a second one: the DX Image Module (PS3.3 C.8.11.7) requires ``INVERSE`` with
   ``MONOCHROME1`` and ``IDENTITY`` with ``MONOCHROME2``, the shape accounting for the
   Photometric Interpretation (and pydicom's ``apply_presentation_lut`` returns P-values from
   the shape alone). A ``MONOCHROME1`` image with ``IDENTITY`` (which the DX module does not
   allow) is still inverted. A Presentation LUT *Sequence* is not applied.

RGB/YBR images (rare for radiographs) become ITU-R 601 luma of their values scaled by their bit
depth. Multi-frame images and images of more than
:data:`~cxr_lightning.data.images.MAX_IMAGE_PIXELS` pixels are refused. Compressed transfer
syntaxes decode only if pydicom has a decoder for them installed (``pylibjpeg``,
``pylibjpeg-openjpeg``, ``python-gdcm``...); the error says so.

Tags: ``PatientAge`` (DICOM AS, e.g. ``058Y``, ``006M``, ``010W``, ``003D``, converted to years;
NaN when absent, malformed or above 120), ``PatientSex`` (``M``/``F``, else ``''``) and
``ViewPosition`` (``PA``/``AP``, else ``''``; laterals etc. are unknown to the models), read by
the field parsers of :mod:`cxr_lightning.data.fields` that the metadata CSV readers use too.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cxr_lightning.data.fields import parse_age, parse_sex, parse_view
from cxr_lightning.data.image_files import unreadable_reason
from cxr_lightning.data.images import MAX_IMAGE_PIXELS, ImageDecodeError

__all__ = ["DICOM_SUFFIXES", "is_dicom_file", "load_dicom_grey", "dicom_tags"]

DICOM_SUFFIXES = (".dcm", ".dicom", ".dic")


def is_dicom_file(path: str | Path) -> bool:
    """True for a ``.dcm``/``.dicom``/``.dic`` name or a file with the ``DICM`` magic at byte 128."""
    path = Path(path)
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # opening a FIFO would wait forever
            return False
        with open(path, "rb") as handle:
            handle.seek(128)
            return handle.read(4) == b"DICM"
    except OSError:
        return False


def dicom_tags(ds: Any) -> dict[str, Any]:
    """``{'age': years or NaN, 'sex': 'M'/'F'/'', 'view': 'PA'/'AP'/''}`` plus which tags were present."""
    present = [name for name in ("PatientAge", "PatientSex", "ViewPosition") if str(ds.get(name, "") or "").strip()]
    return {
        "age": parse_age(ds.get("PatientAge", None)),
        "sex": parse_sex(ds.get("PatientSex", "")),
        "view": parse_view(ds.get("ViewPosition", "")),
        "present": present,
    }


def _stored_output_range(ds: Any) -> tuple[float, float]:
    """The stored range (``BitsStored``, signed or not) through the Modality LUT: what pydicom maps a window onto."""
    if ds.get("ModalityLUTSequence"):
        return 0.0, float(2 ** int(ds.ModalityLUTSequence[0].LUTDescriptor[2]) - 1)
    bits = int(ds.BitsStored)
    if int(ds.get("PixelRepresentation", 0)) == 0:
        low, high = 0.0, float(2**bits - 1)
    else:
        low, high = float(-(2 ** (bits - 1))), float(2 ** (bits - 1) - 1)
    slope, intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
    if slope is not None and intercept is not None:  # as apply_modality_lut: both or no rescale
        low, high = low * float(slope) + float(intercept), high * float(slope) + float(intercept)
    return (min(low, high), max(low, high))


def _voi_lut_range(ds: Any) -> tuple[float, float] | None:
    """The (min, max) of a VOI LUT Sequence's values, or None without one."""
    voi = ds.get("VOILUTSequence")
    if voi and voi[0].get("LUTDescriptor") is not None and voi[0].get("LUTData") is not None:
        data = np.asarray(voi[0].LUTData, dtype=np.float64)
        return float(data.min()), float(data.max())
    return None


def _has_window(ds: Any) -> bool:
    return ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None


def displayed_inverted(ds: Any) -> bool:
    """Whether the greyscale is shown inverted: the Presentation LUT Shape if it has one, else MONOCHROME1 (module docstring, step 5)."""
    shape = str(ds.get("PresentationLUTShape", "") or "").strip().upper()
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    return shape == "INVERSE" or photometric == "MONOCHROME1"


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
        from pydicom.pixels import apply_modality_lut, apply_voi_lut
    except ImportError as err:  # pragma: no cover - pydicom is a dependency
        raise ImportError("reading DICOM needs pydicom>=3 (pip install pydicom)") from err

    path = Path(path)
    reason = unreadable_reason(path)
    if reason is not None:
        raise ImageDecodeError(f"{path}: {reason}")
    try:
        with open(path, "rb") as handle:
            ds = pydicom.dcmread(handle)
    except FileNotFoundError as err:  # removed since it was examined
        raise ImageDecodeError(f"{path}: file not found") from err
    except PermissionError as err:
        raise ImageDecodeError(f"{path}: permission denied (cannot open it for reading: check its owner and mode)") from err
    except Exception as err:  # noqa: BLE001 - InvalidDicomError, EOFError, ValueError...: a damaged file's problem
        raise ImageDecodeError(f"{path}: cannot read DICOM ({type(err).__name__}: {err})") from err

    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise ImageDecodeError(f"{path}: DICOM file has no pixel data")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise ImageDecodeError(f"{path}: multi-frame DICOM ({frames} frames) is not a radiograph we can classify")
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    try:
        pixels = int(ds.get("Rows", 0) or 0) * int(ds.get("Columns", 0) or 0)
    except (TypeError, ValueError):
        pixels = 0
    if pixels > MAX_IMAGE_PIXELS:
        raise ImageDecodeError(
            f"{path}: image too large to decode ({ds.Columns}x{ds.Rows} = {pixels:,} pixels; the limit is {MAX_IMAGE_PIXELS:,})"
        )
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
            lut_range = _voi_lut_range(ds)
            if lut_range is not None or _has_window(ds):
                values = np.asarray(apply_voi_lut(values, ds), dtype=np.float64)
                windowed = True
            # A window maps onto the stored range through the Modality LUT, and without a VOI
            # transform that range is what is shown (not the image's own min..max).
            display_range = lut_range if lut_range is not None else _stored_output_range(ds)
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
    if photometric in ("MONOCHROME1", "MONOCHROME2") and displayed_inverted(ds):
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
