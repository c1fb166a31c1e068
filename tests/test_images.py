"""Decoding real NIH PNGs (grey and RGBA), other modes, 16-bit PNGs, bombs and DICOM to one grey channel in [0, 1]."""

from __future__ import annotations

import io
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import cxr_lightning.data.images as images_module
from cxr_lightning.data.dicom import load_dicom_grey
from cxr_lightning.data.images import MAX_IMAGE_PIXELS, ImageDecodeError, load_grey, png_significant_bits
from tests.conftest import NIH_SAMPLE
from tests.test_inference import write_dicom

GREY = NIH_SAMPLE / "images" / "00000211_000.png"
RGBA = NIH_SAMPLE / "images" / "00000100_000.png"


def test_real_grey_png_decodes_exactly():
    image = load_grey(GREY)
    raw = np.asarray(Image.open(GREY))
    assert Image.open(GREY).mode == "L" and image.shape == (1, 1024, 1024) and image.dtype == torch.float32
    assert torch.equal(image[0], torch.from_numpy(raw.astype(np.float32) / 255))


def test_real_rgba_png_becomes_its_grey_values():
    with Image.open(RGBA) as pil:
        assert pil.mode == "RGBA"
        red = np.asarray(pil)[..., 0]
    image = load_grey(RGBA)
    assert image.shape == (1, 1024, 1024)
    # NIH's RGBA files hold the same grey in R, G and B with an opaque alpha.
    assert torch.allclose(image[0], torch.from_numpy(red.astype(np.float32) / 255), atol=1 / 255 + 1e-6)


