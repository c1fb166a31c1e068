"""``ChestXrayDataModule``: NIH ChestX-ray14 (or a synthetic stand-in) as Lightning dataloaders."""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch.utils.data import DataLoader

from cxr_lightning.data.cache import CachedChestXrayDataset, ImageCache, cached_collate, default_cache_dir, open_cache
from cxr_lightning.data.dataset import DOWNLOAD_HINT, ChestXrayDataset, DataNotFoundError, has_images, index_images
from cxr_lightning.data.encoding import MetadataEncoder, positive_class_weights
from cxr_lightning.data.gpu_augment import BatchAugment, BatchNormalize
from cxr_lightning.data.labels import label_names
from cxr_lightning.data.loading import ResumableDataLoader, ResumableSampler, collate_skipping_bad
from cxr_lightning.data.metadata import TEST_LIST, TRAIN_VAL_LIST, NIHMetadata, find_image_list, find_metadata_csv, read_metadata
from cxr_lightning.data.options import (
    FLAT_OPTIONS,
    SECTIONS,
    AugmentationOptions,
    ConfigValueError,
    DataOptions,
    ImageOptions,
    LabelOptions,
    LoadingOptions,
    MetadataOptions,
    SplitOptions,
    SyntheticData,
    valid_option_names,
)
from cxr_lightning.data.sampling import RareFindingSampler, rare_finding_weights
from cxr_lightning.data.splits import PARTS, Split, make_split
from cxr_lightning.data.transforms import Augmentation, ImageTransform, normalization_stats

#: The smallest input every shipped backbone still reduces to a feature map (the baseline CNN pools
#: four times by 2), and twice the NIH originals' 1024-pixel side: beyond that nothing is gained and
#: a batch no longer fits in memory (100000 px would ask for 40 GB per image).
IMAGE_SIZE_RANGE = (16, 2048)
#: A batch larger than this does not fit in any accelerator's memory at the smallest image size.
BATCH_SIZE_RANGE = (1, 65536)
NUM_WORKERS_RANGE = (0, 1024)


def _check_int(name: str, value, allowed: tuple[int, int]) -> None:
    low, high = allowed
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not low <= value <= high:
        raise ConfigValueError(f"data.{name} must be an integer in {low}..{high}, got {value!r}")


def _check_fraction(name: str, value, closed: bool = False) -> None:
    """``value`` in (0, 1), or in [0, 1] when ``closed``."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (0 <= value <= 1 if closed else 0 < value < 1)
    if not ok:
        raise ConfigValueError(f"data.{name} must be a number in {'[0, 1]' if closed else '(0, 1)'}, got {value!r}")


def check_options(options: DataOptions) -> None:
    """Range checks of :class:`ChestXrayDataModule`'s numeric options, at construction, before any data is read."""
    images, loading, split, augmentation = options.images, options.loading, options.split, options.augmentation
    _check_int("images.size", images.size, IMAGE_SIZE_RANGE)
    _check_int("loading.batch_size", loading.batch_size, BATCH_SIZE_RANGE)
    if loading.eval_batch_size is not None:
        _check_int("loading.eval_batch_size", loading.eval_batch_size, BATCH_SIZE_RANGE)
    _check_int("loading.num_workers", loading.num_workers, NUM_WORKERS_RANGE)
    if loading.prefetch_factor is not None:
        _check_int("loading.prefetch_factor", loading.prefetch_factor, (1, 1024))
    _check_fraction("split.val_fraction", split.val_fraction)
    fractions = split.fractions
    if len(fractions) != 3:
        raise ConfigValueError(f"data.split.fractions must be three numbers (train, val, test), got {fractions!r}")
    for fraction in fractions:
        _check_fraction("split.fractions", fraction, closed=True)
    if not math.isclose(sum(fractions), 1.0, abs_tol=1e-6):
        raise ConfigValueError(f"data.split.fractions must sum to 1, got {list(fractions)} (sum {sum(fractions):g})")
    degrees = augmentation.rotation_degrees
    if not (isinstance(degrees, (int, float)) and 0 <= degrees <= 180):
        raise ConfigValueError(f"data.augmentation.rotation_degrees must be a number in [0, 180], got {degrees!r}")
    for name in ("brightness", "contrast"):  # the factor is drawn from [1 - b, 1 + b]: b >= 1 could black an image out
        value = getattr(augmentation, name)
        if not (isinstance(value, (int, float)) and 0 <= value < 1):
            raise ConfigValueError(f"data.augmentation.{name} must be a number in [0, 1), got {value!r}")
    _check_fraction("augmentation.horizontal_flip", augmentation.horizontal_flip, closed=True)


