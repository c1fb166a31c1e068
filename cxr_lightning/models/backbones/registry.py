"""``"<source>/<name>"`` -> an image backbone: torchvision, timm or torchxrayvision.

What every backbone provides (the contract :class:`~cxr_lightning.models.base.CXRClassifier` and
the explain/export code rely on; an own backbone provides the same):

* ``forward(images (B, C, H, W)) -> (B, out_features)`` globally pooled features;
* ``out_features`` and ``in_channels``;
* ``input_facts``: an :class:`~cxr_lightning.models.backbones.facts.InputFacts` (size, channels, mean, std);
* ``gradcam_layer() -> (module, patch_size | None)``: the layer Grad-CAM explains;
* ``trained_on_nih``: whether its pretrained weights were trained on NIH ChestX-ray14 images.
"""

from __future__ import annotations

import os
from typing import Any

from torch import nn

from cxr_lightning.models.backbones.weight_files import no_weights
from cxr_lightning.models.backbones.xrv_source import trained_on_nih as xrv_trained_on_nih

__all__ = ["SOURCES", "build_backbone", "parse_backbone", "weights_trained_on_nih"]

#: source prefix -> what it names
SOURCES = {
    "torchvision": "a torchvision classification model (densenet121, resnet50, efficientnet_b0, convnext_tiny, ...)",
    "timm": "a timm model (convnext_tiny, vit_base_patch16_224, efficientnet_b3, ...; pip install -e '.[timm]')",
    "xrv": "torchxrayvision chest X-ray weights (densenet121-res224-all, -nih, -chex, resnet50-res512-all; pip install -e '.[xrv]')",
}
_ALIASES = {"tv": "torchvision", "torchxrayvision": "xrv"}


def parse_backbone(backbone: str) -> tuple[str, str]:
    """``"torchvision/densenet121"`` -> ``("torchvision", "densenet121")``."""
    source, sep, name = str(backbone).strip().partition("/")
    source = _ALIASES.get(source, source)
    if not sep or not name or source not in SOURCES:
        raise ValueError(f"backbone {backbone!r} is not '<source>/<name>' with source one of {sorted(SOURCES)}, "
                         "e.g. torchvision/densenet121, timm/convnext_tiny, xrv/densenet121-res224-all")  # fmt: skip
    return source, name


def build_backbone(
    backbone: str,
    weights: str | None = "DEFAULT",
    weights_path: str | os.PathLike[str] | None = None,
    options: dict[str, Any] | None = None,
    allow_download: bool = True,
) -> nn.Module:
    """The backbone named ``"<source>/<name>"``; ``weights=None`` gives the same architecture, randomly initialised."""
    source, name = parse_backbone(backbone)
    if source == "torchvision":
        from cxr_lightning.models.backbones.torchvision_source import TorchvisionBackbone

        return TorchvisionBackbone(name, weights, weights_path, options, allow_download)
    if source == "timm":
        from cxr_lightning.models.backbones.timm_source import TimmBackbone

        return TimmBackbone(name, weights, weights_path, options, allow_download)
    if options:
        raise ValueError(f"xrv backbones take no options (their architecture is fixed by the name); got {sorted(options)}")
    from cxr_lightning.models.backbones.xrv_source import XrvBackbone

    return XrvBackbone(name, weights, weights_path, allow_download)


def weights_trained_on_nih(backbone: str, weights: str | None) -> bool:
    """Whether pretrained ``weights`` of ``backbone`` were trained on NIH ChestX-ray14 images.

    Read from the names alone (no weights, no optional package), so a report can warn from a
    run's recorded settings: torchxrayvision's ``all``, ``nih`` and ``rsna`` weights. Their
    training may have seen the official NIH test images.
    """
    source, name = parse_backbone(backbone)
    if no_weights(weights):
        return False
    return source == "xrv" and xrv_trained_on_nih(name)
