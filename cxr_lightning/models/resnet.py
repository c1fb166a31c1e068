"""ImageNet ResNet-50 image backbone (torchvision), with the paper code's optional high-resolution stem.

Pretrained weights are found without network access when they are on disk:

1. ``weights_path``: a local state dict / checkpoint file, if given;
2. torchvision's cache, ``torch.hub.get_dir()/checkpoints/<file name of the weights' URL>``
   (``$TORCH_HOME/hub/checkpoints``, default ``~/.cache/torch/hub/checkpoints``);
3. otherwise torchvision's download is tried, and its failure (e.g. offline) becomes a
   :class:`~cxr_lightning.models.weights.WeightsNotFoundError` explaining how to fetch the file.
"""

from __future__ import annotations

import os
from pathlib import Path

from torch import Tensor, nn
from torchvision.models import ResNet50_Weights, resnet50

from cxr_lightning.data.transforms import NORMALIZATIONS
from cxr_lightning.models.weights import (
    WeightsNotFoundError,
    load_state_dict_file,
    strip_to_model_keys,
    torch_hub_checkpoint_dir,
)

__all__ = ["HighResStem", "ResNet50Backbone", "resolve_resnet50_weights"]

WEIGHT_NAMES = tuple(w.name for w in ResNet50_Weights)
# The stem maps its output into the range of ImageNet-normalised input: x * std + mean of the
# channel-averaged ImageNet statistics (the data side's "imagenet_grey" normalisation).
(IMAGENET_GREY_MEAN,), (IMAGENET_GREY_STD,) = NORMALIZATIONS["imagenet_grey"]


class HighResStem(nn.Module):
    """Three learned conv layers that shrink a 1024x1024 one-channel grey image to a 3-channel ResNet input.

    As in the paper's code: Conv2d(1->32, k5, s2) + BN + ReLU, Conv2d(32->16, k7, s2) + BN + ReLU,
    Conv2d(16->3, k9, s1) + BN, then ``x * 0.226 + 0.449`` so the output has roughly the range of
    ImageNet-normalised input (0.226/0.449: ImageNet's std/mean averaged over channels, read from the
    ``imagenet_grey`` entry of :data:`~cxr_lightning.data.transforms.NORMALIZATIONS`).  No padding, so each
    side shrinks as ``out = floor((in - k) / s) + 1``::

        1024 -> floor((1024 - 5) / 2) + 1 = 510 -> floor((510 - 7) / 2) + 1 = 252 -> 252 - 9 + 1 = 244

    i.e. a 1024x1024 input gives **244x244**, not the 224x224 the paper's text states (its code gives 244;
    ResNet-50's global pool makes either size work).  Use :meth:`output_size` for other sizes.
    """

    SPECS = ((5, 2), (7, 2), (9, 1))  # (kernel, stride) of the three convs

    def __init__(self, in_channels: int = 1, scale: float = IMAGENET_GREY_STD, shift: float = IMAGENET_GREY_MEAN) -> None:
        super().__init__()
        self.in_channels = int(in_channels)
        self.conv1 = nn.Conv2d(self.in_channels, 32, kernel_size=5, stride=2)
        self.bn1 = nn.BatchNorm2d(32)
        self.conv2 = nn.Conv2d(32, 16, kernel_size=7, stride=2)
        self.bn2 = nn.BatchNorm2d(16)
        self.conv3 = nn.Conv2d(16, 3, kernel_size=9, stride=1)
        self.bn3 = nn.BatchNorm2d(3)
        self.relu = nn.ReLU(inplace=True)
        self.scale = float(scale)
        self.shift = float(shift)
        self.out_channels = 3

    @classmethod
    def output_size(cls, size: int) -> int:
        """Side length of the stem's output for an input side of ``size`` pixels (1024 -> 244)."""
        for kernel, stride in cls.SPECS:
            size = (size - kernel) // stride + 1
        return size

    def forward(self, images: Tensor) -> Tensor:
        """``(B, 1, H, W)`` -> ``(B, 3, H', W')``, e.g. 1024 -> 244."""
        x = self.relu(self.bn1(self.conv1(images)))
        x = self.relu(self.bn2(self.conv2(x)))
        x = self.bn3(self.conv3(x))
        return x * self.scale + self.shift


def resolve_resnet50_weights(weights: str | ResNet50_Weights | None) -> ResNet50_Weights | None:
    """``"IMAGENET1K_V2"`` / ``"ResNet50_Weights.IMAGENET1K_V1"`` / ``"DEFAULT"`` / enum / None -> enum or None."""
    if weights is None or isinstance(weights, ResNet50_Weights):
        return weights
    name = str(weights).strip()
    name = name.split(".", 1)[1] if name.startswith("ResNet50_Weights.") else name
    if name.lower() in {"", "none", "null", "random"}:
        return None
    try:
        return ResNet50_Weights[name.upper()]
    except KeyError:
        raise ValueError(
            f"unknown ResNet-50 weights {weights!r}: use one of {list(WEIGHT_NAMES)}, 'DEFAULT' or None (random init)"
        ) from None


def weights_file_name(weights: ResNet50_Weights) -> str:
    """The file name torchvision caches the weights under (the basename of their URL)."""
    return os.path.basename(weights.url)


def _fetch_instructions(weights: ResNet50_Weights, cache_dir: Path) -> str:
    return (
        "To fetch it, on a machine with internet access run\n"
        f'    python -c "from torchvision.models import resnet50, ResNet50_Weights; '
        f'resnet50(weights=ResNet50_Weights.{weights.name})"\n'
        f"(or download {weights.url}), then copy {weights_file_name(weights)} into {cache_dir} "
        "(the directory torch.hub.get_dir()/checkpoints, i.e. $TORCH_HOME/hub/checkpoints, on this machine) "
        "or pass its path as weights_path=... . For random init use weights=None."
    )


