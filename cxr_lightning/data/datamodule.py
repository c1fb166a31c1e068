"""``ChestXrayDataModule``: NIH ChestX-ray14 (or a synthetic stand-in) as Lightning dataloaders."""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch.utils.data import DataLoader

from cxr_lightning.data.cache import CachedChestXrayDataset, ImageCache, cached_collate, default_cache_dir, open_cache
from cxr_lightning.data.dataset import DOWNLOAD_HINT, ChestXrayDataset, DataNotFoundError, has_images, index_images
from cxr_lightning.data.encoding import MetadataEncoder, MetadataEncoding, PosWeightScheme, positive_class_weights
from cxr_lightning.data.gpu_augment import BatchAugment, BatchNormalize
from cxr_lightning.data.labels import label_names
from cxr_lightning.data.loading import ResumableDataLoader, ResumableSampler, collate_skipping_bad
from cxr_lightning.data.metadata import (
    TEST_LIST,
    TRAIN_VAL_LIST,
    BadValuePolicy,
    NIHMetadata,
    find_image_list,
    find_metadata_csv,
    read_metadata,
)
from cxr_lightning.data.sampling import RareFindingSampler, rare_finding_weights
from cxr_lightning.data.splits import PAPER_SEED, PAPER_VAL_FRACTION, PARTS, PATIENT_FRACTIONS, Split, SplitName, make_split
from cxr_lightning.data.transforms import Augmentation, ImageTransform, normalization_stats

#: The smallest input every shipped backbone still reduces to a feature map (the baseline CNN pools
#: four times by 2), and twice the NIH originals' 1024-pixel side: beyond that nothing is gained and
#: a batch no longer fits in memory (100000 px would ask for 40 GB per image).
IMAGE_SIZE_RANGE = (16, 2048)
#: A batch larger than this does not fit in any accelerator's memory at the smallest image size.
BATCH_SIZE_RANGE = (1, 65536)
NUM_WORKERS_RANGE = (0, 1024)


class ConfigValueError(ValueError):
    """A DataModule option outside its allowed range; the message names the option, the value and the range."""


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


def check_options(options: dict) -> None:
    """Range checks of :class:`ChestXrayDataModule`'s numeric options, at construction, before any data is read."""
    _check_int("image_size", options["image_size"], IMAGE_SIZE_RANGE)
    _check_int("batch_size", options["batch_size"], BATCH_SIZE_RANGE)
    if options["eval_batch_size"] is not None:
        _check_int("eval_batch_size", options["eval_batch_size"], BATCH_SIZE_RANGE)
    _check_int("num_workers", options["num_workers"], NUM_WORKERS_RANGE)
    if options["prefetch_factor"] is not None:
        _check_int("prefetch_factor", options["prefetch_factor"], (1, 1024))
    _check_fraction("val_fraction", options["val_fraction"])
    fractions = options["fractions"]
    if len(fractions) != 3:
        raise ConfigValueError(f"data.fractions must be three numbers (train, val, test), got {fractions!r}")
    for fraction in fractions:
        _check_fraction("fractions", fraction, closed=True)
    if not math.isclose(sum(fractions), 1.0, abs_tol=1e-6):
        raise ConfigValueError(f"data.fractions must sum to 1, got {list(fractions)} (sum {sum(fractions):g})")
    degrees = options["rotation_degrees"]
    if not (isinstance(degrees, (int, float)) and 0 <= degrees <= 180):
        raise ConfigValueError(f"data.rotation_degrees must be a number in [0, 180], got {degrees!r}")
    for name in ("brightness", "contrast"):  # the factor is drawn from [1 - b, 1 + b]: b >= 1 could black an image out
        value = options[name]
        if not (isinstance(value, (int, float)) and 0 <= value < 1):
            raise ConfigValueError(f"data.{name} must be a number in [0, 1), got {value!r}")


