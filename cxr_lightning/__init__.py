"""Multi-label chest X-ray classification on NIH ChestX-ray14 with PyTorch Lightning."""

from cxr_lightning.data.labels import FINDINGS, LABELS

__version__ = "0.1.0"
__all__ = ["FINDINGS", "LABELS", "__version__"]
