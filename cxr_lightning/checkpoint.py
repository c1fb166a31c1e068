"""Loading a trained classifier from its checkpoint alone: no training data, no weight download.

A checkpoint written by ``cxr-lightning fit`` holds the model's class path and arguments
(``hyper_parameters``), its weights and tuned thresholds (``state_dict``) and what the data
pipeline needs to encode a new image the way training did (the DataModule's state: label names,
metadata encoder, image size, channels and normalisation).

A checkpoint is data, never code: it loads with ``weights_only=True`` only, the model class it
names must be this package's (checked before any import), and the files its settings name
(``weights_path``, a ``pretrained`` directory) are never opened.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import os
import re
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from cxr_lightning.data.datamodule import DATA_STATE_KIND
from cxr_lightning.data.encoding import MetadataEncoder
from cxr_lightning.data.transforms import ImageTransform
from cxr_lightning.models.base import CLASS_PATH_KEY, LEGACY_MODEL_CLASS_KEY, CXRClassifier
from cxr_lightning.models.classifiers import BEIT_ARCHITECTURE_KEY
from cxr_lightning.models.weights import safe_torch_load

# Where checkpoints written before the DataModule marked its state keep it (its class name).
LEGACY_DATA_STATE_KEY = "ChestXrayDataModule"


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


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: empty, truncated, not written by cxr-lightning, or untrusted."""


# Model classes a checkpoint may name without the user vouching for them: this package's own.
TRUSTED_PACKAGE = "cxr_lightning"
_CLASS_PATH = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)+$")
# Constructor arguments that name files to read or weights to fetch. A checkpoint's own values are
# never used for them (its state dict holds the weights): it could point at any file on the machine.
FILE_ARGUMENTS = ("weights", "weights_path", "pretrained")


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The checkpoint's contents, loaded with ``weights_only=True`` (never code), or a one-line error."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found" + (" (it is a directory)" if path.is_dir() else ""))
    checkpoint = safe_torch_load(path, what="checkpoint", error=CheckpointError, map_location=map_location)
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(checkpoint).__name__}, not a checkpoint dictionary")
    return checkpoint


def is_trusted_class_path(class_path: str, trusted: Iterable[str] = ()) -> bool:
    """Whether a class path may be imported: in this package, or named (class or module) in ``trusted``."""
    module = class_path.rpartition(".")[0]
    allowed = [TRUSTED_PACKAGE, *trusted]
    return any(class_path == entry or module == entry or module.startswith(entry + ".") for entry in allowed)


def untrusted_class_message(source: Any, class_path: Any, how_to_trust: str) -> str:
    return (f"{source}: names the model class {class_path!r}, outside {TRUSTED_PACKAGE}; it was not imported "
            f"(importing runs its code). If you trust it, pass {how_to_trust}")


def model_class(class_path: Any, source: str, trusted: Iterable[str] = ()) -> type[CXRClassifier]:
    """The classifier class a checkpoint names, checked *before* anything is imported.

    Importing a module runs its code, so a class path outside this package is refused unless the
    user lists it (or its module) in ``trusted`` (``--trust_model_class``).
    """
    trusted = list(trusted)
    if not isinstance(class_path, str) or not _CLASS_PATH.match(class_path):
        raise CheckpointError(f"{source}: the model class {class_path!r} is not a Python class path")
    if not is_trusted_class_path(class_path, trusted):
        raise CheckpointError(untrusted_class_message(source, class_path, f"--trust_model_class {class_path}"))
    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as err:
        raise CheckpointError(f"{source}: its model class {class_path} cannot be imported ({err})") from err
    if not (isinstance(cls, type) and issubclass(cls, CXRClassifier)):
        raise CheckpointError(f"{source}: {class_path} is not a cxr_lightning classifier")
    return cls


def recorded_class_path(checkpoint: dict[str, Any]) -> Any:
    """The model class path a checkpoint records, unchecked, or None.

    ``hyper_parameters["_class_path"]``, where LightningCLI and the model's own ``on_save_checkpoint``
    record it; checkpoints written before the model did keep it under a top-level legacy key.
    """
    hyper_parameters = checkpoint.get("hyper_parameters")
    recorded = hyper_parameters.get(CLASS_PATH_KEY) if isinstance(hyper_parameters, dict) else None
    return recorded or checkpoint.get(LEGACY_MODEL_CLASS_KEY)


