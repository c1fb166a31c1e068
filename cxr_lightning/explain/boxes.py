"""NIH's bounding-box file, read into our label names.

NIH's ``BBox_List_2017.csv`` (``Image Index,Finding Label,Bbox [x,y,w,h],,,``; 984 boxes of 8
findings, its ``Infiltrate`` is our ``Infiltration``) gives boxes in pixels of the original
1024 x 1024 image; :func:`cxr_lightning.explain.localization.scale_box` brings them to the model input.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

__all__ = ["BOX_LABEL_ALIASES", "read_bbox_csv"]

#: NIH box-file spellings -> our label names
BOX_LABEL_ALIASES = {"Infiltrate": "Infiltration", "Pleural Thickening": "Pleural_Thickening"}


def read_bbox_csv(path: str | Path) -> pd.DataFrame:
    """NIH's ``BBox_List_2017.csv`` (or any ``image,label,x,y,w,h`` CSV with a header) as
    ``image, label, x, y, w, h``; label aliases (``Infiltrate``) become our names."""
    raw = pd.read_csv(path, header=None, skiprows=1, usecols=range(6), dtype=str, skip_blank_lines=True)
    raw.columns = ["image", "label", "x", "y", "w", "h"]
    raw = raw.dropna(subset=["image"])
    frame = pd.DataFrame({"image": raw["image"].str.strip(), "label": raw["label"].str.strip().replace(BOX_LABEL_ALIASES)})
    for column in ("x", "y", "w", "h"):
        frame[column] = pd.to_numeric(raw[column], errors="coerce")
    bad = frame[["x", "y", "w", "h"]].isna().any(axis=1) | (frame["w"] <= 0) | (frame["h"] <= 0)
    if bad.any():
        print(f"[boxes] {path}: {int(bad.sum())} rows without a valid box ignored", file=sys.stderr)
    return frame[~bad].reset_index(drop=True)
