"""The metadata field parsers (age, sex, view): one definition for the NIH CSV, DICOM tags and inference's CSV.

* **age**: a number of years (``58``, ``'58'``, ``'52.5'``) or a DICOM Age String (``'058Y'``,
  ``'006M'``, ``'010W'``, ``'003D'``: 1 to 3 digits and a unit, any case, spaces allowed),
  converted to years. Unusable: not a number (``'abc'``, empty, ``None``, a bool), outside
  0..:data:`MAX_AGE_YEARS` years. Numbers are decimal numbers with ASCII digits as pandas reads
  them: Python-only spellings such as ``'1_0'`` (10) or Arabic-Indic digits are not ages
  (the DICOM AS repertoire is ``0-9DWMY``).
* **sex**: ``M``/``F``, also ``male``/``female``, any case and surrounding spaces; else unknown ``''``.
* **view**: ``PA``/``AP``, any case; else unknown ``''`` (laterals etc. are unknown to the models).

:func:`parse_ages` says *why* each age is unusable, so the NIH reader can count and report it;
:func:`parse_age` is the single-value form (NaN when unusable).
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["MAX_AGE_YEARS", "SEXES", "VIEWS", "ParsedAges", "parse_age", "parse_ages", "parse_sex", "parse_view"]

MAX_AGE_YEARS = 120
SEXES = ("M", "F")
VIEWS = ("PA", "AP")
#: a DICOM Age String; [0-9], not \d, which would also take other scripts' digits
_AGE_STRING = re.compile(r"^\s*([0-9]{1,3})\s*([DWMY])\s*$", re.IGNORECASE)
_AGE_UNIT_YEARS = {"D": 1 / 365.25, "W": 7 / 365.25, "M": 1 / 12, "Y": 1.0}
_SEX_WORDS = {"M": "M", "MALE": "M", "F": "F", "FEMALE": "F"}


@dataclass(frozen=True)
class ParsedAges:
    """Ages in years (NaN: unusable) and, per value, why it is what it is (the masks are disjoint but for ``from_age_string``)."""

    years: np.ndarray
    #: written the DICOM way (``058Y``) and converted (it may still be out of range)
    from_age_string: np.ndarray
    #: neither a number nor an age string (empty included)
    non_numeric: np.ndarray
    #: a number outside 0..MAX_AGE_YEARS, set to NaN
    out_of_range: np.ndarray


def _age_cell(value: Any) -> Any:
    """A value as pandas' number parser should see it: numbers as floats, text stripped, anything else missing."""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_)):
        return float(value)
    return math.nan  # None, a bool, a DICOM multi-value...: not an age


def parse_ages(values: Iterable[Any]) -> ParsedAges:
    """Parse many ages at once (a CSV column of strings, numbers, NaN; see the module docstring)."""
    cells = pd.Series([_age_cell(value) for value in values], dtype=object)
    numeric = pd.to_numeric(cells, errors="coerce").astype(float)
    texts = cells.map(lambda cell: cell if isinstance(cell, str) else "")
    unit = texts.str.extract(_AGE_STRING)
    from_age_string = numeric.isna() & unit[0].notna()
    scale = unit[1].str.upper().map(_AGE_UNIT_YEARS)
    numeric = numeric.where(~from_age_string, unit[0].astype(float) * scale)
    years = numeric.to_numpy(dtype=float, copy=True)
    non_numeric = np.isnan(years)
    out_of_range = ~non_numeric & ((years < 0) | (years > MAX_AGE_YEARS))
    years[out_of_range] = np.nan
    return ParsedAges(years=years, from_age_string=from_age_string.to_numpy(), non_numeric=non_numeric, out_of_range=out_of_range)


def parse_age(value: Any) -> float:
    """One age in years (a number or a DICOM Age String such as ``'058Y'``); NaN if unusable."""
    return float(parse_ages([value]).years[0])


def parse_sex(value: Any) -> str:
    """``'M'``, ``'F'`` (from M/F/male/female, any case), else ``''`` (unknown)."""
    return _SEX_WORDS.get(value.strip().upper(), "") if isinstance(value, str) else ""


def parse_view(value: Any) -> str:
    """``'PA'`` or ``'AP'`` (any case), else ``''`` (unknown)."""
    text = value.strip().upper() if isinstance(value, str) else ""
    return text if text in VIEWS else ""
