"""Any timm model by name (``timm.create_model(name, num_classes=0)``), input facts from timm's pretrained config.

Weights (``weights="DEFAULT"``: the model's pretrained tag, e.g. ``convnext_tiny.in12k_ft_in1k``) are
read from ``weights_path``, else the Hugging Face cache (``$HF_HOME/hub``) where ``hf download`` and
timm itself put them, else timm's own URL cache (``$TORCH_HOME/hub/checkpoints``); a download is tried
only when allowed and Hugging Face's offline mode is off. timm is an optional extra:
``pip install -e '.[timm]'``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from cxr_lightning.models.backbones.facts import InputFacts
from cxr_lightning.models.backbones.weight_files import find_or_download, pretrained_requested, state_dict_from_path
from cxr_lightning.models.weights import WeightsNotFoundError, hf_cache_dir, hf_offline, torch_hub_checkpoint_dir

__all__ = ["TimmBackbone", "import_timm"]

#: the files a timm repository on the Hugging Face hub holds its weights in, in timm's order of preference
HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def import_timm():
    try:
        import timm
    except ImportError:
        raise ImportError("timm backbones need timm: pip install -e '.[timm]' (or pip install timm)") from None
    return timm


class TimmBackbone(nn.Module):
    """A timm model without its classifier: ``(B, C, H, W)`` -> ``(B, num_features)``.

    Args:
        name: a timm model name, optionally with its pretrained tag (``convnext_tiny``,
            ``vit_base_patch16_224.augreg2_in21k_ft_in1k``, ``efficientnet_b3``).
        weights: ``DEFAULT`` (the tag's pretrained weights) or None (random init).
        weights_path: a local state dict (``.safetensors``, ``.pth``) of that model, read instead of the caches.
        options: further ``timm.create_model`` arguments (``{"img_size": 384}``, ``{"drop_path_rate": 0.1}``).
        allow_download: if False, missing weights stop at once instead of trying the network.

    Attributes:
        out_features, in_channels, input_facts (from ``timm.data.resolve_data_config``: input size,
        mean and std of the model's pretrained config; ``img_size``/``in_chans`` options win),
        trained_on_nih (False).
    """

    trained_on_nih = False

    def __init__(
        self,
        name: str,
        weights: str | None = "DEFAULT",
        weights_path: str | os.PathLike[str] | None = None,
        options: dict[str, Any] | None = None,
        allow_download: bool = True,
    ) -> None:
        super().__init__()
        timm = import_timm()
        options = dict(options or {})
        if not timm.is_model(name):
            raise ValueError(f"unknown timm model {name!r}; timm.list_models('*convnext*') lists names")
        self.name = name
        self.model = timm.create_model(name, pretrained=False, num_classes=0, **options)
        if weights_path is not None or pretrained_requested(weights, f"timm {name}"):
            path = Path(weights_path) if weights_path is not None else self.find_weights(allow_download)
            state_dict = state_dict_from_path(path, f"timm {name}")  # weights_only=True / safetensors
            try:
                # timm's own loader, on the tensors read above: its per-model fix-ups (filter_fn,
                # position-embedding resizing, in_chans adaptation) and the classifier dropped.
                self.model = timm.create_model(name, pretrained=True, num_classes=0, pretrained_cfg_overlay={"state_dict": state_dict},
                                               **options)  # fmt: skip
            except (RuntimeError, KeyError, ValueError) as err:
                detail = next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__)
                raise RuntimeError(f"{path} does not fit timm {name} ({detail[:300]}); is it a timm state dict of this model?") from err
        self.out_features = int(self.model.num_features)
        config = timm.data.resolve_data_config({}, model=self.model)
        channels, height, _ = config["input_size"]
        self.in_channels = int(options.get("in_chans", channels))
        size = options.get("img_size", height)
        size = size[0] if isinstance(size, (tuple, list)) else size
        mean, std = config["mean"], config["std"]
        if len(mean) != self.in_channels:  # e.g. in_chans=1: the channel average, as the data side does
            mean, std = (sum(mean) / len(mean),) * self.in_channels, (sum(std) / len(std),) * self.in_channels
        self.input_facts = InputFacts.from_stats(int(size), self.in_channels, mean, std)

    def find_weights(self, allow_download: bool) -> Path:
        """The weights file in the Hugging Face cache (or timm's URL cache), fetched there when allowed."""
        cfg = self.model.pretrained_cfg or {}
        repo, url = cfg.get("hf_hub_id"), cfg.get("url")
        cache = hf_cache_dir()
        places: list[Path] = []
        if repo:
            from huggingface_hub import try_to_load_from_cache

            for file_name in HF_WEIGHT_FILES:
                found = try_to_load_from_cache(repo, file_name, cache_dir=str(cache))
                if isinstance(found, str) and Path(found).is_file():
                    return Path(found)
                places.append(cache / f"models--{repo.replace('/', '--')}" / "snapshots" / "*" / file_name)
        if url:
            cached = torch_hub_checkpoint_dir() / os.path.basename(url)
            if cached.is_file():
                return cached
            places.append(cached)
        if not repo and not url:
            raise WeightsNotFoundError(f"timm {self.name} has no pretrained weights (no hf_hub_id or url in its pretrained "
                                       "config); use weights=null or weights_path=...")  # fmt: skip
        fetch = f"hf download {repo} {HF_WEIGHT_FILES[0]}" if repo else f"curl -L -o {places[-1]} {url}"
        looked = ", ".join(repr(str(p)) for p in places)
        fetch += " on a machine with internet access, then copy the cache to this one"
        advice = f"fetch it with: {fetch} (or pass weights_path=..., or weights=null for random init)"
        if not allow_download or (repo and hf_offline()):
            reason = "offline mode is on (HF_HUB_OFFLINE)" if allow_download else "downloads are off"
            raise WeightsNotFoundError(f"timm {self.name} weights not available offline ({reason}): looked for {looked}; {advice}")
        if not repo:  # an old-style URL, cached where torch.hub puts it
            return find_or_download(f"timm {self.name} weights", url, places[-1:], fetch, True)
        return self._download_from_hub(repo, looked, advice)

    def _download_from_hub(self, repo: str, looked: str, advice: str) -> Path:
        from huggingface_hub import hf_hub_download

        try:
            return Path(hf_hub_download(repo, HF_WEIGHT_FILES[0], cache_dir=str(hf_cache_dir())))
        except Exception as err:  # connection errors, 401/404, ...
            reason = str(err).strip().splitlines()[0] if str(err).strip() else ""
            raise WeightsNotFoundError(f"timm {self.name} weights not available: looked for {looked}, and downloading failed "
                                       f"({type(err).__name__}: {reason}); {advice}") from err  # fmt: skip

    def gradcam_layer(self) -> tuple[nn.Module, int | None]:
        """CNNs: the last feature stage (timm's ``feature_info``; EfficientNet-style heads: ``bn2``, after ``conv_head``).
        ViTs: class-token pooling reads the patch tokens only through the last block's attention, so
        its input (``blocks[-1].norm1``); mean pooling, the last block's output tokens."""
        model = self.model
        patch_embed = getattr(model, "patch_embed", None)
        blocks = getattr(model, "blocks", None)
        if patch_embed is not None and isinstance(blocks, nn.Sequential) and hasattr(model, "num_prefix_tokens"):
            patch = int(patch_embed.patch_size[0])
            if getattr(model, "global_pool", None) == "token" and hasattr(blocks[-1], "norm1"):
                return blocks[-1].norm1, patch
            return blocks[-1], patch
        if isinstance(getattr(model, "conv_head", None), nn.Module) and isinstance(getattr(model, "bn2", None), nn.Module):
            return model.bn2, None
        info = getattr(model, "feature_info", None)
        if info:
            return model.get_submodule(info[-1]["module"]), None
        raise ValueError(f"no Grad-CAM layer known for timm {self.name}; pass target_layer=")

    def forward(self, images: Tensor) -> Tensor:
        """``(B, in_channels, H, W)`` -> ``(B, out_features)``."""
        return self.model(images)
