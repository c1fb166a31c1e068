"""Shipped configs by bare name: ``--config resnet_log`` finds ``configs/resnet_log.yaml`` from any directory.

Configs and ``--data.*`` overrides in the flat layout of before the data sections are translated
here too (:mod:`cxr_lightning.cli.legacy_options`), so every way in meets one layout.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from cxr_lightning.cli.legacy_options import translate_legacy_args


def shipped_config(name: str) -> Path | None:
    """Path of a config shipped with the package, by bare name, or None."""
    stem = Path(name).name
    base = resources.files("cxr_lightning.configs")
    for candidate in (stem, stem + ".yaml"):
        path = Path(str(base / candidate))
        if path.is_file():
            return path
    return None


def shipped_config_names() -> list[str]:
    return sorted(p.name for p in Path(str(resources.files("cxr_lightning.configs"))).glob("*.yaml"))


def resolve_config_args(args: list[str]) -> list[str]:
    """Replace each ``--config X`` whose X is not a file by the shipped config of that name; translate flat data options."""
    out = list(args)
    for i, arg in enumerate(out):
        value, prefix = None, ""
        if arg in ("--config", "-c") and i + 1 < len(out):
            value, index = out[i + 1], i + 1
        elif arg.startswith("--config="):
            value, index, prefix = arg.split("=", 1)[1], i, "--config="
        if value is None or Path(value).is_file():
            continue
        found = shipped_config(value)
        if found is None:
            raise SystemExit(f"config {value!r} is neither a file nor a shipped config; shipped: {', '.join(shipped_config_names())}")
        out[index] = prefix + str(found)
    return translate_legacy_args(out)
