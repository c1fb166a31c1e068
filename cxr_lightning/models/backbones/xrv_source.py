"""torchxrayvision's chest-X-ray-pretrained DenseNet-121 / ResNet-50, by weight name, as pooled-feature backbones.

``densenet121-res224-all``, ``-nih``, ``-pc``, ``-chex``, ``-rsna``, ``-mimic_nb``, ``-mimic_ch`` and
``resnet50-res512-all``: the name says the architecture, the resolution it was trained at and its
training data. The architecture is torchvision's with a one-channel first convolution (the same
parameter names as torchxrayvision's, so its weights load as they are), so a checkpoint rebuilds
without torchxrayvision installed; only fetching the weights needs it (``pip install -e '.[xrv]'``).

Input: one channel, [0, 1] scaled to [-1024, 1024] (the ``xrv`` normalisation, as
``xrv.datasets.normalize(img, 255)``), at the trained resolution (torchxrayvision's models resize
to it themselves; this backbone leaves resizing to the data side).

Weights are read with ``weights_only=True`` from ``weights_path``, else torchxrayvision's folder
(``~/.torchxrayvision/models_data``): first ``<name>.state_dict.pt``, then the release file itself.
The DenseNet release files pickle a whole torchxrayvision model (code, not just tensors), so they
are refused; the error gives the one command that re-saves their tensors as ``<name>.state_dict.pt``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from torch import nn

from cxr_lightning.models.backbones.facts import InputFacts
from cxr_lightning.models.backbones.torchvision_source import TorchvisionBackbone, fix_old_densenet_keys
from cxr_lightning.models.backbones.weight_files import (
    find_or_download,
    load_matching_state_dict,
    pretrained_requested,
    state_dict_from_path,
)
from cxr_lightning.models.weights import WeightsFileError, load_state_dict_file

__all__ = ["NIH_IMAGE_DATASETS", "XrvBackbone", "parse_xrv_name", "xrv_cache_dir"]

_NAME = re.compile(r"^(densenet121|resnet50)-res(\d+)-(\w+)$")
#: torchxrayvision training sets whose images are NIH ChestX-ray14's: ``nih``; ``all`` (NIH among
#: others); ``rsna`` (the RSNA Pneumonia Challenge relabelled NIH images). A model pretrained on
#: them may have seen the official NIH test images.
NIH_IMAGE_DATASETS = frozenset({"all", "nih", "rsna"})
# torchxrayvision's models drop their classifier and operating-point thresholds here.
_IGNORED = ("classifier.", "fc.", "op_threshs")


def parse_xrv_name(name: str) -> tuple[str, int, str]:
    """``"densenet121-res224-all"`` -> ``("densenet121", 224, "all")``: architecture, resolution, training data."""
    match = _NAME.match(name)
    if not match:
        raise ValueError(f"unknown torchxrayvision model {name!r}; use densenet121-res224-<all|nih|pc|chex|rsna|mimic_nb|"
                         "mimic_ch> or resnet50-res512-all")  # fmt: skip
    return match.group(1), int(match.group(2)), match.group(3)


def trained_on_nih(name: str) -> bool:
    """Whether torchxrayvision's weights ``name`` were trained on NIH ChestX-ray14 images."""
    return parse_xrv_name(name)[2] in NIH_IMAGE_DATASETS


def _import_xrv():
    try:
        import torchxrayvision
    except ImportError:
        raise ImportError("torchxrayvision weights need torchxrayvision: pip install -e '.[xrv]' (or pip install "
                          "torchxrayvision), or pass weights_path=... / weights=null") from None  # fmt: skip
    return torchxrayvision


def xrv_cache_dir() -> Path:
    """torchxrayvision's weights folder (``~/.torchxrayvision/models_data``)."""
    try:
        import torchxrayvision

        return Path(torchxrayvision.utils.get_cache_dir())
    except ImportError:  # the same folder, so weights copied there are found without the package
        return Path(os.path.expanduser(os.path.join("~", ".torchxrayvision", "models_data")))


