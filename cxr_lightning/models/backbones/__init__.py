"""Image backbones by name: ``torchvision/<model>``, ``timm/<model>``, ``xrv/<torchxrayvision weights>``."""

from cxr_lightning.models.backbones.facts import InputFacts
from cxr_lightning.models.backbones.registry import SOURCES, build_backbone, parse_backbone, weights_trained_on_nih

__all__ = ["SOURCES", "InputFacts", "build_backbone", "parse_backbone", "weights_trained_on_nih"]
