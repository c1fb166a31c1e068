"""Overlay images: a heatmap blended on the grey image, with boxes and a title, written as PNG."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib import colormaps
from PIL import Image, ImageDraw

from cxr_lightning.explain.localization import Box

__all__ = ["overlay"]


def _as_grey(image: torch.Tensor | np.ndarray) -> np.ndarray:
    array = image.detach().float().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image, dtype=np.float32)
    if array.ndim == 3:
        array = array.mean(axis=0)
    if array.ndim != 2:
        raise ValueError(f"image must be (H, W), (1, H, W) or (C, H, W), got {array.shape}")
    return np.clip(array, 0.0, 1.0)


def _resize_map(heatmap: torch.Tensor | np.ndarray, height: int, width: int) -> np.ndarray:
    heat = torch.as_tensor(np.asarray(heatmap, dtype=np.float32))
    if tuple(heat.shape) != (height, width):
        heat = F.interpolate(heat[None, None], size=(height, width), mode="bilinear", align_corners=False)[0, 0]
    return heat.clamp(0.0, 1.0).numpy()


def overlay(
    image: torch.Tensor | np.ndarray,
    heatmap: torch.Tensor | np.ndarray,
    path: str | Path,
    alpha: float = 0.45,
    boxes: Iterable[Box] = (),
    title: str | None = None,
    cmap: str = "jet",
) -> Path:
    """Write ``image`` (grey in [0, 1]) with ``heatmap`` blended on top as a PNG.

    The heatmap is resized (bilinear) to the image. ``boxes`` ``(x, y, w, h)`` in image pixels
    are outlined in green; ``title`` is written in the top-left corner.
    """
    grey = _as_grey(image)
    height, width = grey.shape
    heat = _resize_map(heatmap, height, width)
    colour = colormaps[cmap](heat)[..., :3]
    blended = (1.0 - alpha) * grey[..., None] + alpha * colour
    picture = Image.fromarray(np.clip(np.rint(blended * 255.0), 0, 255).astype(np.uint8), mode="RGB")
    draw = ImageDraw.Draw(picture)
    line = max(1, round(max(height, width) / 256))
    for x, y, w, h in boxes:
        draw.rectangle([float(x), float(y), float(x + w) - 1, float(y + h) - 1], outline=(0, 255, 0), width=line)
    if title:
        draw.text((2, 2), title, fill=(255, 255, 255))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    picture.save(path, format="PNG")
    return path