def load_resnet50_state_dict(
    weights: ResNet50_Weights | None,
    weights_path: str | os.PathLike[str] | None = None,
    progress: bool = False,
    allow_download: bool = True,
) -> tuple[dict[str, Tensor], str]:
    """Find and load ResNet-50 weights; returns ``(state_dict, source)`` where source is the file used.

    Raises:
        WeightsNotFoundError: ``weights_path`` does not exist, or ``weights`` are neither in the torchvision
            cache nor downloadable.
    """
    if weights_path is not None:
        path = Path(weights_path).expanduser()
        if not path.is_file():
            raise WeightsNotFoundError(
                f"ResNet-50 weights_path not found: {str(path)!r} (looked for {str(path.resolve())!r}). "
                "Pass the path of a local .pth state dict (or a checkpoint with a 'state_dict'), or weights_path=None "
                "to use torchvision's cache."
            )
        return load_state_dict_file(path), str(path)
    if weights is None:
        raise ValueError("no weights to load: weights is None and no weights_path given")

    cache_dir = torch_hub_checkpoint_dir()
    file_name = weights_file_name(weights)
    cached = cache_dir / file_name
    if cached.is_file():
        # Present in torchvision's cache: load it directly, no network involved.
        return load_state_dict_file(cached), str(cached)

    not_found = (
        f"ResNet-50 weights {weights.name} not available offline: file {file_name!r} was not found at "
        f"{str(cached)!r} (torchvision cache, torch.hub.get_dir()/checkpoints) and no weights_path was given; "
    )
    if not allow_download:
        raise WeightsNotFoundError(
            not_found + f"downloading {weights.url} was not tried (allow_download=False).\n"
            + _fetch_instructions(weights, cache_dir)
        )
    try:
        # Same call torchvision makes; downloads into cache_dir if the network allows.
        state_dict = weights.get_state_dict(progress=progress, check_hash=False, weights_only=True)
    except Exception as exc:  # URLError, socket.timeout, HTTPError, ...
        raise WeightsNotFoundError(
            not_found + f"downloading it from {weights.url} failed ({type(exc).__name__}: {exc}).\n"
            + _fetch_instructions(weights, cache_dir)
        ) from exc
    return state_dict, str(cached)


class ResNet50Backbone(nn.Module):
    """torchvision ResNet-50 with ``fc = nn.Identity()``: ``(B, 3, H, W)`` -> ``(B, 2048)`` pooled features.

    Args:
        weights: a torchvision ``ResNet50_Weights`` name (``"IMAGENET1K_V1"``, ``"IMAGENET1K_V2"``,
            ``"DEFAULT"``) or ``None`` for random init.
        weights_path: a local ``.pth`` state dict, or a checkpoint holding one under ``"state_dict"``
            (e.g. Lightning; key prefixes in front of ``conv1.weight`` are stripped).  Takes precedence over
            torchvision's cache.  ``fc.*`` keys are ignored, so a checkpoint with any classifier size loads.
        high_res_stem: put :class:`HighResStem` first; the model then takes ``(B, 1, H, W)`` grey input
            (1024x1024 in the paper -> 244x244 into the ResNet).  The stem is always randomly initialised.
        progress: show a progress bar if a download is attempted.
        allow_download: if False, never touch the network: missing weights raise at once (an offline
            machine whose DNS does not fail fast could otherwise wait on the download).

    Attributes:
        out_features: 2048.
        in_channels: 3, or 1 with the high-res stem.

    The input's preprocessing (size, channels, normalisation) is the DataModule's
    (``data.images.size``, ``data.images.channels``, ``data.images.normalization``: ``imagenet`` for the
    pretrained body, ``none`` with the stem, see :data:`cxr_lightning.data.transforms.NORMALIZATIONS`).
    """

    out_features: int = 2048

    def __init__(
        self,
        weights: str | ResNet50_Weights | None = "IMAGENET1K_V2",
        weights_path: str | os.PathLike[str] | None = None,
        high_res_stem: bool = False,
        progress: bool = False,
        allow_download: bool = True,
    ) -> None:
        super().__init__()
        enum = resolve_resnet50_weights(weights)
        self.stem: nn.Module | None = HighResStem() if high_res_stem else None
        self.resnet = resnet50(weights=None)
        self.resnet.fc = nn.Identity()
        self.out_features = 2048
        self.in_channels = 1 if high_res_stem else 3

        if weights_path is not None or enum is not None:
            state_dict, source = load_resnet50_state_dict(
                enum, weights_path, progress=progress, allow_download=allow_download
            )
            self.load_resnet_state_dict(state_dict, source=source)

    def load_resnet_state_dict(self, state_dict: dict[str, Tensor], source: str = "state dict") -> None:
        """Load torchvision-layout ResNet-50 weights into the body, ignoring ``fc.*`` (strict otherwise)."""
        sd = strip_to_model_keys(state_dict, anchor="conv1.weight", ignore_prefixes=("fc.",))
        result = self.resnet.load_state_dict(sd, strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise RuntimeError(
                f"{source} is not a torchvision ResNet-50 state dict: "
                f"{len(result.missing_keys)} missing keys (e.g. {result.missing_keys[:5]}), "
                f"{len(result.unexpected_keys)} unexpected keys (e.g. {result.unexpected_keys[:5]})"
            )

    def forward(self, images: Tensor) -> Tensor:
        """``(B, in_channels, H, W)`` -> ``(B, 2048)``."""
        if self.stem is not None:
            images = self.stem(images)
        return self.resnet(images)
