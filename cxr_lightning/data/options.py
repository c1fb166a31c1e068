"""The DataModule's options, in sections (split, labels, metadata, images, augmentation, loading).

A config reads ``data: {split: {name: official}, images: {size: 64}, ...}``. Configs, Python
callers and checkpoints written before the sections name the options flat (``image_size: 64``):
:data:`FLAT_OPTIONS` is the one table from those names to the sections, and
:func:`sectioned_data_config` reads a ``data:`` mapping of either layout.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Literal

from cxr_lightning.data.encoding import MetadataEncoding, PosWeightScheme
from cxr_lightning.data.metadata import BadValuePolicy
from cxr_lightning.data.splits import PAPER_SEED, PAPER_VAL_FRACTION, PATIENT_FRACTIONS, SplitName


class ConfigValueError(ValueError):
    """A DataModule option outside its allowed range or layout; the message names the option and the value."""


@dataclass(frozen=True)
class SplitOptions:
    """Which patients train, validate and test.

    Args:
        name: ``paper`` (73,633 / 12,891 / 25,596), ``official`` (official test list and a
            patient-grouped validation part of ``val_fraction``) or ``patient`` (random
            patient-grouped parts of ``fractions``).
        seed: seed of the ``official`` and ``patient`` splits (which patients validate and test);
            also the training seed unless ``data.training_seed`` is set.
        val_fraction: patient fraction of train_val used for validation (``official``).
        fractions: train/val/test patient fractions of the ``patient`` split.
        stratify: ``patient`` split only: cut each rarest-finding stratum by the fractions.
        train_val_list: official train_val list; default ``data_root``'s or the packaged one.
        test_list: official test list; default ``data_root``'s or the packaged one.
    """

    name: SplitName = "paper"
    seed: int = PAPER_SEED
    val_fraction: float = PAPER_VAL_FRACTION
    fractions: tuple[float, float, float] = PATIENT_FRACTIONS
    stratify: bool = False
    train_val_list: str | Path | None = None
    test_list: str | Path | None = None

    def __post_init__(self):
        _normalise(self, "train_val_list", "test_list")
        object.__setattr__(self, "fractions", tuple(self.fractions))  # YAML gives a list, Python a tuple: one value


@dataclass(frozen=True)
class LabelOptions:
    """What the model predicts and how the loss weighs it.

    Args:
        include_no_finding: 15 labels (the paper's) or the 14 findings only.
        class_weights: positive-class loss weights from the train split: ``none``, ``linear``,
            ``log`` (ResNet code) or ``beit_log`` (BEiT code).
    """

    include_no_finding: bool = True
    class_weights: PosWeightScheme = "none"


@dataclass(frozen=True)
class MetadataOptions:
    """The patient metadata (age, sex, view) read and fed to the model.

    Args:
        csv: metadata CSV; default the one in ``data_root`` or the packaged 2020 file.
        encoding: ``onehot`` (paper text, 5 features), ``code`` (ResNet/BEiT code, 3) or ``cnn`` (CNN code, 3).
        bad_values: ``missing`` (count and impute bad ages/sexes/views) or ``error``.
    """

    csv: str | Path | None = None
    encoding: MetadataEncoding = "onehot"
    bad_values: BadValuePolicy = "missing"

    def __post_init__(self):
        _normalise(self, "csv")


@dataclass(frozen=True)
class ImageOptions:
    """How images are read and shaped into the model's input.

    Args:
        size: side of the square model input in pixels.
        channels: 3 (grey replicated, for ImageNet backbones) or 1.
        normalization: ``imagenet``, ``beit`` (0.5/0.5), ``imagenet_grey``, ``xrv`` (torchxrayvision's
            [-1024, 1024]) or ``none``.

        Left null, ``size``, ``channels`` and ``normalization`` are the model's: the CLI fills them
        from a :class:`~cxr_lightning.models.BackboneClassifier`'s backbone (its input facts), so the
        data side is never told them a second time; otherwise (the paper's models, or the DataModule
        built alone) they are :data:`IMAGE_DEFAULTS`, 224 / 3 / ``imagenet``.
        on_bad: ``error`` stops at a missing or undecodable image, naming it; ``skip`` leaves it
            out, counts it and reports the names (missing files at set-up, unreadable ones at the
            end of each epoch).
        cache: ``auto`` reads the images from the preprocessed cache of ``size``
            (``cxr-lightning data prepare``) when one holds them, else decodes the PNGs; ``off``
            always decodes; ``required`` stops when there is no such cache. With the cache the
            CPU only moves uint8 bytes: augmentation and normalisation run on the training
            device after transfer (``on_after_batch_transfer``), with the same distributions.
        cache_dir: the cache folder, default ``data_root/cache/<size>``.
    """

    size: int | None = None
    channels: Literal[1, 3] | None = None
    normalization: str | None = None
    on_bad: Literal["error", "skip"] = "error"
    cache: Literal["auto", "off", "required"] = "auto"
    cache_dir: str | Path | None = None

    def __post_init__(self):
        _normalise(self, "cache_dir")

    def resolved(self) -> ImageOptions:
        """These options with each input fact left null at its default (:data:`IMAGE_DEFAULTS`)."""
        return replace(self, **{key: value for key, value in IMAGE_DEFAULTS.items() if getattr(self, key) is None})


#: The input facts of an ImageOptions left null when no model gives them (the paper's ImageNet input).
IMAGE_DEFAULTS = {"size": 224, "channels": 3, "normalization": "imagenet"}


@dataclass(frozen=True)
class AugmentationOptions:
    """Random changes to training images (never to validation or test images).

    Args:
        enabled: augment the training split (rotation, brightness/contrast jitter).
        rotation_degrees: maximum absolute rotation angle.
        brightness: brightness jitter (factor drawn from [1 - b, 1 + b]).
        contrast: contrast jitter (factor drawn from [1 - c, 1 + c]).
        horizontal_flip: probability of a left-right flip of a training image; 0 in the paper's
            configs: a chest X-ray's left and right are not symmetric (heart, aortic arch), which is
            why the paper did not flip, but CheXNet's recipe did.
    """

    enabled: bool = True
    rotation_degrees: float = 10.0
    brightness: float = 0.1
    contrast: float = 0.1
    horizontal_flip: float = 0.0


@dataclass(frozen=True)
class LoadingOptions:
    """Batches, worker processes and the training order.

    Args:
        batch_size: training batch size (per device).
        eval_batch_size: validation/test batch size; default ``batch_size``.
        num_workers: DataLoader worker processes.
        pin_memory: pin host memory for faster transfer to the GPU.
        persistent_workers: keep workers alive between epochs.
        prefetch_factor: batches each worker loads ahead (PyTorch's default 2 when null).
        sampler: training order: ``shuffle`` (each image once per epoch) or ``rare_findings``
            (weighted sampling with replacement, an image's weight growing with the rarity of its
            rarest finding; see :func:`cxr_lightning.data.sampling.rare_finding_weights`).
        sampler_power: ``rare_findings`` only: weight = (N / positives of the rarest finding) ** power.
    """

    batch_size: int = 32
    eval_batch_size: int | None = None
    num_workers: int = 4
    pin_memory: bool = True
    persistent_workers: bool = False
    prefetch_factor: int | None = None
    sampler: Literal["shuffle", "rare_findings"] = "shuffle"
    sampler_power: float = 0.5


@dataclass(frozen=True)
class SyntheticData:
    """Generate a synthetic NIH-layout dataset in ``data_root`` when it holds no metadata CSV."""

    num_images: int = 2000
    image_size: int = 64
    seed: int = 0


#: The sections, by their key under ``data:``.
SECTIONS: dict[str, type] = {
    "split": SplitOptions,
    "labels": LabelOptions,
    "metadata": MetadataOptions,
    "images": ImageOptions,
    "augmentation": AugmentationOptions,
    "loading": LoadingOptions,
}
#: Options outside any section.
TOP_LEVEL = ("data_root", "training_seed", "synthetic")

#: Each flat option name (the layout before the sections) and where it lives now.
FLAT_OPTIONS: dict[str, str] = {
    "data_root": "data_root",
    "training_seed": "training_seed",
    "synthetic": "synthetic",
    "split": "split.name",
    "seed": "split.seed",
    "val_fraction": "split.val_fraction",
    "fractions": "split.fractions",
    "stratify": "split.stratify",
    "train_val_list": "split.train_val_list",
    "test_list": "split.test_list",
    "include_no_finding": "labels.include_no_finding",
    "class_weights": "labels.class_weights",
    "metadata_csv": "metadata.csv",
    "metadata_encoding": "metadata.encoding",
    "bad_values": "metadata.bad_values",
    "image_size": "images.size",
    "image_channels": "images.channels",
    "normalization": "images.normalization",
    "on_bad_image": "images.on_bad",
    "image_cache": "images.cache",
    "cache_dir": "images.cache_dir",
    "augment": "augmentation.enabled",
    "rotation_degrees": "augmentation.rotation_degrees",
    "brightness": "augmentation.brightness",
    "contrast": "augmentation.contrast",
    "horizontal_flip": "augmentation.horizontal_flip",
    "batch_size": "loading.batch_size",
    "eval_batch_size": "loading.eval_batch_size",
    "num_workers": "loading.num_workers",
    "pin_memory": "loading.pin_memory",
    "persistent_workers": "loading.persistent_workers",
    "prefetch_factor": "loading.prefetch_factor",
    "sampler": "loading.sampler",
    "sampler_power": "loading.sampler_power",
}


def is_flat_entry(key: str, value) -> bool:
    """Whether ``key: value`` under ``data:`` is in the flat layout (``split: official`` is; ``split: {name: ...}`` is not)."""
    if key in SECTIONS:
        return key == "split" and not _is_section_value(value)
    return key in FLAT_OPTIONS and key not in TOP_LEVEL


def _is_section_value(value) -> bool:
    return isinstance(value, Mapping) or (is_dataclass(value) and not isinstance(value, type))


def sectioned_data_config(mapping: Mapping) -> dict:
    """A ``data:`` mapping in the sectioned layout, from one in the flat, the sectioned or a mixed layout.

    Only the options given are returned (no defaults filled in). A key that is neither layout's, or
    an option given both ways with different values, is a one-line :class:`ConfigValueError`.
    """
    out: dict = {}
    given_as: dict[str, str] = {}  # section path -> how the config named it, for the conflict message

    def put(path: str, value, name: str) -> None:
        section, _, leaf = path.rpartition(".")
        target = out.setdefault(section, {}) if section else out
        if path in given_as and not _same_value(target[leaf], value):
            raise ConfigValueError(f"data.{given_as[path]}={target[leaf]!r} and data.{name}={value!r} set the same option "
                                   f"(data.{path}) differently; keep one")  # fmt: skip
        target[leaf] = value
        given_as[path] = name

    for key, value in mapping.items():
        if key in SECTIONS and _is_section_value(value):
            section_fields = [f.name for f in fields(SECTIONS[key])]
            items = asdict(value) if is_dataclass(value) else value
            for leaf, leaf_value in items.items():
                if leaf not in section_fields:
                    raise ConfigValueError(f"data.{key}.{leaf} is not an option; data.{key} has: {', '.join(section_fields)}")
                put(f"{key}.{leaf}", leaf_value, f"{key}.{leaf}")
        elif key in FLAT_OPTIONS:
            put(FLAT_OPTIONS[key], value, key)
        else:
            raise ConfigValueError(f"data.{key} is not a data option; valid: {', '.join(valid_option_names())}")
    return out


def valid_option_names() -> list[str]:
    """Every name a ``data:`` mapping may hold: the sections, the top-level options and the flat names."""
    return [*TOP_LEVEL, *SECTIONS, *(name for name in FLAT_OPTIONS if name not in TOP_LEVEL and name not in SECTIONS)]


def _same_value(a, b) -> bool:
    """Equal, reading a list and a tuple of the same items (YAML's and Python's fractions) as the same."""
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return list(a) == list(b)
    return a == b


@dataclass(frozen=True)
class DataOptions:
    """Every DataModule option, sections filled from their defaults where a config leaves them out."""

    data_root: str | Path = "data/nih"
    split: SplitOptions = field(default_factory=SplitOptions)
    labels: LabelOptions = field(default_factory=LabelOptions)
    metadata: MetadataOptions = field(default_factory=MetadataOptions)
    images: ImageOptions = field(default_factory=ImageOptions)
    augmentation: AugmentationOptions = field(default_factory=AugmentationOptions)
    loading: LoadingOptions = field(default_factory=LoadingOptions)
    training_seed: int | None = None
    synthetic: SyntheticData | None = None

    def __post_init__(self):
        _normalise(self, "data_root")

    @classmethod
    def from_config(cls, mapping: Mapping) -> DataOptions:
        """The options a ``data:`` mapping (flat, sectioned or mixed; partial sections) sets."""
        config = sectioned_data_config(mapping)
        sections = {key: SECTIONS[key](**config.pop(key, {})) for key in SECTIONS}
        synthetic = config.pop("synthetic", None)
        if isinstance(synthetic, Mapping):
            synthetic = SyntheticData(**synthetic)
        return cls(**config, **sections, synthetic=synthetic)

    def as_plain_dict(self) -> dict:
        """Nested dicts of str/int/float/bool/list/None (paths as str, tuples as lists): what a checkpoint stores."""
        return _plain(asdict(self))


def _normalise(options, *path_fields: str) -> None:
    """Paths as str, so options given as ``Path`` or as ``str`` (a config, a checkpoint) are equal."""
    for name in path_fields:
        value = getattr(options, name)
        if isinstance(value, Path):
            object.__setattr__(options, name, str(value))


def _plain(value):
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, Path):
        return str(value)
    return value
