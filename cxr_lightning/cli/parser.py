"""The argument parser of every command outside LightningCLI, spelled as LightningCLI spells options.

LightningCLI (``fit``, ``validate``, ``test``, ``predict``) spells options with underscores
(``--ckpt_path``, ``--trust_model_class``, ``--data.data_root``) and takes no abbreviation. The other
commands (``predict-files``, ``export``, ``explain``, ``report``, ``data ...``) are built with
:class:`CommandParser`, so one spelling serves every command: the same underscores, the same names
for the same things (``--ckpt_path``, ``--data_root``), and no prefix matching (argparse's default
would take ``--out_dir`` for ``--out`` or ``--image`` for ``--images``).

Scripts written for earlier versions keep working: a hyphenated spelling (``--batch-size``) is read
as its underscore one, and the renamed options (``--checkpoint``, ``--root``, ``--size``) as their new names.
Help shows one spelling only.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

# Earlier names of options that now carry LightningCLI's name for the same thing.
RENAMED_OPTIONS = {"--checkpoint": "--ckpt_path", "--root": "--data_root", "--size": "--image_size"}


def canonical_option(token: str) -> str:
    """``--batch-size=8`` -> ``--batch_size=8``; ``--checkpoint`` -> ``--ckpt_path``; anything else unchanged."""
    if not token.startswith("--") or token == "--":
        return token
    name, equals, value = token.partition("=")
    name = "--" + name[2:].replace("-", "_")
    return RENAMED_OPTIONS.get(name, name) + equals + value


def canonical_arguments(args: Sequence[str]) -> list[str]:
    """Every option token in its one spelling; values and everything after a bare ``--`` untouched."""
    out: list[str] = []
    rest = False
    for token in map(str, args):
        if token == "--":
            rest = True
        out.append(token if rest else canonical_option(token))
    return out


class CommandParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` with no abbreviations and the one option spelling (see the module)."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs["allow_abbrev"] = False  # also in every subcommand: add_subparsers builds them with this class
        super().__init__(*args, **kwargs)

    def add_argument(self, *names, **kwargs):
        for name in names:
            if name.startswith("--") and ("-" in name[2:] or name in RENAMED_OPTIONS):
                raise ValueError(f"option {name}: spell it {canonical_option(name)} (cxr_lightning.cli.parser)")
        return super().add_argument(*names, **kwargs)

    def parse_known_args(self, args=None, namespace=None):
        # Subcommands are parsed by their own parser's parse_known_args, so they are rewritten too.
        return super().parse_known_args(canonical_arguments(sys.argv[1:] if args is None else args), namespace)