def add_trust_argument(parser: argparse.ArgumentParser) -> None:
    """``--trust_model_class``: the one way to let a checkpoint name a model class outside this package."""
    parser.add_argument("--trust_model_class", dest="trusted_classes", action="append", default=[], metavar="CLASS",
                        help="a model class path (or its module) outside cxr_lightning that the checkpoint may name; "
                        "importing it runs its code, so only for code you trust (repeatable)")  # fmt: skip


def offline_arguments(checkpoint: dict[str, Any], cls: type[CXRClassifier]) -> dict[str, Any]:
    """Constructor arguments of ``cls`` that rebuild the architecture without reading or fetching weights.

    Every argument that names a file or pretrained weights is cleared, also when the checkpoint leaves
    it out (its default would fetch them): the state dict replaces those weights, and a checkpoint's
    settings must never make us open a file it chose.
    """
    args = {k: v for k, v in (checkpoint.get("hyper_parameters") or {}).items() if not str(k).startswith("_")}
    accepted = inspect.signature(cls.__init__).parameters
    for key in FILE_ARGUMENTS:
        if key in args or key in accepted:
            args[key] = None
    if "pretrained" in args:  # BEiT: rebuild from the architecture stored at save time
        architecture = args.get("config") or checkpoint.get(BEIT_ARCHITECTURE_KEY)
        if not isinstance(architecture, dict):
            raise CheckpointError("this BEiT checkpoint stores no architecture; load it with its pretrained weights available")
        args["config"] = architecture
    return args


def data_state(checkpoint: dict[str, Any]) -> dict[str, Any] | None:
    """The DataModule's state saved in ``checkpoint`` (by its mark, or the legacy class-name key), or None."""
    marked = [v for v in checkpoint.values() if isinstance(v, dict) and v.get("kind") == DATA_STATE_KIND]
    if marked:
        return marked[0]
    legacy = checkpoint.get(LEGACY_DATA_STATE_KEY)
    return legacy if isinstance(legacy, dict) else None


def load_classifier(
    path: str | Path, map_location: str | torch.device = "cpu", trusted_classes: Iterable[str] = ()
) -> tuple[CXRClassifier, DataSpec]:
    """The model (eval mode, thresholds restored) and its :class:`DataSpec`.

    Safe on a file from anywhere: loaded with ``weights_only=True``, its model class must be this
    package's (or in ``trusted_classes``), and no file it names is opened.

    Raises:
        CheckpointError: the file is missing, empty, truncated, holds pickled objects, names an
            untrusted class, or lacks what rebuilding the model needs. The message names the file.
    """
    path = Path(path)
    checkpoint = read_checkpoint(path, map_location)
    hyper_parameters = checkpoint.get("hyper_parameters") or {}
    class_path = recorded_class_path(checkpoint)
    if class_path is None:
        raise CheckpointError(f"{path}: no model class recorded (hyper_parameters[{CLASS_PATH_KEY!r}]); was it written by cxr-lightning fit?")
    cls = model_class(class_path, str(path), trusted_classes)
    if not isinstance(hyper_parameters, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise CheckpointError(f"{path}: no hyper_parameters or state_dict; was it written by cxr-lightning fit?")
    try:
        model = cls(**offline_arguments(checkpoint, cls))
        model.load_state_dict(checkpoint["state_dict"])
    except CheckpointError as err:
        raise CheckpointError(f"{path}: {err}") from err
    except (TypeError, ValueError, RuntimeError, KeyError) as err:
        raise CheckpointError(f"{path}: its settings and weights do not rebuild {class_path} ({type(err).__name__}: "
                              f"{str(err).strip().splitlines()[0] if str(err).strip() else ''})") from err
    model.eval()
    data = data_state(checkpoint)
    if data is None:
        raise CheckpointError(f"{path}: no data pipeline state (a ChestXrayDataModule's); it cannot prepare new images by itself")
    try:
        spec = DataSpec(
            label_names=list(data["label_names"]),
            metadata_encoder=MetadataEncoder(**data["metadata_encoder"]),
            image_size=int(data["image_size"]),
            image_channels=int(data["image_channels"]),
            normalization=data["normalization"]["name"],
        )
    except (TypeError, ValueError, KeyError) as err:
        raise CheckpointError(f"{path}: its data pipeline state is incomplete or malformed ({type(err).__name__}: {err})") from err
    if spec.label_names != model.label_names:
        raise CheckpointError(f"{path}: model labels {model.label_names} differ from data labels {spec.label_names}")
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