@pytest.mark.parametrize(
    ("mode", "make", "expected"),
    [
        ("I;16", lambda: Image.fromarray(np.full((8, 6), 65535 // 2, dtype=np.uint16)), 0.5),
        ("LA", lambda: Image.fromarray(np.full((8, 6), 51, dtype=np.uint8)).convert("LA"), 0.2),
        ("RGB", lambda: Image.merge("RGB", [Image.new("L", (6, 8), 102)] * 3), 0.4),
        ("P", lambda: Image.new("L", (6, 8), 204).convert("P"), 0.8),
        ("1", lambda: Image.new("1", (6, 8), 1), 1.0),
    ],
)
def test_other_modes(tmp_path, mode, make, expected):
    path = tmp_path / f"x_{mode.replace(';', '')}.png"
    make().save(path)
    image = load_grey(path)
    assert image.shape == (1, 8, 6) and image.dtype == torch.float32
    assert image.min().item() == pytest.approx(expected, abs=1e-3) and image.max().item() == pytest.approx(expected, abs=1e-3)


def test_bad_files_name_the_file(tmp_path):
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(ImageDecodeError, match=r"empty\.png: empty file"):
        load_grey(empty)
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(GREY.read_bytes()[:5000])
    with pytest.raises(ImageDecodeError, match=r"truncated\.png: cannot decode"):
        load_grey(truncated)
    text = tmp_path / "text.png"
    text.write_text("not an image")
    with pytest.raises(ImageDecodeError, match=r"text\.png: cannot decode"):
        load_grey(text)
    with pytest.raises(ImageDecodeError, match=r"absent\.png: file not found"):
        load_grey(tmp_path / "absent.png")


# ----------------------------------------------------------------------------------------------
# Decompression bombs: refused from the header, by name; real radiograph sizes load
# ----------------------------------------------------------------------------------------------


def png_chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk: length, type, data, CRC-32 of type and data."""
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def claiming_size(png: bytes, width: int, height: int) -> bytes:
    """``png`` with an IHDR that claims ``width`` x ``height``: a bomb's header, with a tiny body."""
    return png[:8] + png_chunk(b"IHDR", struct.pack(">II", width, height) + png[24:29]) + png[33:]


def with_sbit(png: bytes, bits: int) -> bytes:
    """``png`` (grey) with an sBIT chunk of ``bits`` significant bits right after its IHDR, written by hand."""
    return png[:33] + png_chunk(b"sBIT", bytes([bits])) + png[33:]


def test_a_decompression_bomb_is_refused_by_name(tmp_path):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(claiming_size(GREY.read_bytes(), 100_000, 100_000))  # over twice Pillow's limit: DecompressionBombError
    with pytest.raises(ImageDecodeError, match=r"bomb\.png: image too large to decode \(Pillow refuses it"):
        load_grey(bomb)
    large = tmp_path / "large.png"
    large.write_bytes(claiming_size(GREY.read_bytes(), 9000, 9000))  # under Pillow's limit, over MAX_IMAGE_PIXELS
    assert 9000 * 9000 > MAX_IMAGE_PIXELS
    with pytest.raises(ImageDecodeError, match=r"large\.png: image too large to decode \(9000x9000 = 81,000,000 pixels"):
        load_grey(large)


def test_a_lowered_pillow_limit_applies_too(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 1024x1024 is over twice it
    with pytest.raises(ImageDecodeError, match=r"00000211_000\.png: image too large to decode \(Pillow refuses it"):
        load_grey(GREY)


def test_a_4000_by_4000_radiograph_still_loads(tmp_path):
    path = tmp_path / "big.png"
    Image.fromarray(np.tile(np.arange(250, dtype=np.uint8), (4000, 16))).save(path)
    image = load_grey(path)
    assert image.shape == (1, 4000, 4000) and image[0, 0, 249].item() == pytest.approx(249 / 255)


# ----------------------------------------------------------------------------------------------
# 16-bit PNGs: divided by their real bit depth
# ----------------------------------------------------------------------------------------------

TWELVE_BIT = (np.arange(48, dtype=np.uint16).reshape(6, 8) * 85 + 3).clip(0, 4095)  # values < 4096, not multiples of 16


def sixteen_bit_png(path: Path, values: np.ndarray, sbit: int | None = None) -> Path:
    buffer = io.BytesIO()
    Image.fromarray(values.astype(np.uint16)).save(buffer, format="PNG")
    assert Image.open(io.BytesIO(buffer.getvalue())).mode == "I;16"
    data = buffer.getvalue()
    path.write_bytes(data if sbit is None else with_sbit(data, sbit))
    return path


@pytest.fixture
def fresh_announcements(monkeypatch):
    """A process that has not yet announced a bit-depth guess."""
    monkeypatch.setattr(images_module, "_ANNOUNCED", set())


def test_sbit_twelve_with_unscaled_values_is_divided_by_4095(tmp_path, fresh_announcements):
    path = sixteen_bit_png(tmp_path / "sbit12.png", TWELVE_BIT, sbit=12)
    with open(path, "rb") as handle:
        assert png_significant_bits(handle) == 12
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # sBIT says it: no guess, no warning
        image = load_grey(path)
    assert torch.equal(image[0], torch.from_numpy(TWELVE_BIT.astype(np.float32) / np.float32(4095)))


def test_sbit_twelve_scaled_as_the_png_standard_says_is_divided_by_65535(tmp_path, fresh_announcements):
    scaled = (TWELVE_BIT << 4) | (TWELVE_BIT >> 8)  # left shift with bit replication (PNG spec, sBIT)
    image = load_grey(sixteen_bit_png(tmp_path / "scaled.png", scaled, sbit=12))
    assert torch.equal(image[0], torch.from_numpy(scaled.astype(np.float32) / np.float32(65535)))
    np.testing.assert_allclose(image[0].numpy(), TWELVE_BIT / 4095, atol=1 / 4095)


def test_twelve_bit_values_without_sbit_are_read_as_12_bit_with_a_warning_naming_the_file(tmp_path, fresh_announcements):
    first = sixteen_bit_png(tmp_path / "no_sbit.png", TWELVE_BIT)
    with pytest.warns(
        UserWarning, match=r"no_sbit\.png: 16-bit image without an sBIT chunk and no value above 4095: read as 12-bit"
    ):
        image = load_grey(first)
    assert torch.equal(image[0], torch.from_numpy(TWELVE_BIT.astype(np.float32) / np.float32(4095)))
    assert image.max().item() > 0.9  # not almost black
    second = sixteen_bit_png(tmp_path / "again.png", TWELVE_BIT // 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per process
        assert torch.equal(load_grey(second)[0], torch.from_numpy((TWELVE_BIT // 2).astype(np.float32) / np.float32(4095)))


def test_full_range_16_bit_without_sbit_is_divided_by_65535_silently(tmp_path, fresh_announcements):
    values = np.array([[0, 1000, 40000], [65535, 20000, 5]], dtype=np.uint16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        image = load_grey(sixteen_bit_png(tmp_path / "full.png", values))
    assert torch.equal(image[0], torch.from_numpy(values.astype(np.float32) / np.float32(65535)))


def test_fourteen_bit_looking_values_without_sbit_warn(tmp_path, fresh_announcements):
    values = np.array([[0, 9000], [16000, 5000]], dtype=np.uint16)
    with pytest.warns(UserWarning, match=r"fourteen\.png: .*no value above 16383: read as 16-bit data"):
        image = load_grey(sixteen_bit_png(tmp_path / "fourteen.png", values))
    assert torch.equal(image[0], torch.from_numpy(values.astype(np.float32) / np.float32(65535)))


# ----------------------------------------------------------------------------------------------
# DICOM: the same pixels as a PNG give the same tensor
# ----------------------------------------------------------------------------------------------

NIH_PIXELS = np.asarray(Image.open(GREY))  # 1024x1024 uint8, mode L


@pytest.mark.parametrize(
    ("photometric", "shape", "inverted"),
    [
        ("MONOCHROME2", None, False),
        ("MONOCHROME2", "IDENTITY", False),
        ("MONOCHROME2", "INVERSE", True),  # INVERSE flips the displayed greyscale
        ("MONOCHROME1", None, True),
        ("MONOCHROME1", "INVERSE", True),  # the DX module's MONOCHROME1 + INVERSE: one inversion, not two
        ("MONOCHROME1", "IDENTITY", True),
    ],
)
def test_eight_bit_dicom_without_voi_equals_the_png(tmp_path, photometric, shape, inverted):
    stored = 255 - NIH_PIXELS if inverted else NIH_PIXELS
    attributes = {} if shape is None else {"PresentationLUTShape": shape}
    path = write_dicom(tmp_path / "nih.dcm", np.ascontiguousarray(stored), photometric=photometric, bits_stored=8, **attributes)
    grey, tags = load_dicom_grey(path)
    assert not tags["windowed"]
    assert torch.equal(grey, load_grey(GREY))


def test_eight_bit_dicom_with_a_rescale_equals_the_png(tmp_path):
    # the rescale maps the stored range too: without a window it only relabels the units
    path = write_dicom(tmp_path / "r.dcm", NIH_PIXELS, bits_stored=8, RescaleSlope=2, RescaleIntercept=-100)
    np.testing.assert_allclose(load_dicom_grey(path)[0].numpy(), load_grey(GREY).numpy(), rtol=0, atol=1 / 255 / 2)


def test_twelve_bit_dicom_without_window_is_its_stored_range_not_its_min_max(tmp_path):
    stored = np.round(NIH_PIXELS.astype(np.float64) * 4095 / 255).astype(np.uint16)
    grey, _ = load_dicom_grey(write_dicom(tmp_path / "twelve.dcm", stored, bits_stored=12))
    np.testing.assert_allclose(grey.numpy(), load_grey(GREY).numpy(), rtol=0, atol=1 / 255 / 2)
    # a darker image of the same scanner: each stored value shows as in the first, no stretch
    dark = stored // 4
    dark_grey, _ = load_dicom_grey(write_dicom(tmp_path / "dark.dcm", dark, bits_stored=12))
    assert dark_grey.max().item() < 0.26
    assert torch.equal(dark_grey[0], torch.from_numpy(dark.astype(np.float32) / np.float32(4095)))


def test_sixteen_bit_dicom_with_an_offset_rescale_divides_by_its_stored_range(tmp_path):
    stored = np.array([[0, 1000], [40000, 65535]], dtype=np.uint16)
    grey, _ = load_dicom_grey(write_dicom(tmp_path / "s.dcm", stored, bits_stored=16, RescaleSlope=1, RescaleIntercept=-1024))
    np.testing.assert_allclose(grey[0].numpy(), stored / 65535.0, rtol=0, atol=1e-7)
