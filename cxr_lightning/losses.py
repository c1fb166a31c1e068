"""Losses for multi-label training; all compute in float32 whatever the autocast precision."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F


class WeightedBCEWithLogits(nn.Module):
    """``BCEWithLogitsLoss`` with an optional per-label ``pos_weight`` kept as a buffer.

    The paper's CNN used ``Sigmoid`` + ``BCELoss``; this is the same loss, computed stably.
    """

    def __init__(self, num_labels: int, pos_weight: Sequence[float] | None = None):
        super().__init__()
        weights = torch.ones(num_labels) if pos_weight is None else torch.as_tensor(list(pos_weight), dtype=torch.float32)
        if weights.shape != (num_labels,):
            raise ValueError(f"pos_weight has {weights.numel()} values for {num_labels} labels")
        self.register_buffer("pos_weight", weights)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(logits.float(), targets.float(), pos_weight=self.pos_weight)
