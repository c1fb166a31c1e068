"""Batch-level augmentation and normalisation on any device, for uint8 batches from the image cache.

With :class:`~cxr_lightning.data.cache.CachedChestXrayDataset` the CPU only moves uint8 pixels;
the DataModule's ``on_after_batch_transfer`` turns the ``(B, 1, S, S)`` uint8 batch into the
model's ``(B, C, S, S)`` float32 input on the accelerator:

* :class:`BatchNormalize` (validation/test): ``/255``, replicate to C channels, ``(x - mean) / std``.
* :class:`BatchAugment` (training): the per-sample :class:`~cxr_lightning.data.transforms.Augmentation`
  with independent draws per sample and the same distributions and operations: a left-right flip
  with probability ``horizontal_flip`` (off by default), then rotation by an
  angle uniform in [-deg, deg] (bilinear, fill 0, exactly torchvision's ``rotate`` grid and fill
  blending), then brightness (factor U[1-b, 1+b]; ``clamp(f * x, 0, 1)``) and contrast (factor
  U[1-c, 1+c]; ``clamp(f * x + (1 - f) * mean(x), 0, 1)``, the mean over the image as in
  torchvision for one channel) in an order drawn per sample, then clamp, replicate, normalise.

Given the same parameters, :meth:`BatchAugment.augment` equals torchvision's per-image
``rotate``/``adjust_brightness``/``adjust_contrast`` up to float rounding. Every sample's parameters
come from :func:`~cxr_lightning.data.transforms.draw_augmentation`, the per-sample path's own draw:
either from one ``generator`` in turn or, for resumable deterministic training, from the batch:
:class:`~cxr_lightning.data.cache.CachedChestXrayDataset` with an ``augmentation`` puts an
``augment`` ``(B, 5)`` table in each batch, drawn per sample from ``sample_seed(seed, epoch,
index)``, so both paths augment a sample identically.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import astuple, dataclass

import torch
import torch.nn.functional as nnf
from torch import nn

from cxr_lightning.data.transforms import Augmentation, AugmentationParams, draw_augmentation, normalization_stats


def to_unit_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 ``[0, 255]`` -> float32 ``[0, 1]``; float input is taken as already in [0, 1]."""
    if images.dtype == torch.uint8:
        return images.to(torch.float32).div_(255.0)
    if not torch.is_floating_point(images):
        raise TypeError(f"expected a uint8 or floating point batch, got {images.dtype}")
    return images


