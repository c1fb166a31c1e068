"""The report's markdown: tables and numbers, written one way for every section."""

from __future__ import annotations

import math
from collections.abc import Sequence


def number(value, digits: int = 4, undefined: str = "n/a") -> str:
    """``0.7745``; ``undefined`` for an undefined value (None, NaN or infinite)."""
    return undefined if value is None or not math.isfinite(float(value)) else f"{value:.{digits}f}"


def interval(lower, upper, digits: int = 3) -> str:
    """`` [0.761, 0.788]``, or nothing when the bounds are undefined."""
    if lower is None or upper is None or any(isinstance(v, float) and math.isnan(v) for v in (lower, upper)):
        return ""
    return f" [{lower:.{digits}f}, {upper:.{digits}f}]"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A markdown table: the first column left-aligned, the others right-aligned; a '|' in a cell is escaped."""
    def cells(values):
        return "| " + " | ".join(str(v).replace("|", "\\|") for v in values) + " |"

    lines = [cells(header), "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    lines += [cells(row) for row in rows]
    return "\n".join(lines)
