"""The metadata (age, sex, view) of files being predicted: a user's CSV, matched to files, merged with DICOM tags.

Per field, the first source that knows it wins:

1. an optional CSV with the columns ``image``, ``age``, ``sex``, ``view`` or NIH's
   ``Image Index``, ``Patient Age``, ``Patient Gender``, ``View Position`` (so the NIH metadata
   CSV itself works). Rows match a file by its path as written, else its file name, else its
   name without suffix (when unique). Values are read by :mod:`cxr_lightning.data.fields`:
   ages may be numbers or DICOM strings (``058Y``); sex ``M``/``F`` (or male/female); view
   ``PA``/``AP``;
2. the DICOM tags ``PatientAge``, ``PatientSex``, ``ViewPosition``;
3. defaults: an unknown age is imputed by the metadata encoder with the **training split's mean
   age** (as in training), an unknown sex or view is ``''`` (the encoder's "unknown": all-zero
   one-hots, or 0.5 for the CNN encoding's sex).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import pandas as pd

from cxr_lightning.data.fields import parse_ages, parse_sex, parse_view

__all__ = ["METADATA_COLUMNS", "MetadataLookup", "merge_metadata", "read_metadata_table"]

#: accepted metadata CSV column names (compared case-insensitively) -> our name
METADATA_COLUMNS = {
    "image": "image",
    "image index": "image",
    "path": "image",
    "file": "image",
    "age": "age",
    "patient age": "age",
    "sex": "sex",
    "patient gender": "sex",
    "patient sex": "sex",
    "gender": "sex",
    "view": "view",
    "view position": "view",
}


def read_metadata_table(source: str | Path | pd.DataFrame) -> pd.DataFrame:
    """A metadata CSV (or a frame already read) as a frame with ``image``, ``age`` (years, NaN unknown), ``sex``, ``view``.

    Accepts our names (``image, age, sex, view``) or NIH's (``Image Index, Patient Age, Patient
    Gender, View Position``); only the image column is required. Ages may be numbers or DICOM age
    strings (``058Y``), sexes and views any case. Duplicated images keep their first row.
    """
    if isinstance(source, pd.DataFrame):
        raw, where = source, "metadata table"
    else:
        where = str(source)
        try:
            raw = pd.read_csv(Path(source), dtype=str, keep_default_na=False, na_values=[""])
        except (OSError, pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as err:
            raise ValueError(f"cannot read metadata CSV {source}: {err}") from err
    rename: dict[str, str] = {}
    for column in raw.columns:
        ours = METADATA_COLUMNS.get(str(column).strip().lower())
        if ours is not None and ours not in rename.values():
            rename[column] = ours
    raw = raw.rename(columns=rename)
    if "image" not in raw.columns:
        raise ValueError(f"{where}: no image column; expected 'image' or 'Image Index' (found {list(raw.columns)})")
    blank = pd.Series([None] * len(raw), index=raw.index)
    frame = pd.DataFrame({"image": [str(v).strip() if isinstance(v, str) else "" for v in raw["image"]]}, index=raw.index)
    frame["age"] = parse_ages(raw.get("age", blank)).years
    frame["sex"] = [parse_sex(v) for v in raw.get("sex", blank)]
    frame["view"] = [parse_view(v) for v in raw.get("view", blank)]
    frame = frame[frame["image"] != ""]
    duplicated = frame["image"].duplicated()
    if duplicated.any():
        print(f"[metadata] {where}: {int(duplicated.sum())} duplicated image rows; the first of each is used", file=sys.stderr)
        frame = frame[~duplicated]
    return frame.reset_index(drop=True)


class MetadataLookup:
    """Finds a file's row of a metadata table: by the longest path suffix, else by a unique file name or stem.

    A row ``a/scan.png`` matches the file ``/data/a/scan.png`` (and not ``/data/b/scan.png``). A
    bare name matches a file of that name only when no other row has the same name; a name shared
    by several rows is ambiguous: no row is used and the file is counted in ``ambiguous``.
    """

    def __init__(self, table: pd.DataFrame | None):
        self.by_path: dict[tuple[str, ...], dict[str, Any]] = {}
        self.by_name: dict[str, dict[str, Any] | None] = {}
        self.by_stem: dict[str, dict[str, Any] | None] = {}
        self.ambiguous: set[str] = set()
        if table is None:
            return
        for row in table.to_dict("records"):
            key = Path(row["image"])
            self.by_path.setdefault(key.parts, row)
            self.by_name[key.name] = None if key.name in self.by_name else row  # None: ambiguous
            self.by_stem[key.stem] = None if key.stem in self.by_stem else row

    def find(self, path: Path) -> dict[str, Any] | None:
        for parts in (path.parts, path.resolve().parts):
            for k in range(len(parts), 1, -1):  # the longest suffix of two or more parts first
                row = self.by_path.get(parts[-k:])
                if row is not None:
                    return row
        for index, key in ((self.by_name, path.name), (self.by_stem, path.stem)):
            if key in index:
                if index[key] is None:
                    self.ambiguous.add(str(path))
                return index[key]
        return None


def merge_metadata(csv_row: dict[str, Any] | None, tags: dict[str, Any] | None) -> tuple[dict[str, Any], str]:
    """Per field the first known of CSV, DICOM tags, unknown; and the sources used."""
    values: dict[str, Any] = {"age": math.nan, "sex": "", "view": ""}
    sources: list[str] = []
    for given, source in ((csv_row, "csv"), (tags, "dicom")):
        if not given:
            continue
        for key in values:
            known = not (isinstance(values[key], float) and math.isnan(values[key])) and values[key] != ""
            candidate = given.get(key)
            usable = candidate is not None and candidate != "" and not (isinstance(candidate, float) and math.isnan(candidate))
            if not known and usable:
                values[key] = candidate
                if source not in sources:
                    sources.append(source)
    return values, "+".join(sources) or "default"
