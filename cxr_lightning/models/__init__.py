"""Models: a shared LightningModule base, the metadata-fusion head and the paper's three backbones, any backbone by name."""

from cxr_lightning.models.backbone_classifier import BackboneClassifier
from cxr_lightning.models.base import CXRClassifier
from cxr_lightning.models.classifiers import BaselineCNN, BEiTClassifier, ResNet50Classifier
from cxr_lightning.models.fusion import MetadataFusionHead

__all__ = ["BEiTClassifier", "BackboneClassifier", "BaselineCNN", "CXRClassifier", "MetadataFusionHead", "ResNet50Classifier"]
