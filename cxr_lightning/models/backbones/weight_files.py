"""Finding a backbone's pretrained weights file on disk first, downloading only when allowed.

Every file is read with ``weights_only=True`` (:func:`~cxr_lightning.models.weights.load_state_dict_file`):
a weights file is data, never code. A file that is missing offline stops with one line naming the
file, every place it was looked for and the command that fetches it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from torch import nn

from cxr_lightning.models.weights import WeightsFileError, WeightsNotFoundError, load_state_dict_file, strip_to_model_keys

__all__ = ["find_or_download", "load_matching_state_dict", "no_weights", "pretrained_requested", "state_dict_from_path"]

#: ``weights`` values meaning random initialisation (YAML's null arrives as None; as text too, from a command line)
_NO_WEIGHTS = {"", "none", "null", "random"}


def no_weights(weights: str | None) -> bool:
    """Whether ``weights`` asks for random initialisation."""
    return weights is None or str(weights).strip().lower() in _NO_WEIGHTS


def pretrained_requested(weights: str | None, what: str) -> bool:
    """For sources whose weights the name fixes (timm's tag, torchxrayvision's name): ``DEFAULT`` -> True, null -> False."""
    if no_weights(weights):
        return False
    if str(weights).strip().upper() in {"DEFAULT", "PRETRAINED"}:
        return True
    raise ValueError(f"{what} weights are DEFAULT (the weights the name gives) or null (random init); got {weights!r}")


def state_dict_from_path(path: str | os.PathLike[str], what: str) -> dict[str, torch.Tensor]:
    """A user's ``weights_path``: a state dict (``.pth``/``.pt``/``.ckpt``, or ``.safetensors``)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise WeightsNotFoundError(f"{what}: weights_path {str(path)!r} not found (resolved: {str(path.resolve())!r}); "
                                   "pass the path of a local state-dict file, or weights_path=null")  # fmt: skip
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError) as err:
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise WeightsFileError(f"{what}: weights file {path} cannot be read ({reason}); copy it again or use another one") from err
    return load_state_dict_file(path)


def find_or_download(
    what: str, url: str, places: Sequence[Path], fetch_command: str, allow_download: bool
) -> Path:
    """The first of ``places`` that is a file; else ``url`` downloaded to ``places[-1]`` when allowed.

    ``places`` are full file paths, the canonical cache location last (where a download goes).
    """
    for place in places:
        if place.is_file():
            return place
    looked = ", ".join(repr(str(p)) for p in places)
    advice = f"fetch it with: {fetch_command} (or pass weights_path=..., or weights=null for random init)"
    if not allow_download:
        raise WeightsNotFoundError(f"{what} not available offline: looked for {looked}; {advice}")
    target = places[-1]
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(url, str(target), progress=False)
    except Exception as err:  # URLError, socket.timeout, HTTPError, a read-only cache, ...
        reason = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise WeightsNotFoundError(f"{what} not available offline: looked for {looked}, and downloading {url} failed "
                                   f"({type(err).__name__}: {reason}); {advice}") from err  # fmt: skip
    return target


def load_matching_state_dict(
    model: nn.Module,
    state_dict: dict[str, torch.Tensor],
    source: str,
    ignore_prefixes: Iterable[str] = (),
) -> None:
    """Load ``state_dict`` into ``model``: every model key must be filled, nothing but ``ignore_prefixes`` left over.

    The model's first key anchors the mapping, so a checkpoint that nests the weights under a
    prefix (``model.``, ``backbone.model.``) loads as well.
    """
    anchor = next(iter(model.state_dict()))
    weights = strip_to_model_keys(state_dict, anchor=anchor, ignore_prefixes=tuple(ignore_prefixes))
    try:
        result = model.load_state_dict(weights, strict=False)
    except RuntimeError as err:  # a tensor of another shape: torch's message spans many lines
        detail = next((line.strip() for line in str(err).splitlines() if "size mismatch" in line), str(err).splitlines()[0])
        raise RuntimeError(f"{source} does not fit {type(model).__name__}: {detail}") from err
    if result.missing_keys or result.unexpected_keys:
        raise RuntimeError(f"{source} does not fit {type(model).__name__}: {len(result.missing_keys)} missing keys "
                           f"(e.g. {result.missing_keys[:3]}), {len(result.unexpected_keys)} unexpected "
                           f"(e.g. {result.unexpected_keys[:3]}); is it the weights of this architecture?")  # fmt: skip
