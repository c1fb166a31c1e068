"""Per-sample image transforms: resize, training augmentation, channel replication, normalisation.

The paper's pipeline for every model: resize to the input size, then on the training split only
a random rotation within +-10 degrees and brightness/contrast jitter of 0.1, then the grey
channel replicated to 3 channels (for ImageNet backbones) and normalised with the backbone's
mean and std. Resizing comes first so the augmentation works on the small image. A left-right
flip (CheXNet's recipe, off in the paper's configs) can precede the rotation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as F

#: mean and std per channel; a 1-channel input uses the channel average.
NORMALIZATIONS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),  # torchvision ResNet, the CNN
    "beit": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),  # microsoft/beit-base-patch16-224 image processor
    "imagenet_grey": ((0.449,), (0.226,)),  # the ImageNet mean/std averaged over channels
    "none": ((0.0,), (1.0,)),
    # torchxrayvision's models: [0, 1] -> [-1024, 1024], i.e. (x - 0.5) * 2048 (xrv.datasets.normalize)
    "xrv": ((0.5,), (1.0 / 2048,)),
}


def normalization_stats(name: str, channels: int) -> tuple[list[float], list[float]]:
    """Mean and std lists of length ``channels`` for a named normalisation."""
    if name not in NORMALIZATIONS:
        raise ValueError(f"unknown normalization {name!r}; choose one of {sorted(NORMALIZATIONS)}")
    mean, std = NORMALIZATIONS[name]
    if len(mean) != channels:
        mean, std = (sum(mean) / len(mean),) * channels, (sum(std) / len(std),) * channels
    return list(mean), list(std)


@dataclass
class Augmentation:
    """The training-split augmentation; zero disables a part. ``horizontal_flip`` is the
    probability of flipping an image left-right, applied before the rotation."""

    rotation_degrees: float = 10.0
    brightness: float = 0.1
    contrast: float = 0.1
    horizontal_flip: float = 0.0

    def apply(self, image: torch.Tensor, params: AugmentationParams) -> torch.Tensor:
        """Augment a ``(1, H, W)`` image in [0, 1] with drawn ``params``; disabled parts are skipped."""
        if self.horizontal_flip and params.flip:
            image = image.flip(-1)
        if self.rotation_degrees:
            image = F.rotate(image, params.angle, interpolation=InterpolationMode.BILINEAR, fill=0.0)
        steps = [(self.brightness, F.adjust_brightness, params.brightness), (self.contrast, F.adjust_contrast, params.contrast)]
        for enabled, adjust, factor in steps[::-1] if params.contrast_first else steps:
            if enabled:
                image = adjust(image, factor)
        return image

    def __call__(self, image: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Augment a ``(1, H, W)`` image in [0, 1] with parameters drawn from ``generator``."""
        return self.apply(image, draw_augmentation(generator, self))


@dataclass(frozen=True)
class AugmentationParams:
    """One sample's draws: rotation ``angle`` (degrees), ``brightness`` and ``contrast`` factors,
    whether contrast is applied before brightness, and whether the image is flipped left-right.
    A disabled part has angle 0 / factor 1 / no flip."""

    angle: float = 0.0
    brightness: float = 1.0
    contrast: float = 1.0
    contrast_first: bool = False
    flip: bool = False


def draw_augmentation(generator: torch.Generator | None, augmentation: Augmentation) -> AugmentationParams:
    """The one draw sequence of a sample's augmentation, shared by the per-sample path and the cached
    batch path (:mod:`cxr_lightning.data.gpu_augment`), so a sample seeded alike is augmented alike.

    Changing the order or number of draws changes every seeded run's augmentation: a new part
    draws only when enabled and after the others (the flip), so runs without it are unchanged.
    """
    device = generator.device if generator is not None else None

    def uniform() -> float:  # U[-1, 1]
        return torch.rand((), generator=generator, device=device).item() * 2 - 1

    angle = uniform() * augmentation.rotation_degrees if augmentation.rotation_degrees else 0.0
    # ColorJitter draws the order of brightness and contrast at random; we keep that too.
    order = torch.randperm(2, generator=generator, device=device).tolist()
    brightness = contrast = 1.0
    for op in order:
        if op == 0 and augmentation.brightness:
            brightness = 1 + uniform() * augmentation.brightness
        if op == 1 and augmentation.contrast:
            contrast = 1 + uniform() * augmentation.contrast
    flip = False
    if augmentation.horizontal_flip:  # drawn last and only when enabled: runs without flips draw as before
        flip = torch.rand((), generator=generator, device=device).item() < augmentation.horizontal_flip
    return AugmentationParams(angle, brightness, contrast, order[0] == 1, flip)


class ImageTransform:
    """Grey ``(1, H, W)`` in [0, 1] -> normalised ``(channels, size, size)`` float32."""

    def __init__(self, image_size: int, channels: int, normalization: str, augmentation: Augmentation | None = None):
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        self.image_size = image_size
        self.channels = channels
        self.augmentation = augmentation
        mean, std = normalization_stats(normalization, channels)
        self.mean = torch.tensor(mean).view(-1, 1, 1)
        self.std = torch.tensor(std).view(-1, 1, 1)

    def __call__(self, image: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if image.shape[-2:] != (self.image_size, self.image_size):
            image = F.resize(image, [self.image_size, self.image_size], interpolation=InterpolationMode.BILINEAR, antialias=True)
        if self.augmentation is not None:
            image = self.augmentation(image, generator)
        image = image.clamp_(0.0, 1.0).expand(self.channels, -1, -1)
        return (image - self.mean) / self.std