# Marks the DataModule's state in a checkpoint. Lightning stores it under the DataModule's class
# name, which a subclass changes: readers look for this mark instead.
DATA_STATE_KIND = "cxr_lightning data spec 1"

# The defaults of the section arguments: a section left at its default object is "not given", so a
# flat name passed beside it (``image_size=32``) is no conflict.
_DEFAULT_SECTIONS = {key: section() for key, section in SECTIONS.items()}


class ChestXrayDataModule(L.LightningDataModule):
    """NIH ChestX-ray14 with patient-grouped splits, augmentation and metadata encoding.

    Batches are dicts: ``image`` ``(B, C, S, S)`` float32 normalised, ``metadata`` ``(B, M)``,
    ``labels`` ``(B, L)`` float32 0/1 in the order of :data:`cxr_lightning.LABELS` (or the 14
    findings), ``name`` (list of image names) and ``index`` (positions in the part's dataset).

    Citation: Wang et al., "ChestX-ray8: Hospital-scale chest X-ray database and benchmarks",
    CVPR 2017. Images: https://nihcc.app.box.com/v/ChestXray-NIHCC (``cxr-lightning data
    download``). The metadata CSV and official lists ship with the package and are used unless
    ``data_root`` (or the explicit paths) holds other copies.

    The options are in sections (:mod:`cxr_lightning.data.options` documents each); a section may
    be given as its dataclass or as a dict of some of its fields (the rest keep their defaults).

    Args:
        data_root: folder in the NIH layout (``images/*.png``, optional CSV and list files).
        split: which patients train, validate and test (:class:`~cxr_lightning.data.options.SplitOptions`).
        labels: the labels predicted and their loss weights (:class:`~cxr_lightning.data.options.LabelOptions`).
        metadata: the metadata CSV and its encoding (:class:`~cxr_lightning.data.options.MetadataOptions`).
        images: input size, channels, normalisation, bad images, the image cache
            (:class:`~cxr_lightning.data.options.ImageOptions`).
        augmentation: training-image augmentation (:class:`~cxr_lightning.data.options.AugmentationOptions`).
        loading: batches, workers and the training order (:class:`~cxr_lightning.data.options.LoadingOptions`).
        training_seed: seed of the augmentation, the shuffling and the oversampling; unset, the
            split's ``split.seed`` (as before this option existed). Vary it, not ``split.seed``, to
            train again on the same patients with other random draws.
        synthetic: generate a synthetic dataset into ``data_root`` if it has no metadata CSV.
        legacy_options: the flat option names of before the sections (``image_size=64``, as older
            Python callers and checkpoints pass them), read through
            :data:`cxr_lightning.data.options.FLAT_OPTIONS`.
    """

    def __init__(
        self,
        data_root: str | Path = "data/nih",
        split: SplitOptions = _DEFAULT_SECTIONS["split"],
        labels: LabelOptions = _DEFAULT_SECTIONS["labels"],
        metadata: MetadataOptions = _DEFAULT_SECTIONS["metadata"],
        images: ImageOptions = _DEFAULT_SECTIONS["images"],
        augmentation: AugmentationOptions = _DEFAULT_SECTIONS["augmentation"],
        loading: LoadingOptions = _DEFAULT_SECTIONS["loading"],
        training_seed: int | None = None,
        synthetic: SyntheticData | None = None,
        **legacy_options,
    ):
        unknown = [name for name in legacy_options if name not in FLAT_OPTIONS]
        if unknown:
            valid = ", ".join(valid_option_names())
            raise TypeError(f"{type(self).__name__}: unknown option(s) {', '.join(unknown)}; valid: {valid}")
        given = {"data_root": data_root, "training_seed": training_seed, "synthetic": synthetic}
        sections = {"split": split, "labels": labels, "metadata": metadata, "images": images,
                    "augmentation": augmentation, "loading": loading}  # fmt: skip
        given.update({key: value for key, value in sections.items() if value is not _DEFAULT_SECTIONS[key]})
        options = DataOptions.from_config({**given, **legacy_options})
        self.options = replace(options, images=options.images.resolved())  # null input facts: the defaults
        check_options(self.options)  # fail before anything is read or built
        super().__init__()
        # Plain types only (nested dicts, paths as str) so checkpoints load with torch.load(weights_only=True);
        # a checkpoint's hyper-parameters rebuild the DataModule as ChestXrayDataModule(**hparams).
        self.save_hyperparameters(self.options.as_plain_dict())
        self.synthetic = self.options.synthetic
        images = self.options.images
        normalization_stats(images.normalization, images.channels)  # fail early on a bad name
        self.data_root = Path(self.options.data_root)
        self.encoder = MetadataEncoder(self.options.metadata.encoding)
        self._meta: NIHMetadata | None = None
        self._split: Split | None = None
        self._datasets: dict[str, ChestXrayDataset] = {}
        self.skipped_missing: dict[str, list[str]] = {}
        self._located: dict[str, Path] | None = None
        self._readable: dict[str, tuple[np.ndarray, ImageCache | None]] = {}
        self._encoder_fitted = False
        self._cache: ImageCache | None | bool = False  # False: not looked for yet
        # Used only for cached uint8 batches, on whatever device they land.
        augmentation = self.options.augmentation
        self.batch_normalize = BatchNormalize(images.channels, images.normalization)
        self.batch_augment = BatchAugment(augmentation.rotation_degrees, augmentation.brightness, augmentation.contrast,
                                          images.channels, images.normalization, horizontal_flip=augmentation.horizontal_flip)  # fmt: skip

    # ----- values the CLI links into the model (available right after construction) -----
    @property
    def label_names(self) -> list[str]:
        return list(label_names(self.options.labels.include_no_finding))

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    @property
    def metadata_dim(self) -> int:
        return self.encoder.width

    @property
    def train_label_counts(self) -> list[int]:
        meta, _ = self._tables()
        return meta.label_matrix(tuple(self.label_names))[self._fit_rows()].sum(axis=0).astype(int).tolist()

    @property
    def pos_weight(self) -> list[float] | None:
        weights = positive_class_weights(
            np.asarray(self.train_label_counts), len(self._fit_rows()), self.options.labels.class_weights, tuple(self.label_names)
        )
        return None if weights is None else weights.tolist()

    def _fit_rows(self) -> np.ndarray:
        """Train rows the class weights and the age normalisation come from: the images trained on.

        With ``images.on_bad: skip`` that leaves out train images that are missing (a partial
        download); otherwise every train row (a missing image is an error at setup), which needs
        no image at all, so the weights are known before any download.
        """
        _, split = self._tables()
        if self.options.images.on_bad == "skip" and (self.synthetic is not None or has_images(self.data_root)):
            return self._readable_rows("train")[0]
        return split.train

    def _fitted_encoder(self) -> MetadataEncoder:
        if not self._encoder_fitted:
            meta, _ = self._tables()
            self.encoder.fit(meta.frame.iloc[self._fit_rows()])
            self._encoder_fitted = True
        return self.encoder

    @property
    def training_seed(self) -> int:
        """The seed of augmentation, shuffling and oversampling (``training_seed``, else ``split.seed``)."""
        options = self.options
        return options.split.seed if options.training_seed is None else options.training_seed

    @property
    def normalization_stats(self) -> tuple[list[float], list[float]]:
        return normalization_stats(self.options.images.normalization, self.options.images.channels)

    # ----- metadata and split -----
    def _tables(self) -> tuple[NIHMetadata, Split]:
        """Read the metadata and build the split once (cheap: about 2 s for NIH)."""
        if self._meta is None:
            self._ensure_synthetic()
            given, options = self.options.split, self.options.metadata
            csv = Path(options.csv) if options.csv else find_metadata_csv(self.data_root)
            meta = read_metadata(csv, bad_values=options.bad_values)
            split = make_split(
                given.name,
                meta,
                Path(given.train_val_list) if given.train_val_list else find_image_list(self.data_root, TRAIN_VAL_LIST),
                Path(given.test_list) if given.test_list else find_image_list(self.data_root, TEST_LIST),
                val_fraction=given.val_fraction,
                seed=given.seed,
                fractions=tuple(given.fractions),
                stratify=given.stratify,
            )
            self._meta, self._split = meta, split
            counts = ", ".join(f"{p} {len(split.part(p)):,}" for p in PARTS)
            rank_zero_info(f"[data] {csv} | split {split.name}: {counts} images")
        return self._meta, self._split

    def _ensure_synthetic(self) -> None:
        spec = self.synthetic
        if spec is None or find_metadata_csv(self.data_root).parent == self.data_root:
            return
        from cxr_lightning.data.synthetic import generate_synthetic_dataset

        # Generate next to the target and rename, so an interrupted run or a second process
        # never sees half a dataset.
        self.data_root.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".synthetic-", dir=self.data_root.parent))
        rank_zero_info(f"[data] no dataset at {self.data_root}: generating {spec.num_images} synthetic images")
        generate_synthetic_dataset(staging, spec.num_images, spec.image_size, spec.seed)
        try:
            if self.data_root.exists() and not any(self.data_root.iterdir()):
                self.data_root.rmdir()
            os.rename(staging, self.data_root)
        except OSError:
            shutil.rmtree(staging, ignore_errors=True)
            if find_metadata_csv(self.data_root).parent != self.data_root:
                raise

    def check_images_present(self) -> None:
        """Fail early, before models load weights, when the data root holds no image at all."""
        if self.synthetic is None and not has_images(self.data_root):
            raise DataNotFoundError(f"no images under {self.data_root.resolve()}/images.\n" + DOWNLOAD_HINT.format(root=self.data_root))

    # ----- Lightning hooks -----
    def prepare_data(self) -> None:
        self._ensure_synthetic()

    def setup(self, stage: str | None = None) -> None:
        parts = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",)}.get(stage, PARTS)
        for part in parts:
            if part not in self._datasets:
                self._datasets[part] = self.dataset(part)

    def image_cache(self) -> ImageCache | None:
        """The preprocessed image cache for ``images.size``, if used (looked up once)."""
        images = self.options.images
        size = images.size
        if self._cache is False:
            self._cache = None if images.cache == "off" else open_cache(self.data_root, size, path=images.cache_dir)
            if self._cache is None and images.cache == "required":
                raise DataNotFoundError(
                    f"no complete {size}x{size} image cache under {images.cache_dir or default_cache_dir(self.data_root, size)};"
                    f" build it with: cxr-lightning data prepare --root {self.data_root} --size {size}"
                )
            if self._cache is not None:
                # PNGs replaced after the cache was built (size or mtime differ) would train on stale
                # pixels; deleted ones are fine (the cache is what is read).
                if self._located is None:  # the same listing serves the PNG path if it is needed
                    self._located = index_images(self.data_root)
                changed = self._cache.changed_sources(self.data_root, ignore_missing=True, located=self._located)
                if changed:
                    message = (f"{len(changed):,} image(s) changed since the cache {self._cache.path} was built (e.g. {changed[:3]}); "
                               f"update it with: cxr-lightning data prepare --root {self.data_root} --size {size}")  # fmt: skip
                    if images.cache == "required":
                        raise DataNotFoundError(message)
                    rank_zero_warn(f"[data] {message}. Decoding the PNGs meanwhile.")
                    self._cache = None
        return self._cache

    def _readable_rows(self, part: str) -> tuple[np.ndarray, ImageCache | None]:
        """The part's rows whose images will be read, and the cache they come from (None: the PNGs).

        Missing images raise (``images.on_bad: error``) or are left out, named and counted
        (``skip``); rows keep their labels and metadata, nothing shifts to another image. Once per part.
        """
        if part in self._readable:
            return self._readable[part]
        meta, split = self._tables()
        rows = split.part(part)
        names = meta.frame["image"].to_numpy()[rows]
        on_bad = self.options.images.on_bad
        cache = self.image_cache()
        if cache is not None:
            absent = cache.missing(names)
            if not absent or on_bad == "skip":
                if absent:
                    rank_zero_warn(f"[data] skipping {len(absent):,} {part} images the cache lacks or marks bad, e.g. {list(absent)[:5]}")
                    self.skipped_missing[part] = list(absent)
                    rows = rows[~np.isin(names, absent)]
                rank_zero_info(f"[data] {part}: {len(rows):,} images from the cache {cache.path}")
                self._readable[part] = (rows, cache)
                return self._readable[part]
            rank_zero_warn(f"[data] the image cache lacks {len(absent):,} {part} images (e.g. {list(absent)[:3]}): decoding the PNGs")
        if self._located is None:  # one directory listing for every part
            self._located = index_images(self.data_root)
        present = np.array([n in self._located for n in names], dtype=bool)
        missing = names[~present].tolist()
        if missing and (on_bad == "error" or not present.any()):
            raise DataNotFoundError(
                f"{len(missing):,} of {len(names):,} {part} images are missing under {self.data_root.resolve()}/images "
                f"(e.g. {missing[:3]}).\n" + DOWNLOAD_HINT.format(root=self.data_root)
            )
        if missing:
            rank_zero_warn(f"[data] skipping {len(missing):,} missing {part} images (images.on_bad=skip), e.g. {missing[:5]}")
            self.skipped_missing[part] = missing
            rows = rows[present]
        self._readable[part] = (rows, None)
        return self._readable[part]

    def dataset(self, part: str) -> ChestXrayDataset | CachedChestXrayDataset:
        """The dataset of one split part, with augmentation on ``train`` only."""
        meta, _ = self._tables()
        rows, cache = self._readable_rows(part)
        names = meta.frame["image"].to_numpy()[rows]
        images, jitter = self.options.images, self.options.augmentation
        augmentation = None
        if part == "train" and jitter.enabled:
            augmentation = Augmentation(jitter.rotation_degrees, jitter.brightness, jitter.contrast, jitter.horizontal_flip)
        labels = meta.label_matrix(tuple(self.label_names))[rows]
        metadata = self._fitted_encoder().encode(meta.frame.iloc[rows])
        if cache is not None:
            return CachedChestXrayDataset(cache, names, labels=labels, metadata=metadata, seed=self.training_seed, augmentation=augmentation)
        return ChestXrayDataset(
            paths=[self._located[n] for n in names],
            labels=labels,
            metadata=metadata,
            transform=ImageTransform(images.size, images.channels, images.normalization, augmentation),
            seed=self.training_seed,
            skip_bad_images=images.on_bad == "skip",
        )

    def _loader(self, part: str) -> DataLoader:
        if part not in self._datasets:
            self._datasets[part] = self.dataset(part)
        loading = self.options.loading
        dataset = self._datasets[part]
        options = dict(
            num_workers=loading.num_workers,
            pin_memory=loading.pin_memory and torch.cuda.is_available(),
            persistent_workers=loading.persistent_workers and loading.num_workers > 0,
            prefetch_factor=loading.prefetch_factor if loading.num_workers > 0 else None,
            collate_fn=cached_collate if isinstance(dataset, CachedChestXrayDataset) else collate_skipping_bad,
            # The loader's own generator: starting an epoch's iterator must not draw from the global
            # RNG (dropout's), or a run resumed from an end-of-epoch checkpoint would diverge by that
            # draw. Augmentation is seeded per sample and epoch, not by the worker seeds this feeds.
            generator=torch.Generator().manual_seed(self.training_seed),
        )
        if part != "train":
            return DataLoader(dataset, batch_size=loading.eval_batch_size or loading.batch_size, shuffle=False, **options)
        trainer = self.trainer
        world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        if loading.sampler == "rare_findings":
            weights = rare_finding_weights(dataset.labels.numpy().astype(np.uint8), power=loading.sampler_power, label_names=self.label_names)
            sampler = RareFindingSampler(weights, seed=self.training_seed, num_replicas=world, rank=rank, epoch_tensor=dataset.epoch)
        else:
            sampler = ResumableSampler(dataset, seed=self.training_seed, num_replicas=world, rank=rank, epoch_tensor=dataset.epoch)
        return ResumableDataLoader(dataset, batch_size=loading.batch_size, sampler=sampler, progress=self._batches_processed, **options)

    def _batches_processed(self) -> int:
        """Batches of the current epoch that training has processed (what a resume skips)."""
        trainer = self.trainer
        return 0 if trainer is None else int(trainer.fit_loop.epoch_loop.batch_progress.current.processed)

    def on_after_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        # Cached batches arrive as uint8: augment (train) or just normalise them on the device.
        if isinstance(batch, dict) and isinstance(batch.get("image"), torch.Tensor) and batch["image"].dtype == torch.uint8:
            params = batch.pop("augment", None)
            batch["image"] = self.batch_augment(batch["image"], params=params) if params is not None else self.batch_normalize(batch["image"])
        return batch

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test")

    def demographics(self, image_names: list[str]) -> pd.DataFrame:
        """``age`` (years), ``sex`` and ``view`` of the named images, from this DataModule's metadata (in order).

        What ``test`` writes beside the predictions, so subgroup tables group the data the run
        tested (its own metadata, a synthetic root's too). A name the metadata lacks gets NaN/empty.
        """
        meta, _ = self._tables()
        frame = meta.frame.set_index("image")[["age", "sex", "view"]]
        return frame.reindex([Path(str(name)).name for name in image_names]).reset_index(drop=True)

    def state_dict(self) -> dict:
        """What a checkpoint needs to encode new inputs like the training data."""
        mean, std = self.normalization_stats
        return {
            "kind": DATA_STATE_KIND,  # found by this mark, whatever the (sub)class's key in the checkpoint
            "label_names": self.label_names,
            "metadata_encoder": self._fitted_encoder().state(),
            "image_size": self.options.images.size,
            "image_channels": self.options.images.channels,
            "normalization": {"name": self.options.images.normalization, "mean": mean, "std": std},
        }
