"""BEiT vision-transformer image backbone (Hugging Face ``transformers.BeitModel``).

Pretrained weights come from a local directory (``save_pretrained`` output) or a hub id.  A hub id is
first looked up in the local Hugging Face cache only (``local_files_only=True``), so an offline machine
with the model cached works; only if that fails, and offline mode is off, is a download tried.  When
nothing works a :class:`~cxr_lightning.models.weights.WeightsNotFoundError` explains how to fetch it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torch import Tensor, nn
from transformers import BeitConfig, BeitModel

from cxr_lightning.models.weights import WeightsNotFoundError, hf_cache_dir, hf_offline

__all__ = ["DEFAULT_BEIT", "BeitBackbone", "tiny_beit_config"]

DEFAULT_BEIT = "microsoft/beit-base-patch16-224"


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
            pretrained weights it is not used.  Inputs whose size differs from the
            model config's ``image_size`` are handled with ``interpolate_pos_encoding=True`` automatically
            (position embeddings / relative position bias are interpolated).
        allow_download: if False, a hub id is only looked up in the local cache.  Otherwise a download is
            tried after the cache, unless ``HF_HUB_OFFLINE=1``/``TRANSFORMERS_OFFLINE=1`` (set these on
            offline machines: huggingface_hub otherwise retries for ~25 s before giving up).

    Attributes:
        out_features: ``config.hidden_size`` (768 for BEiT-base).
        in_channels: ``config.num_channels`` (3).
        model: the ``transformers.BeitModel``.

    The input's preprocessing is the DataModule's: ``data.images.normalization: beit`` is the 0.5/0.5 of the
    ``microsoft/beit-*`` image processors (:data:`cxr_lightning.data.transforms.NORMALIZATIONS`).
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
        if config is not None:
            kwargs = dict(config)
            if image_size is not None:
                kwargs["image_size"] = int(image_size)
            self.model = BeitModel(BeitConfig(**kwargs), add_pooling_layer=False)
        elif pretrained is not None:
            self.model = self._load_pretrained(str(pretrained), allow_download)
        else:
            raise ValueError("BeitBackbone needs pretrained (hub id or directory) or config (BeitConfig kwargs)")

        cfg = self.model.config
        self.out_features = int(cfg.hidden_size)
        self.in_channels = int(cfg.num_channels)
        self.freeze = bool(freeze)
        if self.freeze:
            for p in self.model.parameters():
                p.requires_grad_(False)
            self.model.eval()

    @staticmethod
    def _load_pretrained(pretrained: str, allow_download: bool = True) -> BeitModel:
        path = Path(pretrained).expanduser()
        if path.is_dir():
            try:
                model = BeitModel.from_pretrained(str(path), add_pooling_layer=False, local_files_only=True)
            except (OSError, ValueError) as exc:
                raise WeightsNotFoundError(
                    f"no BEiT weights in directory {str(path)!r} ({type(exc).__name__}: {exc}); it should hold "
                    "config.json and model.safetensors (or pytorch_model.bin) written by save_pretrained."
                ) from exc
            return model
        if _looks_like_path(pretrained) or path.exists():
            raise WeightsNotFoundError(
                f"BEiT pretrained directory not found: {pretrained!r} (resolved: {str(path.resolve())!r}).\n"
                + _fetch_instructions(DEFAULT_BEIT)
            )

        cache = hf_cache_dir()
        try:
            return BeitModel.from_pretrained(pretrained, add_pooling_layer=False, local_files_only=True)
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
                return BeitModel.from_pretrained(pretrained, add_pooling_layer=False)
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
