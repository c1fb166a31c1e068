"""Configs and command lines written before the data options had sections keep working.

A ``--config`` file whose ``data:`` names options flat (``image_size: 64``, also under a ``fit:``
key) is passed on as the same config in the sectioned layout (a YAML string, which jsonargparse's
``--config`` reads like a file); ``--data.image_size=64`` becomes ``--data.images.size=64``. The
names come from the one table, :data:`cxr_lightning.data.options.FLAT_OPTIONS`. One line on
stderr says what was translated (one line however many places held flat names).

A run's saved ``config.yaml`` from before ``resume_checkpoint`` became its own callback also lists
the ``ModelCheckpoint`` options that callback no longer has (``save_last``, ``monitor``...); they
only ever held the values the CLI fixed, so they are dropped (``--config runs/x/config.yaml``, as
the report's rerun advice says, keeps working).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path

import yaml

from cxr_lightning.data.options import FLAT_OPTIONS, ConfigValueError, is_flat_entry, sectioned_data_config

CONFIG_FLAGS = ("--config", "-c")
# A config may hold the data options at its top level (a subcommand's --config) or under the subcommand.
SUBCOMMAND_KEYS = ("fit", "validate", "test", "predict")
HINT = "see `cxr-lightning fit --print_config`"
# What resume_checkpoint (LatestCheckpoint) takes; dirpath is linked from trainer.default_root_dir.
RESUME_CHECKPOINT_OPTIONS = ("dirpath", "every_n_train_steps", "train_time_interval")


def translate_legacy_args(args: list[str]) -> list[str]:
    """``args`` with flat data options in config files and ``--data.*`` overrides in the sectioned layout."""
    out = list(args)
    notes: list[str] = []  # "<where>: flat data options (...) are read as ...", one per file and one for the overrides
    flat_overrides: list[str] = []
    i = 0
    while i < len(out):
        arg = out[i]
        name, equals, inline = arg.partition("=")
        has_next = i + 1 < len(out)
        if name in CONFIG_FLAGS and (equals or has_next):
            index, prefix = (i, name + "=") if equals else (i + 1, "")
            out[index] = prefix + _translated_config(inline if equals else out[i + 1], notes, data_only=False)
            i = index + 1
            continue
        if name == "--data" and (equals or has_next):  # --data FILE: a file of the data options alone
            index, prefix = (i, "--data=") if equals else (i + 1, "")
            out[index] = prefix + _translated_config(inline if equals else out[i + 1], notes, data_only=True)
            i = index + 1
            continue
        if name.startswith("--data.") and name.count(".") == 1:
            key = name[len("--data.") :]
            value = inline if equals else (out[i + 1] if has_next else None)
            if key in FLAT_OPTIONS and key != FLAT_OPTIONS[key] and _is_flat_override(key, value):
                out[i] = f"--data.{FLAT_OPTIONS[key]}" + (equals + inline if equals else "")
                flat_overrides.append(key)
        i += 1
    if flat_overrides:
        notes.append(_note("command line", flat_overrides, prefix="--data."))
    if notes:
        sys.stderr.write(f"{'; '.join(notes)}; {HINT}\n")
    return out


def _is_flat_override(key: str, value: str | None) -> bool:
    """``--data.split official`` is the flat name; ``--data.split FILE`` or ``--data.split '{name: ...}'`` the section."""
    if key != "split" or value is None:
        return True
    if Path(value).is_file():
        return False
    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError:
        return True
    return not isinstance(parsed, Mapping)


def _translated_config(value: str, notes: list[str], data_only: bool) -> str:
    """The config ``value`` names (a file, or a YAML string) as is, or as a YAML string with its data options sectioned."""
    path = Path(value)
    if not path.is_file():
        return value  # a YAML string, or an error jsonargparse reports
    try:
        config = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return value  # jsonargparse reports the file's own error
    if not isinstance(config, Mapping):
        return value
    config, flat = _sectioned(config, data_only, path)
    retired = False if data_only else _drop_retired_resume_options(config)
    if not flat and not retired:
        return value
    if not flat:
        return yaml.safe_dump(config, sort_keys=False)
    notes.append(_note(str(path), flat, prefix="data."))
    return yaml.safe_dump(config, sort_keys=False)


def _sectioned(config: Mapping, data_only: bool, source: Path) -> tuple[dict, list[str]]:
    """``config`` with each data mapping in the sectioned layout, and the flat names it held."""
    config = dict(config)
    flat: list[str] = []
    if data_only:
        places = [(None, None)]
    else:
        places = [(None, "data"), *((key, "data") for key in SUBCOMMAND_KEYS if isinstance(config.get(key), Mapping))]
    for parent, key in places:
        holder = config if parent is None else dict(config[parent])
        data = holder if key is None else holder.get(key)
        if not isinstance(data, Mapping):
            continue
        names = [name for name, value in data.items() if is_flat_entry(name, value)]
        if not names:
            continue
        try:
            sectioned = sectioned_data_config(data)
        except ConfigValueError as error:
            raise SystemExit(f"{source}: {error}") from None
        flat += names
        if key is None:
            return sectioned, flat
        holder[key] = sectioned
        if parent is not None:
            config[parent] = holder
    return config, flat


def _drop_retired_resume_options(config: dict) -> bool:
    """Drop the ModelCheckpoint options an older saved config lists under ``resume_checkpoint``; whether any were."""
    dropped = False
    for holder in [config, *(config[k] for k in SUBCOMMAND_KEYS if isinstance(config.get(k), Mapping))]:
        options = holder.get("resume_checkpoint")
        if isinstance(options, Mapping) and any(k not in RESUME_CHECKPOINT_OPTIONS for k in options):
            holder["resume_checkpoint"] = {k: v for k, v in options.items() if k in RESUME_CHECKPOINT_OPTIONS}
            dropped = True
    return dropped


def _note(where: str, flat: list[str], prefix: str) -> str:
    return f"{where}: flat data options ({', '.join(flat)}) are read as {', '.join(prefix + FLAT_OPTIONS[name] for name in flat)}"
