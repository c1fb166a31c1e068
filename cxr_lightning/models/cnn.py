"""The paper's baseline CNN image backbone."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = ["CNNBackbone", "ConvBlock"]


class ConvBlock(nn.Sequential):
    """Conv2d 3x3 (padding 1, no bias: the BatchNorm that follows has one) + BatchNorm2d + ReLU."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class CNNBackbone(nn.Module):
    """Baseline CNN: five Conv3x3 + BN + ReLU blocks, MaxPool2d(2) after the first four, global average pool.

    With the default ``channels=(32, 64, 128, 256, 512)`` it returns 512 pooled features per image
    (1,569,568 parameters for ``in_channels=3``).  Dropout and the classifier live in the head, not here.
    Inputs need to be at least 16x16 (four 2x poolings); any larger size works thanks to the adaptive pool.

    Args:
        channels: output channels of each conv block.
        in_channels: image channels (3 for the RGB-replicated images of the data pipeline, 1 for grey).

    Attributes:
        out_features: number of features returned by :meth:`forward` (``channels[-1]``).
        in_channels: expected number of input channels.
    """

    def __init__(self, channels: Sequence[int] = (32, 64, 128, 256, 512), in_channels: int = 3) -> None:
        super().__init__()
        channels = tuple(int(c) for c in channels)
        if not channels:
            raise ValueError("channels must name at least one conv block")
        self.in_channels = int(in_channels)
        self.channels = channels
        layers: list[nn.Module] = []
        previous = self.in_channels
        for i, c in enumerate(channels):
            layers.append(ConvBlock(previous, c))
            if i < len(channels) - 1:
                layers.append(nn.MaxPool2d(2))
            previous = c
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.out_features = channels[-1]
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, images: Tensor) -> Tensor:
        """``(B, in_channels, H, W)`` -> ``(B, out_features)``."""
        return torch.flatten(self.pool(self.features(images)), 1)
