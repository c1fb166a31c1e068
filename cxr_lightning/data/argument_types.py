"""argparse value types shared by the ``cxr-lightning data`` commands: a bad value is refused by name."""

from __future__ import annotations

import argparse


def open_fraction(text: str) -> float:
    """argparse type: a number strictly between 0 and 1 (a validation fraction)."""
    value = float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1 (exclusive), got {text}")
    return value


def closed_fraction(text: str) -> float:
    """argparse type: a number from 0 to 1 (one part of the patient split)."""
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value
