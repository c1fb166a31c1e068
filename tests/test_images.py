"""Decoding real NIH PNGs (grey and RGBA) and other modes to one grey channel in [0, 1]."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from cxr_lightning.data.images import ImageDecodeError, load_grey
from tests.conftest import NIH_SAMPLE

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