def _one_channel_like(conv: nn.Conv2d) -> nn.Conv2d:
    return nn.Conv2d(1, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, bias=conv.bias is not None)


class XrvBackbone(TorchvisionBackbone):
    """torchxrayvision DenseNet-121 / ResNet-50 features: ``(B, 1, H, W)`` -> ``(B, 1024 | 2048)``.

    Args:
        name: torchxrayvision weight name, e.g. ``densenet121-res224-all``, ``resnet50-res512-all``.
        weights: ``DEFAULT`` (the named weights) or None (random init of the same architecture).
        weights_path: a local state dict of that model, read instead of torchxrayvision's folder.
        allow_download: if False, missing weights stop at once instead of trying the network.

    Attributes:
        trained_on_nih: the named weights were trained on NIH ChestX-ray14 images (``all``, ``nih``,
            ``rsna``): their training may have seen the official test images.
    """

    def __init__(self, name: str, weights: str | None = "DEFAULT", weights_path: str | os.PathLike[str] | None = None,
                 allow_download: bool = True) -> None:  # fmt: skip
        architecture, resolution, _ = parse_xrv_name(name)
        super().__init__(architecture, weights=None)
        self.name = name
        if architecture == "densenet121":
            self.model.features.conv0 = _one_channel_like(self.model.features.conv0)
        else:
            self.model.conv1 = _one_channel_like(self.model.conv1)
        self.in_channels = 1
        self.input_facts = InputFacts.named(resolution, 1, "xrv")
        use = pretrained_requested(weights, f"torchxrayvision {name}")  # the name says which
        self.trained_on_nih = bool((use or weights_path is not None) and trained_on_nih(name))
        if weights_path is not None:
            self.load_weights(state_dict_from_path(weights_path, f"torchxrayvision {name}"), str(weights_path))
        elif use:
            path = self.find_weights_file(allow_download)
            self.load_weights(self._read(path), str(path))

    def converted_path(self) -> Path:
        return xrv_cache_dir() / f"{self.name}.state_dict.pt"

    def conversion_command(self) -> str:
        return (f"python -c \"import torch, torchxrayvision as xrv; torch.save(xrv.models.get_model('{self.name}')"
                f".state_dict(), '{self.converted_path()}')\"")  # fmt: skip

    def find_weights_file(self, allow_download: bool) -> Path:
        converted = self.converted_path()
        if converted.is_file():
            return converted
        try:
            catalog = _import_xrv().models.model_urls
        except ImportError as err:
            raise ImportError(f"torchxrayvision {self.name} weights not found at {str(converted)!r}; {err}") from None
        if self.name not in catalog:
            raise ValueError(f"torchxrayvision has no weights {self.name!r}; it has {sorted(k for k in catalog if '-res' in k)}")
        url = catalog[self.name]["weights_url"]
        release = xrv_cache_dir() / os.path.basename(url)
        return find_or_download(f"torchxrayvision {self.name} weights", url, [converted, release],
                                f"{self.conversion_command()} on a machine with internet access, then copy "
                                f"{converted.name} into {converted.parent}", allow_download)  # fmt: skip

    def _read(self, path: Path):
        try:
            return load_state_dict_file(path)
        except WeightsFileError as err:
            if "pickled Python objects" not in str(err):
                raise
            raise WeightsFileError(f"{path} pickles a whole torchxrayvision model (code, not only tensors) and is not "
                                   f"loaded; if you trust it, save its tensors once with: {self.conversion_command()}") from err  # fmt: skip

    def load_weights(self, state_dict, source: str) -> None:
        """torchxrayvision's weights (its model's state dict, or a release file's): classifier and thresholds ignored."""
        load_matching_state_dict(self.model, fix_old_densenet_keys(state_dict), source, ignore_prefixes=_IGNORED)