class BatchNormalize(nn.Module):
    """``(B, 1, S, S)`` uint8 (or float in [0, 1]) -> ``(B, channels, S, S)`` float32 normalised.

    The batch-level twin of :class:`~cxr_lightning.data.transforms.ImageTransform` without
    augmentation (the resize happened when the cache was built).
    """

    def __init__(self, channels: int = 3, normalization: str = "imagenet"):
        super().__init__()
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        self.channels = channels
        self.normalization = normalization
        mean, std = normalization_stats(normalization, channels)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def _check(self, images: torch.Tensor) -> None:
        if images.ndim != 4 or images.shape[1] != 1:
            raise ValueError(f"expected a (B, 1, S, S) batch, got shape {tuple(images.shape)}")

    def _stats(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # The DataModule that owns this is not an nn.Module, so the buffers stay on the CPU; copying
        # them to the GPU every batch would be a blocking transfer per step. One copy per device.
        if self.mean.device == like.device and self.mean.dtype == like.dtype:
            return self.mean, self.std
        key = (like.device, like.dtype)
        cache = self.__dict__.setdefault("_stats_on_device", {})
        if key not in cache:
            cache[key] = (self.mean.to(device=like.device, dtype=like.dtype), self.std.to(device=like.device, dtype=like.dtype))
        return cache[key]

    def normalize(self, grey: torch.Tensor) -> torch.Tensor:
        """Float ``(B, 1, S, S)`` in [0, 1] -> ``(B, C, S, S)`` normalised."""
        mean, std = self._stats(grey)
        return (grey.expand(-1, self.channels, -1, -1) - mean) / std

    def forward(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        self._check(images)
        return self.normalize(to_unit_float(images).clamp(0.0, 1.0))

    def extra_repr(self) -> str:
        return f"channels={self.channels}, normalization={self.normalization!r}"


@dataclass
class AugmentParams:
    """A batch's per-sample draws (one :class:`~cxr_lightning.data.transforms.AugmentationParams` a row):
    ``angle`` (degrees), ``brightness`` and ``contrast`` factors, ``contrast_first`` and ``flip`` (left-right)."""

    angle: torch.Tensor
    brightness: torch.Tensor
    contrast: torch.Tensor
    contrast_first: torch.Tensor
    flip: torch.Tensor

    #: Columns of :meth:`as_tensor`'s table, in :class:`~cxr_lightning.data.transforms.AugmentationParams`' field order.
    COLUMNS = ("angle", "brightness", "contrast", "contrast_first", "flip")

    def to(self, device: torch.device | str) -> AugmentParams:
        return AugmentParams(*(getattr(self, name).to(device) for name in self.COLUMNS))

    def as_tensor(self) -> torch.Tensor:
        """``(B, 5)`` float32: angle, brightness, contrast, contrast_first (0/1), flip (0/1)."""
        return torch.stack([getattr(self, name).float() for name in self.COLUMNS], dim=1)

    @classmethod
    def from_tensor(cls, table: torch.Tensor) -> AugmentParams:
        width = len(cls.COLUMNS)
        if table.ndim != 2 or table.shape[1] != width:
            raise ValueError(f"augmentation parameters must be (B, {width}), got {tuple(table.shape)}")
        return cls(table[:, 0], table[:, 1], table[:, 2], table[:, 3] > 0.5, table[:, 4] > 0.5)

    @classmethod
    def from_draws(cls, draws: Sequence[AugmentationParams]) -> AugmentParams:
        """Stack per-sample draws into a batch (float32; drawn in float64, rounded once here)."""
        table = torch.tensor([astuple(d) for d in draws], dtype=torch.float64).reshape(-1, len(cls.COLUMNS))
        return cls(table[:, 0].float(), table[:, 1].float(), table[:, 2].float(), table[:, 3] > 0.5, table[:, 4] > 0.5)

    @classmethod
    def from_seeds(
        cls, seeds, rotation_degrees: float, brightness: float, contrast: float, horizontal_flip: float = 0.0
    ) -> AugmentParams:
        """One draw per seed, exactly as the per-sample ``Augmentation`` draws it from ``Generator().manual_seed(seed)``."""
        augmentation = Augmentation(rotation_degrees, brightness, contrast, horizontal_flip)
        generator = torch.Generator()
        return cls.from_draws([draw_augmentation(generator.manual_seed(int(seed)), augmentation) for seed in seeds])


def rotation_grid(angles_deg: torch.Tensor, height: int, width: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``grid_sample`` grids ``(B, H, W, 2)`` of torchvision's ``rotate(img, angle)`` about the centre.

    torchvision (``expand=False``, ``center=None``) samples the output pixel at centred pixel
    coordinates ``(x, y)`` from ``(cos a * x - sin a * y, sin a * x + cos a * y)`` and normalises by
    ``(W / 2, H / 2)`` with ``align_corners=False``; this is that map as an ``affine_grid`` theta.
    """
    a = torch.deg2rad(angles_deg.to(dtype))
    cos, sin = torch.cos(a), torch.sin(a)
    zero = torch.zeros_like(a)
    theta = torch.stack(
        [torch.stack([cos, -sin * (height / width), zero], -1), torch.stack([sin * (width / height), cos, zero], -1)], -2
    )
    return nnf.affine_grid(theta, [len(a), 1, height, width], align_corners=False)


def rotate_batch(images: torch.Tensor, angles_deg: torch.Tensor) -> torch.Tensor:
    """Rotate each ``(1, H, W)`` image of a float batch by its angle (bilinear, fill 0), like torchvision."""
    b, c, h, w = images.shape
    grid = rotation_grid(angles_deg.to(images.device), h, w, images.dtype)
    # torchvision appends a ones channel and multiplies by its resampled value (the fill blending).
    both = torch.cat([images, torch.ones(b, 1, h, w, dtype=images.dtype, device=images.device)], dim=1)
    sampled = nnf.grid_sample(both, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return sampled[:, :c] * sampled[:, c:]


class BatchAugment(BatchNormalize):
    """Training augmentation of a ``(B, 1, S, S)`` batch, each sample with its own draws, then normalisation.

    Args:
        rotation_degrees: maximum absolute rotation angle (0: none).
        brightness: brightness factor drawn from [1 - b, 1 + b] (0: none).
        contrast: contrast factor drawn from [1 - c, 1 + c] (0: none).
        channels, normalization: as :class:`BatchNormalize`.
        generator: default random generator (``forward`` can pass another); each sample's draw is
            :func:`~cxr_lightning.data.transforms.draw_augmentation` from it in turn, on the
            generator's device (the global CPU generator when there is none), then moved to the batch.
        horizontal_flip: probability of flipping a sample left-right, before the rotation (0: none).
    """

    def __init__(
        self,
        rotation_degrees: float = 10.0,
        brightness: float = 0.1,
        contrast: float = 0.1,
        channels: int = 3,
        normalization: str = "imagenet",
        generator: torch.Generator | None = None,
        horizontal_flip: float = 0.0,
    ):
        super().__init__(channels, normalization)
        self.rotation_degrees = float(rotation_degrees)
        self.brightness = float(brightness)
        self.contrast = float(contrast)
        self.horizontal_flip = float(horizontal_flip)
        self.augmentation = Augmentation(self.rotation_degrees, self.brightness, self.contrast, self.horizontal_flip)
        self.generator = generator

    def sample_params(self, batch_size: int, device: torch.device | str | None = None, generator: torch.Generator | None = None) -> AugmentParams:
        """``batch_size`` independent draws from ``generator`` (else the default one), one sample after another."""
        generator = generator if generator is not None else self.generator
        params = AugmentParams.from_draws([draw_augmentation(generator, self.augmentation) for _ in range(batch_size)])
        return params.to(device) if device is not None else params

    def augment(self, grey: torch.Tensor, params: AugmentParams) -> torch.Tensor:
        """Float ``(B, 1, S, S)`` in [0, 1] -> augmented float ``(B, 1, S, S)`` in [0, 1]."""
        params = params.to(grey.device)
        if self.horizontal_flip:  # first, as Augmentation.apply flips before it rotates
            grey = torch.where(params.flip.view(-1, 1, 1, 1), grey.flip(-1), grey)
        if self.rotation_degrees:
            grey = rotate_batch(grey, params.angle)
        view = (-1, 1, 1, 1)
        bright = params.brightness.to(grey.dtype).view(view) if self.brightness else None
        contrast = params.contrast.to(grey.dtype).view(view) if self.contrast else None
        first = params.contrast_first.view(view)
        for step in (0, 1):
            # step 0 applies contrast where contrast_first, else brightness; step 1 the other one.
            use_contrast = first if step == 0 else ~first
            scale = torch.ones_like(first, dtype=grey.dtype)
            shift = torch.zeros_like(scale)
            if bright is not None:
                scale = torch.where(use_contrast, scale, bright)
            if contrast is not None:
                mean = grey.mean(dim=(1, 2, 3), keepdim=True)
                scale = torch.where(use_contrast, contrast, scale)
                shift = torch.where(use_contrast, (1 - contrast) * mean, shift)
            if bright is None and contrast is None:
                break
            grey = (grey * scale + shift).clamp_(0.0, 1.0)
        return grey

    def forward(
        self, images: torch.Tensor, generator: torch.Generator | None = None, params: AugmentParams | torch.Tensor | None = None
    ) -> torch.Tensor:
        """Augment and normalise; ``params`` (e.g. a batch's ``augment`` ``(B, 5)`` table from
        :class:`~cxr_lightning.data.cache.CachedChestXrayDataset`) replaces the random draws."""
        self._check(images)
        grey = to_unit_float(images).clamp(0.0, 1.0)
        if params is None:
            params = self.sample_params(len(grey), grey.device, generator)
        elif isinstance(params, torch.Tensor):
            params = AugmentParams.from_tensor(params)
        if len(params.angle) != len(grey):
            raise ValueError(f"{len(params.angle)} augmentation parameter rows for a batch of {len(grey)}")
        return self.normalize(self.augment(grey, params).clamp_(0.0, 1.0))

    def extra_repr(self) -> str:
        return (
            f"rotation_degrees={self.rotation_degrees}, brightness={self.brightness}, contrast={self.contrast}, "
            f"horizontal_flip={self.horizontal_flip}, " + super().extra_repr()
        )


__all__ = ["AugmentParams", "BatchAugment", "BatchNormalize", "rotate_batch", "rotation_grid", "to_unit_float"]
