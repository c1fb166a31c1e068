"""The metadata-fusion head shared by every model."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class MetadataFusionHead(nn.Module):
    """Pooled image features + patient metadata -> one logit per label.

    ``metadata_hidden=()`` concatenates the metadata to the image features directly (the
    paper's "CD"); ``(128, 128)`` first passes it through an MLP with ReLUs (the paper's BEiT
    "MLP" variant; ``(64, 32)`` its transfer-learning variant). ``metadata_dim=0`` uses the
    image alone. Dropout acts on the image features (the CNN's Dropout(0.4)).

    Shapes: ``features (B, in_features)``, ``metadata (B, metadata_dim)`` -> ``(B, num_labels)``.
    """

    def __init__(self, in_features: int, metadata_dim: int, num_labels: int, metadata_hidden: Sequence[int] = (), dropout: float = 0.0):
        super().__init__()
        layers: list[nn.Module] = []
        width = metadata_dim
        for hidden in metadata_hidden if metadata_dim else ():
            layers += [nn.Linear(width, hidden), nn.ReLU(inplace=True)]
            width = hidden
        self.metadata_mlp = nn.Sequential(*layers)
        self.metadata_dim = metadata_dim
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(in_features + width, num_labels)

    def forward(self, features: torch.Tensor, metadata: torch.Tensor) -> torch.Tensor:
        # The head runs in its parameters' dtype even under bf16/16 autocast: bf16 logits (8 bits
        # of mantissa) tie many probabilities, which blurs AUROC and the threshold search, and
        # this layer costs nothing next to the backbone.
        dtype = self.classifier.weight.dtype
        with torch.autocast(device_type=features.device.type, enabled=False):
            features = self.dropout(features.to(dtype))
            if self.metadata_dim:
                features = torch.cat([features, self.metadata_mlp(metadata.to(dtype))], dim=1)
            return self.classifier(features)
