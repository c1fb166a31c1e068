"""Overlay images: a heatmap blended on the grey image, with boxes and a title, written as PNG."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib import colormaps
from PIL import Image, ImageDraw, ImageFont

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


def _font(size: int) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def _wrapped(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> list[str]:
    """``text`` cut into lines that fit ``width`` pixels."""
    lines: list[str] = []
    for paragraph in text.split("\n"):
        line = ""
        for word in paragraph.split(" "):
            trial = f"{line} {word}".strip()
            if line and draw.textlength(trial, font=font) > width:
                lines.append(line)
                line = word
            else:
                line = trial
        lines.append(line)
    return lines


def overlay(
    image: torch.Tensor | np.ndarray,
    heatmap: torch.Tensor | np.ndarray,
    path: str | Path,
    alpha: float = 0.45,
    boxes: Iterable[Box] = (),
    title: str | None = None,
    cmap: str = "jet",
) -> Path:
    """Write ``image`` (grey in [0, 1]) with ``heatmap`` blended on top as a PNG, with a colour bar and a caption.

    The picture keeps the image's pixels at the top left (``(x, y)`` of the image is ``(x, y)``
    of the PNG); the heatmap is resized (bilinear) to it, ``boxes`` ``(x, y, w, h)`` in image
    pixels are outlined in green. To the right, the colour bar of the heatmap (0 to 1); below, the
    caption: ``title``, what the colours and boxes mean, and a warning when the heatmap is empty
    (all zero: the model's gradient gave no positive evidence for the label, so there is nothing
    to show, and the localisation scores count it as a miss).
    """
    grey = _as_grey(image)
    height, width = grey.shape
    heat = _resize_map(heatmap, height, width)
    colour = colormaps[cmap](heat)[..., :3]
    blended = (1.0 - alpha) * grey[..., None] + alpha * colour
    shown = Image.fromarray(np.clip(np.rint(blended * 255.0), 0, 255).astype(np.uint8), mode="RGB")
    draw = ImageDraw.Draw(shown)
    line = max(1, round(max(height, width) / 256))
    for x, y, w, h in boxes:
        draw.rectangle([float(x), float(y), float(x + w) - 1, float(y + h) - 1], outline=(0, 255, 0), width=line)

    font = _font(max(10, width // 45))
    bar_width = max(8, width // 32)
    margin = max(4, width // 100)
    label_width = int(draw.textlength("1.0", font=font)) + margin
    empty = float(np.asarray(heatmap).max()) <= 0.0 if np.asarray(heatmap).size else True
    caption = (title + "\n" if title else "") + "Grad-CAM: red = strongest evidence for the label, blue = none" + (
        "; green boxes: NIH's expert bounding boxes" if list(boxes) else "")
    if empty:
        caption += "\nEMPTY HEATMAP: no positive evidence for this label (scored as a miss)"
    canvas_width = width + 2 * margin + bar_width + label_width
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    lines = _wrapped(measure, caption, font, canvas_width - 2 * margin)
    line_height = int(font.size * 1.25) if hasattr(font, "size") else 14
    canvas = Image.new("RGB", (canvas_width, height + 2 * margin + line_height * len(lines)), (255, 255, 255))
    canvas.paste(shown, (0, 0))
    # the colour bar: 1 at the top, 0 at the bottom
    ramp = colormaps[cmap](np.linspace(1.0, 0.0, height))[:, :3]
    bar = np.repeat(np.clip(np.rint(ramp * 255.0), 0, 255).astype(np.uint8)[:, None, :], bar_width, axis=1)
    canvas.paste(Image.fromarray(bar, mode="RGB"), (width + margin, 0))
    pen = ImageDraw.Draw(canvas)
    pen.text((width + margin + bar_width + 2, 0), "1", fill=(0, 0, 0), font=font)
    pen.text((width + margin + bar_width + 2, height - line_height), "0", fill=(0, 0, 0), font=font)
    for k, text in enumerate(lines):
        red = empty and text.startswith("EMPTY")
        pen.text((margin, height + margin + k * line_height), text, fill=(200, 0, 0) if red else (0, 0, 0), font=font)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path, format="PNG")
    return path
