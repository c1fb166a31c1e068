"""BEiT vision-transformer image backbone (Hugging Face ``transformers.BeitModel``).

Pretrained weights come from a local directory (``save_pretrained`` output) or a hub id.  A hub id is
first looked up in the local Hugging Face cache only (``local_files_only=True``), so an offline machine
with the model cached works; only if that fails, and offline mode is off, is a download tried.  When
nothing works a :class:`~cxr_lightning.models.weights.WeightsNotFoundError` explains how to fetch it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from torch import Tensor, nn
from transformers import BeitConfig, BeitModel

from cxr_lightning.models.weights import WeightsNotFoundError, hf_cache_dir, hf_offline

__all__ = ["DEFAULT_BEIT", "BeitBackbone", "tiny_beit_config"]

DEFAULT_BEIT = "microsoft/beit-base-patch16-224"
# BeitImageProcessor defaults (microsoft/beit-* checkpoints): resize to 224, scale to [0, 1], normalise 0.5/0.5.
_DEFAULT_MEAN = (0.5, 0.5, 0.5)
_DEFAULT_STD = (0.5, 0.5, 0.5)


def tiny_beit_config(**overrides: Any) -> dict[str, Any]:
    """A tiny randomly-initialised BEiT config (32 features, 32x32 input) for tests and smoke runs."""
    cfg: dict[str, Any] = dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=32,
        patch_size=8,
    )
    cfg.update(overrides)
    return cfg


def _looks_like_path(name: str) -> bool:
    """True for explicit filesystem paths (absolute, ./, ../, ~, or more than one '/'), not for ``org/model``."""
    return (
        os.path.isabs(name)
        or name.startswith((".", "~"))
        or name.count("/") > 1
        or os.sep != "/" and os.sep in name
    )


def _fetch_instructions(model_id: str) -> str:
    return (
        "To fetch it, on a machine with internet access run\n"
        f"    hf download {model_id}        (older huggingface_hub: huggingface-cli download {model_id})\n"
        "and copy the Hugging Face cache (~/.cache/huggingface/hub, or $HF_HOME/hub) to this machine, or run\n"
        f"    python -c \"from transformers import BeitModel; BeitModel.from_pretrained('{model_id}')"
        ".save_pretrained('beit_dir')\"\n"
        "and pass that directory as pretrained='beit_dir'. For a randomly initialised model pass config={...}."
    )


def _read_preprocessor_config(pretrained: str, local_dir: Path | None) -> dict[str, Any]:
    """Read ``preprocessor_config.json`` from the local dir or the HF cache, without network; {} if absent."""
    path: str | None = None
    if local_dir is not None:
        candidate = local_dir / "preprocessor_config.json"
        path = str(candidate) if candidate.is_file() else None
    else:
        try:
            from huggingface_hub import try_to_load_from_cache

            found = try_to_load_from_cache(pretrained, "preprocessor_config.json")
            path = found if isinstance(found, str) else None
        except Exception:
            path = None
    if path is None:
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


class BeitBackbone(nn.Module):
    """BEiT encoder: ``(B, 3, H, W)`` -> mean of ``last_hidden_state`` over all tokens -> ``(B, hidden_size)``.

    The mean includes the CLS token, as the paper's code did (``last_hidden_state.mean(dim=1)``); BEiT's
    own pooler (mean of patch tokens + LayerNorm) is not built (``add_pooling_layer=False``).

    Args:
        pretrained: hub id (default ``microsoft/beit-base-patch16-224``) or a local directory written by
            ``save_pretrained``.  Ignored when ``config`` is given.
        config: dict of ``BeitConfig`` kwargs: build a randomly initialised model instead (tests, smoke
            runs; see :func:`tiny_beit_config`).
        freeze: the paper's "transfer learning" variant: all parameters ``requires_grad=False`` and the
            encoder stays in eval mode even after ``.train()`` (dropout/drop-path off).
        image_size: expected input side.  With ``config`` it overrides ``config["image_size"]``; with
            pretrained weights it only updates :attr:`pretrained_cfg`.  Inputs whose size differs from the
            model config's ``image_size`` are handled with ``interpolate_pos_encoding=True`` automatically
            (position embeddings / relative position bias are interpolated).
        allow_download: if False, a hub id is only looked up in the local cache.  Otherwise a download is
            tried after the cache, unless ``HF_HUB_OFFLINE=1``/``TRANSFORMERS_OFFLINE=1`` (set these on
            offline machines: huggingface_hub otherwise retries for ~25 s before giving up).

    Attributes:
        out_features: ``config.hidden_size`` (768 for BEiT-base).
        in_channels: ``config.num_channels`` (3).
        model: the ``transformers.BeitModel``.
        pretrained_cfg: ``mean``, ``std``, ``input_size``, ``interpolation`` (from the checkpoint's
            ``preprocessor_config.json`` when available locally, else BEiT's defaults 0.5/0.5) and ``source``.
    """

    def __init__(
        self,
        pretrained: str | os.PathLike[str] | None = DEFAULT_BEIT,
        config: dict[str, Any] | None = None,
        freeze: bool = False,
        image_size: int | None = None,
        allow_download: bool = True,
    ) -> None:
        super().__init__()
        preprocessor: dict[str, Any] = {}
        if config is not None:
            kwargs = dict(config)
            if image_size is not None:
                kwargs["image_size"] = int(image_size)
            self.model = BeitModel(BeitConfig(**kwargs), add_pooling_layer=False)
            source = None
        elif pretrained is not None:
            self.model, source, local_dir = self._load_pretrained(str(pretrained), allow_download)
            preprocessor = _read_preprocessor_config(str(pretrained), local_dir)
        else:
            raise ValueError("BeitBackbone needs pretrained (hub id or directory) or config (BeitConfig kwargs)")

        cfg = self.model.config
        self.out_features = int(cfg.hidden_size)
        self.in_channels = int(cfg.num_channels)
        self.freeze = bool(freeze)
        side = int(image_size) if image_size is not None else int(cfg.image_size)
        self.pretrained_cfg: dict[str, Any] = {
            "architecture": "beit",
            "source": source,
            "mean": tuple(preprocessor.get("image_mean", _DEFAULT_MEAN)),
            "std": tuple(preprocessor.get("image_std", _DEFAULT_STD)),
            "input_size": (self.in_channels, side, side),
            "model_image_size": int(cfg.image_size),
            "patch_size": int(cfg.patch_size),
            "interpolation": "bicubic" if preprocessor.get("resample", 3) == 3 else "bilinear",
            "freeze": self.freeze,
        }
        if self.freeze:
            for p in self.model.parameters():
                p.requires_grad_(False)
            self.model.eval()

    @staticmethod
    def _load_pretrained(pretrained: str, allow_download: bool = True) -> tuple[BeitModel, str, Path | None]:
        path = Path(pretrained).expanduser()
        if path.is_dir():
            try:
                model = BeitModel.from_pretrained(str(path), add_pooling_layer=False, local_files_only=True)
            except (OSError, ValueError) as exc:
                raise WeightsNotFoundError(
                    f"no BEiT weights in directory {str(path)!r} ({type(exc).__name__}: {exc}); it should hold "
                    "config.json and model.safetensors (or pytorch_model.bin) written by save_pretrained."
                ) from exc
            return model, str(path), path
        if _looks_like_path(pretrained) or path.exists():
            raise WeightsNotFoundError(
                f"BEiT pretrained directory not found: {pretrained!r} (resolved: {str(path.resolve())!r}).\n"
                + _fetch_instructions(DEFAULT_BEIT)
            )

        cache = hf_cache_dir()
        try:
            return BeitModel.from_pretrained(pretrained, add_pooling_layer=False, local_files_only=True), pretrained, None
        except (OSError, ValueError) as exc:
            local_error: Exception = exc
        if hf_offline() or not allow_download:
            download_note = (
                "offline mode is on (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE), so no download was tried"
                if allow_download
                else "no download was tried (allow_download=False)"
            )
        else:
            try:
                return BeitModel.from_pretrained(pretrained, add_pooling_layer=False), pretrained, None
            except Exception as exc:  # connection errors, 401/404, ...
                download_note = f"downloading it failed ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
        raise WeightsNotFoundError(
            f"BEiT weights {pretrained!r} not found: not a local directory, not in the Hugging Face cache "
            f"{str(cache)!r} (looked for {str(cache / ('models--' + pretrained.replace('/', '--')))!r}; "
            f"{type(local_error).__name__}: {str(local_error).splitlines()[0] if str(local_error) else ''}), and "
            f"{download_note}.\n" + _fetch_instructions(pretrained)
        ) from local_error

    def train(self, mode: bool = True) -> BeitBackbone:
        super().train(mode)
        if self.freeze:
            self.model.eval()
        return self

    def forward(self, images: Tensor) -> Tensor:
        """``(B, 3, H, W)`` -> ``(B, hidden_size)``: mean over all tokens (CLS included)."""
        size = self.model.config.image_size
        size = tuple(size) if isinstance(size, (list, tuple)) else (size, size)
        interpolate = tuple(images.shape[-2:]) != size
        out = self.model(pixel_values=images, interpolate_pos_encoding=interpolate)
        return out.last_hidden_state.mean(dim=1)
