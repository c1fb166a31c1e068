"""The NIH ChestX-ray14 data layer: metadata, splits, images, transforms, datasets.

The DataModule (and its options) are imported lazily: the data commands (stats, split, download)
should not pay for importing Lightning.
"""

import importlib

from cxr_lightning.data.labels import FINDINGS, LABELS, NO_FINDING
from cxr_lightning.data.metadata import MetadataError, NIHMetadata, read_image_list, read_metadata
from cxr_lightning.data.splits import Split, make_split

_LAZY = {"ChestXrayDataModule": "cxr_lightning.data.datamodule", "SyntheticData": "cxr_lightning.data.options"}

__all__ = [
    "FINDINGS",
    "LABELS",
    "NO_FINDING",
    "ChestXrayDataModule",
    "MetadataError",
    "NIHMetadata",
    "Split",
    "SyntheticData",
    "make_split",
    "read_image_list",
    "read_metadata",
]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'cxr_lightning.data' has no attribute {name!r}")
