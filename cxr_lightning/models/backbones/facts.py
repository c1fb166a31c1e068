"""What a backbone expects of its input: the one place the data side reads size, channels and normalisation."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from cxr_lightning.data.transforms import NORMALIZATIONS, normalization_stats

__all__ = ["InputFacts"]


@dataclass(frozen=True)
class InputFacts:
    """A backbone's input: ``(channels, image_size, image_size)`` images normalised as ``(x - mean) / std``.

    ``x`` is the grey image in [0, 1] replicated to ``channels``. ``normalization`` names the entry of
    :data:`~cxr_lightning.data.transforms.NORMALIZATIONS` with this ``mean``/``std`` (``imagenet``,
    ``beit`` for 0.5/0.5, ``xrv`` for torchxrayvision's [-1024, 1024]), or is None when none matches
    (then only ``mean``/``std`` describe it).
    """

    image_size: int
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    normalization: str | None = None

    @classmethod
    def named(cls, image_size: int, channels: int, normalization: str) -> InputFacts:
        mean, std = normalization_stats(normalization, channels)
        return cls(int(image_size), int(channels), tuple(mean), tuple(std), normalization)

    @classmethod
    def from_stats(cls, image_size: int, channels: int, mean: Sequence[float], std: Sequence[float]) -> InputFacts:
        """Facts from a model's own statistics, named after the normalisation they equal (if any)."""
        mean, std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
        if len(mean) != channels or len(std) != channels:
            raise ValueError(f"mean {mean} / std {std} do not have one value per channel ({channels})")
        for name in NORMALIZATIONS:
            named_mean, named_std = normalization_stats(name, channels)
            if all(math.isclose(a, b, abs_tol=1e-6) for a, b in zip((*mean, *std), (*named_mean, *named_std))):
                return cls(int(image_size), int(channels), mean, std, name)
        return cls(int(image_size), int(channels), mean, std, None)

    def with_size(self, image_size: int | None) -> InputFacts:
        """The same facts at another input side (``None`` keeps this one)."""
        if image_size is None:
            return self
        return InputFacts(int(image_size), self.channels, self.mean, self.std, self.normalization)