# Marks the DataModule's state in a checkpoint. Lightning stores it under the DataModule's class
# name, which a subclass changes: readers look for this mark instead.
DATA_STATE_KIND = "cxr_lightning data spec 1"


@dataclass
class SyntheticData:
    """Generate a synthetic NIH-layout dataset in ``data_root`` when it holds no metadata CSV."""

    num_images: int = 2000
    image_size: int = 64
    seed: int = 0


class ChestXrayDataModule(L.LightningDataModule):
    """NIH ChestX-ray14 with patient-grouped splits, augmentation and metadata encoding.

    Batches are dicts: ``image`` ``(B, C, S, S)`` float32 normalised, ``metadata`` ``(B, M)``,
    ``labels`` ``(B, L)`` float32 0/1 in the order of :data:`cxr_lightning.LABELS` (or the 14
    findings), ``name`` (list of image names) and ``index`` (positions in the part's dataset).

    Citation: Wang et al., "ChestX-ray8: Hospital-scale chest X-ray database and benchmarks",
    CVPR 2017. Images: https://nihcc.app.box.com/v/ChestXray-NIHCC (``cxr-lightning data
    download``). The metadata CSV and official lists ship with the package and are used unless
    ``data_root`` (or the explicit paths) holds other copies.

    Args:
        data_root: folder in the NIH layout (``images/*.png``, optional CSV and list files).
        split: ``paper`` (73,633 / 12,891 / 25,596), ``official`` (official test list and a
            patient-grouped validation part of ``val_fraction``) or ``patient`` (random
            patient-grouped parts of ``fractions``).
        val_fraction: patient fraction of train_val used for validation (``official``).
        seed: seed of the ``official`` and ``patient`` splits (which patients validate and test).
        training_seed: seed of the augmentation, the shuffling and the oversampling; unset, the
            split's ``seed`` (as before this option existed). Vary it, not ``seed``, to train again
            on the same patients with other random draws.
        fractions: train/val/test patient fractions of the ``patient`` split.
        stratify: ``patient`` split only: cut each rarest-finding stratum by the fractions.
        metadata_csv: metadata CSV; default the one in ``data_root`` or the packaged 2020 file.
        train_val_list: official train_val list; default ``data_root``'s or the packaged one.
        test_list: official test list; default ``data_root``'s or the packaged one.
        bad_values: ``missing`` (count and impute bad ages/sexes/views) or ``error``.
        include_no_finding: 15 labels (the paper's) or the 14 findings only.
        image_size: side of the square model input in pixels.
        image_channels: 3 (grey replicated, for ImageNet backbones) or 1.
        normalization: ``imagenet``, ``beit`` (0.5/0.5), ``imagenet_grey`` or ``none``.
        augment: augment the training split (rotation, brightness/contrast jitter).
        rotation_degrees: maximum absolute rotation angle.
        brightness: brightness jitter (factor drawn from [1 - b, 1 + b]).
        contrast: contrast jitter (factor drawn from [1 - c, 1 + c]).
        metadata_encoding: ``onehot`` (paper text, 5 features), ``code`` (ResNet/BEiT code, 3)
            or ``cnn`` (CNN code, 3).
        class_weights: positive-class loss weights from the train split: ``none``, ``linear``,
            ``log`` (ResNet code) or ``beit_log`` (BEiT code).
        batch_size: training batch size (per device).
        eval_batch_size: validation/test batch size; default ``batch_size``.
        num_workers: DataLoader worker processes.
        pin_memory: pin host memory for faster transfer to the GPU.
        persistent_workers: keep workers alive between epochs.
        prefetch_factor: batches each worker loads ahead (PyTorch's default 2 when null).
        on_bad_image: ``error`` stops at a missing or undecodable image, naming it; ``skip``
            leaves it out, counts it and reports the names (missing files at set-up, unreadable
            ones at the end of each epoch).
        sampler: training order: ``shuffle`` (each image once per epoch) or ``rare_findings``
            (weighted sampling with replacement, an image's weight growing with the rarity of its
            rarest finding; see :func:`cxr_lightning.data.sampling.rare_finding_weights`).
        sampler_power: ``rare_findings`` only: weight = (N / positives of the rarest finding) ** power.
        image_cache: ``auto`` reads the images from the preprocessed cache of ``image_size``
            (``cxr-lightning data prepare``) when one holds them, else decodes the PNGs; ``off``
            always decodes; ``required`` stops when there is no such cache. With the cache the
            CPU only moves uint8 bytes: augmentation and normalisation run on the training
            device after transfer (``on_after_batch_transfer``), with the same distributions.
        cache_dir: the cache folder, default ``data_root/cache/<image_size>``.
        synthetic: generate a synthetic dataset into ``data_root`` if it has no metadata CSV.
    """

    def __init__(
        self,
        data_root: str | Path = "data/nih",
        split: SplitName = "paper",
        val_fraction: float = PAPER_VAL_FRACTION,
        seed: int = PAPER_SEED,
        training_seed: int | None = None,
        fractions: tuple[float, float, float] = PATIENT_FRACTIONS,
        stratify: bool = False,
        metadata_csv: str | Path | None = None,
        train_val_list: str | Path | None = None,
        test_list: str | Path | None = None,
        bad_values: BadValuePolicy = "missing",
        include_no_finding: bool = True,
        image_size: int = 224,
        image_channels: Literal[1, 3] = 3,
        normalization: str = "imagenet",
        augment: bool = True,
        rotation_degrees: float = 10.0,
        brightness: float = 0.1,
        contrast: float = 0.1,
        metadata_encoding: MetadataEncoding = "onehot",
        class_weights: PosWeightScheme = "none",
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 4,
        pin_memory: bool = True,
        persistent_workers: bool = False,
        prefetch_factor: int | None = None,
        on_bad_image: Literal["error", "skip"] = "error",
        sampler: Literal["shuffle", "rare_findings"] = "shuffle",
        sampler_power: float = 0.5,
        image_cache: Literal["auto", "off", "required"] = "auto",
        cache_dir: str | Path | None = None,
        synthetic: SyntheticData | None = None,
    ):
        check_options(locals())  # the arguments above, by name: fail before anything is read or built
        super().__init__()
        # jsonargparse may hand the dataclass over as a dict; checkpoints keep plain types only
        # (paths as str, the dataclass as a dict) so they load with torch.load(weights_only=True).
        self.synthetic = SyntheticData(**synthetic) if isinstance(synthetic, dict) else synthetic
        synthetic = asdict(self.synthetic) if self.synthetic is not None else None
        data_root, metadata_csv, train_val_list, test_list, cache_dir = (
            None if p is None else str(p) for p in (data_root, metadata_csv, train_val_list, test_list, cache_dir)
        )
        self.save_hyperparameters()
        normalization_stats(normalization, image_channels)  # fail early on a bad name
        self.data_root = Path(data_root)
        self.encoder = MetadataEncoder(metadata_encoding)
        self._meta: NIHMetadata | None = None
        self._split: Split | None = None
        self._datasets: dict[str, ChestXrayDataset] = {}
        self.skipped_missing: dict[str, list[str]] = {}
        self._located: dict[str, Path] | None = None
        self._readable: dict[str, tuple[np.ndarray, ImageCache | None]] = {}
        self._encoder_fitted = False
        self._cache: ImageCache | None | bool = False  # False: not looked for yet
        # Used only for cached uint8 batches, on whatever device they land.
        self.batch_normalize = BatchNormalize(image_channels, normalization)
        self.batch_augment = BatchAugment(rotation_degrees, brightness, contrast, image_channels, normalization)

    # ----- values the CLI links into the model (available right after construction) -----
    @property
    def label_names(self) -> list[str]:
        return list(label_names(self.hparams.include_no_finding))

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
            np.asarray(self.train_label_counts), len(self._fit_rows()), self.hparams.class_weights, tuple(self.label_names)
        )
        return None if weights is None else weights.tolist()

    def _fit_rows(self) -> np.ndarray:
        """Train rows the class weights and the age normalisation come from: the images trained on.

        With ``on_bad_image: skip`` that leaves out train images that are missing (a partial
        download); otherwise every train row (a missing image is an error at setup), which needs
        no image at all, so the weights are known before any download.
        """
        _, split = self._tables()
        if self.hparams.on_bad_image == "skip" and (self.synthetic is not None or has_images(self.data_root)):
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
        """The seed of augmentation, shuffling and oversampling (``training_seed``, else the split's ``seed``)."""
        h = self.hparams
        return h.seed if h.training_seed is None else h.training_seed

    @property
    def normalization_stats(self) -> tuple[list[float], list[float]]:
        return normalization_stats(self.hparams.normalization, self.hparams.image_channels)

    # ----- metadata and split -----
    def _tables(self) -> tuple[NIHMetadata, Split]:
        """Read the metadata and build the split once (cheap: about 2 s for NIH)."""
        if self._meta is None:
            self._ensure_synthetic()
            h = self.hparams
            csv = Path(h.metadata_csv) if h.metadata_csv else find_metadata_csv(self.data_root)
            meta = read_metadata(csv, bad_values=h.bad_values)
            split = make_split(
                h.split,
                meta,
                Path(h.train_val_list) if h.train_val_list else find_image_list(self.data_root, TRAIN_VAL_LIST),
                Path(h.test_list) if h.test_list else find_image_list(self.data_root, TEST_LIST),
                val_fraction=h.val_fraction,
                seed=h.seed,
                fractions=tuple(h.fractions),
                stratify=h.stratify,
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
        """The preprocessed image cache for ``image_size``, if used (looked up once)."""
        h = self.hparams
        if self._cache is False:
            self._cache = None if h.image_cache == "off" else open_cache(self.data_root, h.image_size, path=h.cache_dir)
            if self._cache is None and h.image_cache == "required":
                raise DataNotFoundError(
                    f"no complete {h.image_size}x{h.image_size} image cache under {h.cache_dir or default_cache_dir(self.data_root, h.image_size)};"
                    f" build it with: cxr-lightning data prepare --root {self.data_root} --size {h.image_size}"
                )
            if self._cache is not None:
                # PNGs replaced after the cache was built (size or mtime differ) would train on stale
                # pixels; deleted ones are fine (the cache is what is read).
                if self._located is None:  # the same listing serves the PNG path if it is needed
                    self._located = index_images(self.data_root)
                changed = self._cache.changed_sources(self.data_root, ignore_missing=True, located=self._located)
                if changed:
                    message = (f"{len(changed):,} image(s) changed since the cache {self._cache.path} was built (e.g. {changed[:3]}); "
                               f"update it with: cxr-lightning data prepare --root {self.data_root} --size {h.image_size}")  # fmt: skip
                    if h.image_cache == "required":
                        raise DataNotFoundError(message)
                    rank_zero_warn(f"[data] {message}. Decoding the PNGs meanwhile.")
                    self._cache = None
        return self._cache

    def _readable_rows(self, part: str) -> tuple[np.ndarray, ImageCache | None]:
        """The part's rows whose images will be read, and the cache they come from (None: the PNGs).

        Missing images raise (``on_bad_image: error``) or are left out, named and counted
        (``skip``); rows keep their labels and metadata, nothing shifts to another image. Once per part.
        """
        if part in self._readable:
            return self._readable[part]
        meta, split = self._tables()
        rows = split.part(part)
        names = meta.frame["image"].to_numpy()[rows]
        h = self.hparams
        cache = self.image_cache()
        if cache is not None:
            absent = cache.missing(names)
            if not absent or h.on_bad_image == "skip":
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
        if missing and (h.on_bad_image == "error" or not present.any()):
            raise DataNotFoundError(
                f"{len(missing):,} of {len(names):,} {part} images are missing under {self.data_root.resolve()}/images "
                f"(e.g. {missing[:3]}).\n" + DOWNLOAD_HINT.format(root=self.data_root)
            )
        if missing:
            rank_zero_warn(f"[data] skipping {len(missing):,} missing {part} images (on_bad_image=skip), e.g. {missing[:5]}")
            self.skipped_missing[part] = missing
            rows = rows[present]
        self._readable[part] = (rows, None)
        return self._readable[part]

    def dataset(self, part: str) -> ChestXrayDataset | CachedChestXrayDataset:
        """The dataset of one split part, with augmentation on ``train`` only."""
        meta, _ = self._tables()
        rows, cache = self._readable_rows(part)
        names = meta.frame["image"].to_numpy()[rows]
        h = self.hparams
        augmentation = Augmentation(h.rotation_degrees, h.brightness, h.contrast) if (part == "train" and h.augment) else None
        labels = meta.label_matrix(tuple(self.label_names))[rows]
        metadata = self._fitted_encoder().encode(meta.frame.iloc[rows])
        if cache is not None:
            return CachedChestXrayDataset(cache, names, labels=labels, metadata=metadata, seed=self.training_seed, augmentation=augmentation)
        return ChestXrayDataset(
            paths=[self._located[n] for n in names],
            labels=labels,
            metadata=metadata,
            transform=ImageTransform(h.image_size, h.image_channels, h.normalization, augmentation),
            seed=self.training_seed,
            skip_bad_images=h.on_bad_image == "skip",
        )

    def _loader(self, part: str) -> DataLoader:
        if part not in self._datasets:
            self._datasets[part] = self.dataset(part)
        h = self.hparams
        dataset = self._datasets[part]
        options = dict(
            num_workers=h.num_workers,
            pin_memory=h.pin_memory and torch.cuda.is_available(),
            persistent_workers=h.persistent_workers and h.num_workers > 0,
            prefetch_factor=h.prefetch_factor if h.num_workers > 0 else None,
            collate_fn=cached_collate if isinstance(dataset, CachedChestXrayDataset) else collate_skipping_bad,
            # The loader's own generator: starting an epoch's iterator must not draw from the global
            # RNG (dropout's), or a run resumed from an end-of-epoch checkpoint would diverge by that
            # draw. Augmentation is seeded per sample and epoch, not by the worker seeds this feeds.
            generator=torch.Generator().manual_seed(self.training_seed),
        )
        if part != "train":
            return DataLoader(dataset, batch_size=h.eval_batch_size or h.batch_size, shuffle=False, **options)
        trainer = self.trainer
        world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        if h.sampler == "rare_findings":
            weights = rare_finding_weights(dataset.labels.numpy().astype(np.uint8), power=h.sampler_power, label_names=self.label_names)
            sampler = RareFindingSampler(weights, seed=self.training_seed, num_replicas=world, rank=rank, epoch_tensor=dataset.epoch)
        else:
            sampler = ResumableSampler(dataset, seed=self.training_seed, num_replicas=world, rank=rank, epoch_tensor=dataset.epoch)
        return ResumableDataLoader(dataset, batch_size=h.batch_size, sampler=sampler, progress=self._batches_processed, **options)

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

    def state_dict(self) -> dict:
        """What a checkpoint needs to encode new inputs like the training data."""
        mean, std = self.normalization_stats
        return {
            "kind": DATA_STATE_KIND,  # found by this mark, whatever the (sub)class's key in the checkpoint
            "label_names": self.label_names,
            "metadata_encoder": self._fitted_encoder().state(),
            "image_size": self.hparams.image_size,
            "image_channels": self.hparams.image_channels,
            "normalization": {"name": self.hparams.normalization, "mean": mean, "std": std},
        }
