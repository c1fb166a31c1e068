"""Any torchvision classification model by name, its classifier layer removed: pooled features out.

Weights are a torchvision weight enum name (``DEFAULT``, ``IMAGENET1K_V1``) or None. They are read
from ``weights_path``, else torchvision's cache (``$TORCH_HOME/hub/checkpoints/<file of the URL>``),
else downloaded there when allowed; always with ``weights_only=True``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch
import torchvision
from torch import Tensor, nn
from torchvision.models import WeightsEnum

from cxr_lightning.models.backbones.facts import InputFacts
from cxr_lightning.models.backbones.weight_files import (
    find_or_download,
    load_matching_state_dict,
    no_weights,
    state_dict_from_path,
)
from cxr_lightning.models.weights import load_state_dict_file, torch_hub_checkpoint_dir

__all__ = ["TorchvisionBackbone", "fix_old_densenet_keys", "remove_classifier", "resolve_torchvision_weights"]

# torchvision's DenseNet weight files predate '.'-free module names: 'denselayer1.norm.1.weight'
# is today's 'denselayer1.norm1.weight' (the same fix-up as torchvision.models.densenet._load_state_dict).
_OLD_DENSENET_KEY = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$")


def _model_names() -> list[str]:
    return sorted(torchvision.models.list_models(module=torchvision.models))


def resolve_torchvision_weights(name: str, weights: str | None) -> WeightsEnum | None:
    """``"DEFAULT"`` / ``"IMAGENET1K_V1"`` / ``"DenseNet121_Weights.IMAGENET1K_V1"`` / None -> the enum member."""
    if name not in _model_names():
        raise ValueError(f"unknown torchvision model {name!r}; e.g. densenet121, resnet50, efficientnet_b0, convnext_tiny "
                         "(torchvision.models.list_models() lists them all)")  # fmt: skip
    if no_weights(weights):
        return None
    enum = torchvision.models.get_model_weights(name)
    member = str(weights).strip().rpartition(".")[2]
    try:
        return enum[member.upper()]  # enum names are upper case: IMAGENET1K_V1, DEFAULT
    except KeyError:
        raise ValueError(f"unknown weights {weights!r} for torchvision {name}; use one of "
                         f"{[w.name for w in enum]}, DEFAULT or null (random init)") from None  # fmt: skip


def remove_classifier(model: nn.Module) -> tuple[str, int]:
    """Replace the model's last ``nn.Linear`` (its classifier) with ``nn.Identity``; returns (its name, in_features).

    torchvision classifiers end in one Linear layer wherever they keep it (``fc``, ``classifier``,
    ``classifier[-1]``, ``heads.head``, ``head``), applied to globally pooled features.
    """
    linears = [(name, module) for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(model).__name__} has no Linear classifier layer to remove; it is not supported as a backbone")
    name, layer = linears[-1]
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, nn.Identity())
    return name, int(layer.in_features)


def fix_old_densenet_keys(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    fixed = {}
    for key, value in state_dict.items():
        match = _OLD_DENSENET_KEY.match(key)
        fixed[match.group(1) + match.group(2) if match else key] = value
    return fixed


def _facts_of(weights: WeightsEnum, channels: int) -> InputFacts:
    preset = weights.transforms()
    return InputFacts.from_stats(int(preset.crop_size[0]), channels, preset.mean, preset.std)


class TorchvisionBackbone(nn.Module):
    """A torchvision model without its classifier: ``(B, C, H, W)`` -> ``(B, out_features)``.

    Args:
        name: a torchvision classification model (``densenet121``, ``resnet50``, ``efficientnet_b0``,
            ``convnext_tiny``, ``vit_b_16``, ...).
        weights: a weight enum name of that model (``DEFAULT``, ``IMAGENET1K_V1``) or None (random init).
        weights_path: a local state dict, read instead of the cache.
        options: further keyword arguments of the model's builder (e.g. ``{"image_size": 64}`` for ViTs).
        allow_download: if False, missing weights stop at once instead of trying the network.

    Attributes:
        out_features, in_channels, input_facts (size, mean, std of the model's weights preset:
        the chosen weights', else the model's DEFAULT ones), trained_on_nih (False: ImageNet).
    """

    trained_on_nih = False

    def __init__(
        self,
        name: str,
        weights: str | None = "DEFAULT",
        weights_path: str | os.PathLike[str] | None = None,
        options: dict | None = None,
        allow_download: bool = True,
    ) -> None:
        super().__init__()
        enum = resolve_torchvision_weights(name, weights)
        self.name = name
        self.model = torchvision.models.get_model(name, weights=None, **dict(options or {}))
        self.removed_classifier, self.out_features = remove_classifier(self.model)
        self.in_channels = 3
        preset = enum or torchvision.models.get_model_weights(name).DEFAULT
        image_size = (options or {}).get("image_size")
        self.input_facts = _facts_of(preset, self.in_channels).with_size(image_size)
        if weights_path is not None:
            self.load_weights(state_dict_from_path(weights_path, f"torchvision {name}"), str(weights_path))
        elif enum is not None:
            path = self.find_weights(enum, allow_download)
            self.load_weights(load_state_dict_file(path), str(path))

    def find_weights(self, enum: WeightsEnum, allow_download: bool) -> Path:
        """``$TORCH_HOME/hub/checkpoints/<file of the URL>``, downloaded there when allowed."""
        cached = torch_hub_checkpoint_dir() / os.path.basename(enum.url)
        fetch = (f"python -c \"import torchvision; torchvision.models.get_model('{self.name}', weights='{enum.name}')\" "
                 f"on a machine with internet access, then copy {cached.name} into {cached.parent}")  # fmt: skip
        return find_or_download(f"torchvision {self.name} weights {enum.name} ({cached.name})", enum.url, [cached], fetch, allow_download)

    def load_weights(self, state_dict: dict[str, Tensor], source: str) -> None:
        """Torchvision-layout weights of this model; its classifier's keys are ignored."""
        load_matching_state_dict(self.model, fix_old_densenet_keys(state_dict), source, ignore_prefixes=(self.removed_classifier + ".",))

    def gradcam_layer(self) -> tuple[nn.Module, int | None]:
        """The last convolutional stage (``features``, ``layer4``, ``trunk_output``) or, for ViTs, the
        input of the last encoder block's attention, whose patch tokens reach the class token."""
        model = self.model
        if isinstance(model, torchvision.models.VisionTransformer):
            return model.encoder.layers[-1].ln_1, int(model.patch_size)
        channels_last_stages = isinstance(model, torchvision.models.SwinTransformer)  # (B, H, W, C): not a CAM layout
        if channels_last_stages:
            raise ValueError(f"Grad-CAM does not support {self.name}'s channels-last stages; pass target_layer=")
        for attribute in ("features", "layer4", "trunk_output"):
            if isinstance(getattr(model, attribute, None), nn.Module):
                return getattr(model, attribute), None
        convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
        if not convs:
            raise ValueError(f"no convolutional layer for Grad-CAM in torchvision {self.name}; pass target_layer=")
        return convs[-1], None

    def forward(self, images: Tensor) -> Tensor:
        """``(B, in_channels, H, W)`` -> ``(B, out_features)``."""
        return torch.flatten(self.model(images), 1)
