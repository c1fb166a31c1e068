"""Locating and loading pretrained backbone weights without network access.

Shared by :mod:`cxr_lightning.models.resnet` and :mod:`cxr_lightning.models.beit`.  Everything here works
offline; when weights cannot be found a :class:`WeightsNotFoundError` says which file was wanted, every
place it was looked for and how to fetch it on a machine with internet access.
"""

from __future__ import annotations

import os
import pickle
import struct
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "WeightsFileError",
    "WeightsNotFoundError",
    "extract_state_dict",
    "hf_cache_dir",
    "hf_offline",
    "load_state_dict_file",
    "safe_torch_load",
    "strip_to_model_keys",
    "torch_hub_checkpoint_dir",
]

# Keys under which training frameworks store a model's weights inside a larger checkpoint dict.
_STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model", "module", "net")


class WeightsNotFoundError(FileNotFoundError):
    """Pretrained weights were asked for but are not available locally (and could not be downloaded).

    The message names the file or model id, each place searched, and how to fetch it.
    """


class WeightsFileError(ValueError):
    """A weights file that cannot be loaded safely: empty, truncated, not a torch file, or pickled code."""


def torch_hub_checkpoint_dir() -> Path:
    """torchvision's weights cache: ``torch.hub.get_dir()/checkpoints`` (``$TORCH_HOME/hub/checkpoints``)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache searched by ``from_pretrained`` (``$HF_HUB_CACHE``, ``$HF_HOME/hub``...)."""
    try:
        from huggingface_hub import constants

        return Path(constants.HF_HUB_CACHE)
    except Exception:  # pragma: no cover - huggingface_hub always ships with transformers
        home = os.environ.get("HF_HOME", os.path.join(os.path.expanduser("~"), ".cache", "huggingface"))
        return Path(os.environ.get("HF_HUB_CACHE", os.path.join(home, "hub")))


def _truthy(value: str | None) -> bool:
    return value is not None and value.strip().upper() in {"1", "ON", "YES", "TRUE"}


def hf_offline() -> bool:
    """Whether Hugging Face offline mode is on, read from the environment *now*.

    ``huggingface_hub.constants.HF_HUB_OFFLINE`` is frozen at import time, so the environment
    (``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE``) is read again here as well.
    """
    if _truthy(os.environ.get("HF_HUB_OFFLINE")) or _truthy(os.environ.get("TRANSFORMERS_OFFLINE")):
        return True
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except Exception:  # pragma: no cover
        return False


def extract_state_dict(obj: Any, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Return the tensor state dict inside ``obj``: a plain state dict or a checkpoint wrapping one.

    Recognises ``{"state_dict": ...}`` (Lightning), ``{"model_state_dict": ...}``, ``{"model": ...}`` and
    similar; nested wrappers are unwrapped.  Non-tensor entries of a state dict are dropped.
    """
    seen = 0
    while isinstance(obj, Mapping) and seen < 4:
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return dict(obj)
        inner = next((obj[k] for k in _STATE_DICT_KEYS if k in obj and isinstance(obj[k], Mapping)), None)
        if inner is None:
            tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
            if tensors:
                return tensors
            break
        obj = inner
        seen += 1
    raise ValueError(
        f"{source} does not contain a state dict (a mapping of parameter names to tensors, possibly under "
        f"one of the keys {list(_STATE_DICT_KEYS)}); got {type(obj).__name__}"
    )


def load_state_dict_file(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Load a ``.pth``/``.pt``/``.ckpt`` file from disk (CPU) and return its state dict.

    Only ever with ``torch.load(weights_only=True)``: a weights file is data, never code. A file that
    pickles other Python objects is refused with a message that says how to re-save its tensors.

    Raises:
        WeightsNotFoundError: ``path`` does not exist.
        WeightsFileError: the file is empty, truncated, not a torch file, or holds pickled objects.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise WeightsNotFoundError(f"weights file not found: {str(path)!r} (resolved: {str(path.resolve())!r})")
    obj = safe_torch_load(path, what="weights file", error=WeightsFileError)
    try:
        return extract_state_dict(obj, source=str(path))
    except ValueError as err:
        raise WeightsFileError(str(err)) from err


def safe_torch_load(path: Path, what: str, error: type[Exception], map_location: Any = "cpu") -> Any:
    """``torch.load(path, weights_only=True)`` with one-line errors that name the file and what to do.

    ``weights_only=True`` unpickles only tensors, containers and plain values; anything else (a class,
    a function call: what a malicious pickle uses to run code) is refused before it is built.
    """
    try:
        if path.stat().st_size == 0:
            raise error(f"{what} {path} is empty (0 bytes): it was not written completely; use another copy")
        return torch.load(path, map_location=map_location, weights_only=True)
    except error:
        raise
    except pickle.UnpicklingError as err:
        if "weights only" not in str(err).lower():  # a damaged pickle, not a refused object
            raise error(f"{what} {path} cannot be read ({str(err).strip()[:200]}): it is truncated or damaged; "
                        "copy it again or use another one") from err
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        first = next((line for line in lines if "GLOBAL" in line or "Unsupported" in line), lines[0] if lines else "")
        raise error(
            f"{what} {path} holds pickled Python objects other than tensors ({first}); it is refused, since "
            "unpickling them could run code. If you trust its source, load it yourself, drop the objects that "
            "are not tensors or plain values, and save it again"
        ) from err
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError, struct.error) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise error(
            f"{what} {path} cannot be read ({type(err).__name__}: {reason}): it is truncated or not a PyTorch "
            "file; copy it again or use another one"
        ) from err


def strip_to_model_keys(
    state_dict: Mapping[str, torch.Tensor],
    anchor: str,
    ignore_prefixes: Iterable[str] = (),
) -> dict[str, torch.Tensor]:
    """Map a checkpoint's keys onto a model's keys.

    If ``anchor`` (a key the model is known to have, e.g. ``"conv1.weight"``) is present the keys are kept
    as they are; otherwise the prefix in front
    of ``anchor`` (e.g. ``"model.backbone.resnet."`` for ``"...conv1.weight"`` in a Lightning checkpoint) is
    found, and only the keys carrying that prefix are kept, with the prefix removed.  Keys starting with any
    of ``ignore_prefixes`` (after stripping) are dropped (e.g. ``"fc."``, a classifier head).
    """
    sd = dict(state_dict)
    if anchor not in sd:
        candidates = sorted((k for k in sd if k.endswith("." + anchor)), key=len)
        if candidates:
            prefix = candidates[0][: -len(anchor)]
            sd = {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}
    ignore = tuple(ignore_prefixes)
    if ignore:
        sd = {k: v for k, v in sd.items() if not k.startswith(ignore)}
    return sd
