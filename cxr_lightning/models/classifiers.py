"""The paper's three models as LightningModules: each builds a backbone, the base does the rest."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cxr_lightning.models.base import CXRClassifier

BEIT_ARCHITECTURE_KEY = "beit_architecture"


class BaselineCNN(CXRClassifier):
    """The paper's CNN from scratch: five conv blocks 32 -> 512 channels, dropout 0.4, metadata concatenated.

    Args:
        channels: output channels of the five conv blocks.
        in_channels: image channels (3: grey replicated, as the paper; 1 for grey input).
        head_dropout: dropout on the pooled features (the paper's CNN: 0.4).
    """

    def __init__(self, channels: Sequence[int] = (32, 64, 128, 256, 512), in_channels: int = 3, head_dropout: float = 0.4, **kwargs: Any):
        # head_dropout is in this signature (not a setdefault) so LightningCLI sees the CNN's 0.4.
        super().__init__(head_dropout=head_dropout, **kwargs)
        from cxr_lightning.models.cnn import CNNBackbone

        self.attach_backbone(CNNBackbone(channels=tuple(channels), in_channels=in_channels))


class ResNet50Classifier(CXRClassifier):
    """ImageNet ResNet-50 with the metadata-fusion head; optionally the high-resolution conv stem.

    Args:
        weights: torchvision ``ResNet50_Weights`` name (``IMAGENET1K_V2``, ``IMAGENET1K_V1``) or
            null for random initialisation.
        weights_path: local state-dict file, used instead of torchvision's cache/download.
        high_res_stem: the paper's three conv input layers for 1024x1024 one-channel images.
    """

    def __init__(self, weights: str | None = "IMAGENET1K_V2", weights_path: str | None = None, high_res_stem: bool = False, **kwargs: Any):
        super().__init__(**kwargs)
        from cxr_lightning.models.resnet import ResNet50Backbone

        self.attach_backbone(ResNet50Backbone(weights=weights, weights_path=weights_path, high_res_stem=high_res_stem))


class BEiTClassifier(CXRClassifier):
    """Hugging Face BEiT, mean-pooled tokens, with the metadata-fusion head.

    Args:
        pretrained: hub id (``microsoft/beit-base-patch16-224``) or local directory; null with
            ``config`` for a randomly initialised model.
        config: ``BeitConfig`` keyword arguments for a model built from scratch (tests, smoke runs).
        freeze_backbone: transfer learning: only the head (and metadata MLP) train.
    """

    def __init__(
        self,
        pretrained: str | None = "microsoft/beit-base-patch16-224",
        config: dict[str, Any] | None = None,
        freeze_backbone: bool = False,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        from cxr_lightning.models.beit import BeitBackbone

        self.attach_backbone(BeitBackbone(pretrained=None if config else pretrained, config=config, freeze=freeze_backbone))

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        # The architecture goes into the checkpoint, so it can be rebuilt without the hub.
        checkpoint[BEIT_ARCHITECTURE_KEY] = self.backbone.model.config.to_dict()
