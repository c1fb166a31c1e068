"""Loading a trained classifier from its checkpoint alone: no training data, no weight download.

A checkpoint written by ``cxr-lightning fit`` holds the model's class path and arguments
(``hyper_parameters``), its weights and tuned thresholds (``state_dict``) and what the data
pipeline needs to encode a new image the way training did (the DataModule's state: label names,
metadata encoder, image size, channels and normalisation). It loads with ``weights_only=True``.
"""

from __future__ import annotations

import importlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.trainer.states import TrainerFn

from cxr_lightning.data.encoding import MetadataEncoder
from cxr_lightning.data.transforms import ImageTransform
from cxr_lightning.models.base import MODEL_CLASS_KEY, CXRClassifier
from cxr_lightning.models.classifiers import BEIT_ARCHITECTURE_KEY

DATA_STATE_KEY = "ChestXrayDataModule"


@dataclass
class DataSpec:
    """How inputs were prepared in training: enough to prepare a new image identically."""

    label_names: list[str]
    metadata_encoder: MetadataEncoder
    image_size: int
    image_channels: int
    normalization: str

    def transform(self) -> ImageTransform:
        return ImageTransform(self.image_size, self.image_channels, self.normalization)


def _model_class(path: str) -> type[CXRClassifier]:
    module, _, name = path.rpartition(".")
    cls = getattr(importlib.import_module(module), name)
    if not issubclass(cls, CXRClassifier):
        raise TypeError(f"{path} is not a cxr_lightning classifier")
    return cls


def offline_arguments(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """Constructor arguments that rebuild the architecture without fetching pretrained weights."""
    args = {k: v for k, v in (checkpoint.get("hyper_parameters") or {}).items() if not k.startswith("_")}
    if "weights" in args:  # ResNet-50: the checkpoint's state dict replaces ImageNet weights
        args.update(weights=None, weights_path=None)
    if "pretrained" in args:  # BEiT: rebuild from the architecture stored at save time
        architecture = args.get("config") or checkpoint.get(BEIT_ARCHITECTURE_KEY)
        if architecture is None:
            raise ValueError("this BEiT checkpoint stores no architecture; load it with its pretrained weights available")
        args.update(pretrained=None, config=architecture)
    return args


def load_classifier(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[CXRClassifier, DataSpec]:
    """The model (eval mode, thresholds restored) and its :class:`DataSpec`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found")
    checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    class_path = checkpoint.get(MODEL_CLASS_KEY) or (checkpoint.get("hyper_parameters") or {}).get("_class_path")
    if class_path is None:
        raise ValueError(f"{path}: no model class recorded ({MODEL_CLASS_KEY}); was it written by cxr-lightning?")
    model = _model_class(class_path)(**offline_arguments(checkpoint))
    model.load_state_dict(checkpoint["state_dict"])
    model.eval()
    data = checkpoint.get(DATA_STATE_KEY)
    if data is None:
        raise ValueError(f"{path}: no data pipeline state ({DATA_STATE_KEY}); it cannot prepare new images by itself")
    spec = DataSpec(
        label_names=list(data["label_names"]),
        metadata_encoder=MetadataEncoder(**data["metadata_encoder"]),
        image_size=int(data["image_size"]),
        image_channels=int(data["image_channels"]),
        normalization=data["normalization"]["name"],
    )
    if spec.label_names != model.label_names:
        raise ValueError(f"{path}: model labels {model.label_names} differ from data labels {spec.label_names}")
    return model, spec


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes a checkpoint to a temporary file beside it, flushes it to disk, then renames it.

    ``os.replace`` is atomic on POSIX and Windows, so a process killed while saving leaves the
    previous checkpoint whole (and at worst a stray ``.tmp`` file). Remote paths (``s3://``...)
    go through Lightning's own writer.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(handle, "wb") as file:
                torch.save(checkpoint, file)
                file.flush()
                os.fsync(file.fileno())
            # mkstemp creates 0600; give the file the permissions a plain open() would (umask).
            os.chmod(temporary, 0o666 & ~_umask())
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise


class LatestCheckpoint(ModelCheckpoint):
    """The one writer of ``last.ckpt``: after every validation, at every epoch end, and on its clock.

    Lightning's ``ModelCheckpoint(save_last=True)`` refreshes ``last.ckpt`` only in a step where its
    own trigger saved, so a best-only or clock-only writer leaves ``last.ckpt`` at an older epoch
    (with both, one of them wrote ``last-v1.ckpt``), and epochs without validation
    (``check_val_every_n_epoch > 1``) are never saved. This subclass writes it after each
    validation (thresholds just tuned) and at each training-epoch end, once per step, so
    ``last.ckpt`` is always the newest state: what ``fit --ckpt_path last`` resumes and what
    ``predict``/``export`` of "the last model" mean. The clock (``train_time_interval``, 10 minutes
    in the CLI) bounds what a preemption mid-epoch loses.
    """

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        self._save_newest(trainer)

    def on_validation_end(self, trainer, pl_module) -> None:
        before = self._last_global_step_saved
        super().on_validation_end(trainer, pl_module)
        if self._last_global_step_saved == trainer.global_step != before:
            return  # saved just now, after this validation
        # Also when this step was saved before the validation (a step-based trigger on the epoch's
        # last batch): the validation has just retuned the thresholds, which last.ckpt must carry.
        self._save_newest(trainer, after_validation=True)

    def _save_newest(self, trainer, after_validation: bool = False) -> None:
        # Never in sanity checks, non-fit stages or fast_dev_run; a step already saved only when a
        # validation came after that save. All ranks take the same decision.
        already = self._last_global_step_saved == trainer.global_step
        if not self.save_last or trainer.sanity_checking or bool(trainer.fast_dev_run) or trainer.state.fn != TrainerFn.FITTING:
            return
        if already and not after_validation:
            return
        self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
