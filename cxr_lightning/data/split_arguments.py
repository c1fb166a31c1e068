"""The split options of the ``cxr-lightning data`` commands (``stats``, ``split``, ``prepare``), defined once.

A bad value is refused by name (argparse types below); :func:`split_from_args` builds the split
the options describe, with ``--data_root``'s metadata CSV and official lists when the options name none.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import get_args

from cxr_lightning.data.metadata import TEST_LIST, TRAIN_VAL_LIST, find_image_list
from cxr_lightning.data.splits import PAPER_SEED, PAPER_VAL_FRACTION, PATIENT_FRACTIONS, Split, SplitName, make_split

SPLIT_NAMES: tuple[str, ...] = get_args(SplitName)


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


def add_split_arguments(
    parser: argparse.ArgumentParser,
    choices: tuple[str, ...] = SPLIT_NAMES,
    default: str = "paper",
    split_help: str = "which split (default: paper)",
) -> None:
    """``--split`` (of ``choices``) and the options that shape it; the command adds its own ``--data_root``."""
    parser.add_argument("--split", choices=choices, default=default, help=split_help)
    parser.add_argument("--metadata_csv", type=Path, default=None, help="metadata CSV (default: ROOT's, else the packaged one)")
    parser.add_argument("--train_val_list", type=Path, default=None, help="official train_val list (default: ROOT's, else the packaged one)")
    parser.add_argument("--test_list", type=Path, default=None, help="official test list (default: ROOT's, else the packaged one)")
    parser.add_argument("--val_fraction", type=open_fraction, default=PAPER_VAL_FRACTION, help="official split: patient fraction of train_val for validation")
    parser.add_argument("--seed", type=int, default=PAPER_SEED, help="official/patient split seed")
    parser.add_argument("--fractions", type=closed_fraction, nargs=3, default=PATIENT_FRACTIONS, metavar=("TRAIN", "VAL", "TEST"), help="patient split: patient fractions")
    parser.add_argument("--stratify", action="store_true", help="patient split: stratify patients by their rarest finding")


def split_from_args(args: argparse.Namespace, meta) -> Split:
    """The split the options of :func:`add_split_arguments` (and ``--data_root``) describe."""
    return make_split(
        args.split,
        meta,
        args.train_val_list or find_image_list(args.data_root, TRAIN_VAL_LIST),
        args.test_list or find_image_list(args.data_root, TEST_LIST),
        val_fraction=args.val_fraction,
        seed=args.seed,
        fractions=tuple(args.fractions),
        stratify=args.stratify,
    )
