"""``BackboneClassifier``: any named backbone (torchvision, timm, torchxrayvision) with the shared head, loss and metrics."""

from __future__ import annotations

from typing import Any

from cxr_lightning.models.backbones import InputFacts, build_backbone, weights_trained_on_nih
from cxr_lightning.models.base import CXRClassifier

__all__ = ["BackboneClassifier"]


class BackboneClassifier(CXRClassifier):
    """A backbone chosen by name, with the paper's metadata-fusion head, loss, thresholds and metrics.

    Args:
        backbone: ``"<source>/<name>"``: ``torchvision/densenet121`` (CheXNet's), ``torchvision/convnext_tiny``,
            ``timm/convnext_tiny``, ``timm/vit_base_patch16_224``, ``xrv/densenet121-res224-all``, ...
        weights: pretrained weights: a torchvision weight enum name (``DEFAULT``, ``IMAGENET1K_V1``);
            ``DEFAULT`` for timm (the name's pretrained tag) and torchxrayvision (the named weights);
            null for random initialisation (what a checkpoint is rebuilt with: its state dict holds the weights).
        weights_path: a local state-dict file of the backbone, read instead of the caches.
        backbone_options: further arguments of the model's builder, e.g. ``{"img_size": 384}`` or
            ``{"drop_path_rate": 0.1}`` for timm, ``{"image_size": 384}`` for a torchvision ViT.
        **kwargs: everything :class:`CXRClassifier` takes (``lr``, ``optimizer: sgd``, ``momentum``,
            ``weight_decay``, ``scheduler: plateau``, ``loss``, ``metadata_hidden``, ...).

    The input the backbone expects is :attr:`input_facts` (size, channels, mean/std or a
    normalisation name): the data side reads it from here rather than being told again.
    """

    def __init__(
        self,
        backbone: str = "torchvision/densenet121",
        weights: str | None = "DEFAULT",
        weights_path: str | None = None,
        backbone_options: dict[str, Any] | None = None,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.attach_backbone(build_backbone(backbone, weights, weights_path, backbone_options))

    @staticmethod
    def input_facts_for(backbone: str = "torchvision/densenet121", backbone_options: dict[str, Any] | None = None, **_: Any) -> InputFacts:
        """The input facts of ``backbone`` without its weights (no file is read, nothing fetched): what the CLI gives the data."""
        return build_backbone(backbone, None, None, backbone_options, allow_download=False).input_facts

    @property
    def input_facts(self) -> InputFacts:
        """Image size, channels and normalisation the backbone expects."""
        return self.backbone.input_facts

    @property
    def trained_on_nih(self) -> bool:
        """Whether the pretrained weights asked for were trained on NIH ChestX-ray14 images (may have seen its test set)."""
        return weights_trained_on_nih(self.hparams.backbone, self.hparams.weights)
