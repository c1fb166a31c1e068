"""LightningCLI for fit/validate/test/predict, with the links from the data to the model."""

from __future__ import annotations

import shutil
import sys
import warnings
from pathlib import Path

import yaml
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import WandbLogger

from cxr_lightning.checkpoint import (
    FILE_ARGUMENTS,
    CheckpointError,
    is_trusted_class_path,
    read_checkpoint,
    recorded_class_path,
    untrusted_class_message,
)
from cxr_lightning.cli.input_facts import fill_input_facts
from cxr_lightning.data.datamodule import ChestXrayDataModule
from cxr_lightning.models.base import CLASS_PATH_KEY, CXRClassifier
from cxr_lightning.training.callbacks import PredictionCSVWriter, TestOutputWriter, ThresholdTuner
from cxr_lightning.training.checkpointing import LatestCheckpoint
from cxr_lightning.training.run_lock import RunFolderError, RunFolderLock, is_global_rank_zero

# What a run folder needs beyond its checkpoints: logs, predictions, W&B's offline files.
RUN_FOLDER_MARGIN_BYTES = 200 * 2**20


class SaveConfigToLoggers(SaveConfigCallback):
    """Writes ``config.yaml`` to the run directory and the full resolved config to W&B."""

    def save_config(self, trainer, pl_module, stage) -> None:
        wandb_loggers = [logger for logger in trainer.loggers if isinstance(logger, WandbLogger)]
        if wandb_loggers and trainer.is_global_zero:
            config = yaml.safe_load(self.parser.dump(self.config, skip_none=False))
            for logger in wandb_loggers:
                logger.experiment.config.update(config, allow_val_change=True)


class CXRLightningCLI(LightningCLI):
    """``cxr-lightning fit --config configs/resnet_log.yaml``.

    Always present (configurable under their own keys): ``threshold_tuner``, ``test_outputs``,
    ``predict_outputs``, ``checkpoint`` and ``resume_checkpoint`` (``last.ckpt`` every 10 minutes
    of training) (best by ``val/loss`` plus ``last.ckpt``, in
    ``trainer.default_root_dir/checkpoints``). ``test_after_fit: true`` tests the best
    checkpoint when ``fit`` ends, in the same process.
    """

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("subclass_mode_model", True)
        # Checkpoints are written to a temporary file and renamed: a kill never corrupts the last one.
        kwargs.setdefault("trainer_defaults", {"plugins": {"class_path": "cxr_lightning.checkpoint.AtomicCheckpointIO"}})
        kwargs.setdefault("save_config_callback", SaveConfigToLoggers)
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        # No prefix matching: argparse would take a mistyped --trainer.max_epoch for max_epochs. The main
        # parser and each subcommand's are separate parsers, so each is told.
        no_abbreviations = {"allow_abbrev": False}
        kwargs.setdefault("parser_kwargs", {**no_abbreviations, **{name: dict(no_abbreviations) for name in self.subcommands()}})
        self._run_lock: RunFolderLock | None = None
        self._held_ckpt_path: str | None = None
        try:
            super().__init__(CXRClassifier, ChestXrayDataModule, *args, **kwargs)
        finally:
            # Released on every way out (a crash too); the OS releases it if the process dies.
            if self._run_lock is not None:
                self._run_lock.release()

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(ThresholdTuner, "threshold_tuner")
        parser.add_lightning_class_args(TestOutputWriter, "test_outputs")
        parser.add_lightning_class_args(PredictionCSVWriter, "predict_outputs")
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        # The best checkpoint is saved right after each validation, before last.ckpt is written in the
        # same hook: last.ckpt then records the best there is (a resume keeps the right best, and no stale one).
        # One name, best.ckpt beside last.ckpt, rewritten in place by a rerun (no best-v1.ckpt beside a stale
        # best-epoch=NN.ckpt); the epoch it holds is in the file and in metrics.json.
        parser.set_defaults({"checkpoint.monitor": "val/loss", "checkpoint.mode": "min", "checkpoint.save_last": False,
                             "checkpoint.filename": "best", "checkpoint.enable_version_counter": False,
                             "checkpoint.save_on_train_epoch_end": False})  # fmt: skip
        parser.link_arguments("trainer.default_root_dir", "checkpoint.dirpath", compute_fn=_checkpoint_dir)
        # The one writer of last.ckpt: after every epoch and every 10 minutes of training, so a
        # preempted run loses at most that much; rewritten in place on a rerun (no last-v1.ckpt).
        parser.add_lightning_class_args(LatestCheckpoint, "resume_checkpoint")
        parser.set_defaults({"resume_checkpoint.train_time_interval": "0:10:00"})
        parser.link_arguments("trainer.default_root_dir", "resume_checkpoint.dirpath", compute_fn=_checkpoint_dir)
        parser.add_argument("--test_after_fit", type=bool, default=False, help="run test on the best checkpoint after fit")
        parser.add_argument("--trust_model_class", type=list[str], default=[],
                            help="model class paths (or modules) outside cxr_lightning that a --ckpt_path checkpoint may name")  # fmt: skip
        for source, target in (
            ("data.num_labels", "model.init_args.num_labels"),
            ("data.label_names", "model.init_args.label_names"),
            ("data.metadata_dim", "model.init_args.metadata_dim"),
            ("data.pos_weight", "model.init_args.pos_weight"),
        ):
            parser.link_arguments(source, target, apply_on="instantiate")

    def parse_arguments(self, parser: LightningArgumentParser, args) -> None:
        super().parse_arguments(parser, args)
        self._merge_checkpoint_settings()
        # LightningCLI then merges a --ckpt_path checkpoint's settings itself, importing any class the
        # checkpoint names: the path is held back from that step and given back before instantiation.
        subcommand = self.config.get("subcommand")
        if subcommand and self.config[subcommand].get("ckpt_path") is not None:
            self._held_ckpt_path = self.config[subcommand]["ckpt_path"]
            self.config[subcommand]["ckpt_path"] = None

    def _merge_checkpoint_settings(self) -> None:
        """Take the model's settings from ``--ckpt_path``, as LightningCLI does, but safely.

        The checkpoint is read with ``weights_only=True`` (one-line errors for an empty, truncated or
        pickled file); a model class it names outside this package is refused before any import
        (unless the config names that class or ``--trust_model_class`` lists it); settings that name
        files (``weights_path``, ``pretrained``) stay the user's, never the checkpoint's.
        """
        subcommand = self.config.get("subcommand")
        if not subcommand:
            return
        config = self.config[subcommand]
        if config.get("weights_only") is False:
            raise CheckpointError("--weights_only false is refused: checkpoints load with weights_only=True only (never code)")
        config["weights_only"] = True  # Trainer.fit/test/... load the checkpoint with weights_only=True
        path = _resolve_ckpt_path(config.get("ckpt_path"), config.get("trainer", {}).get("default_root_dir"))
        if path is None:
            return
        checkpoint = read_checkpoint(path)
        hparams = {k: v for k, v in (checkpoint.get("hyper_parameters") or {}).items() if k not in ("_instantiator", *FILE_ARGUMENTS)}
        if not hparams:
            return
        configured = (config.get("model") or {}).get("class_path")
        hparams.pop(CLASS_PATH_KEY, None)
        # A checkpoint that records no class path (written outside the CLI by an older version): its
        # settings are the configured class's.
        class_path = recorded_class_path(checkpoint) or configured
        if class_path is not None:
            trusted = [*config.get("trust_model_class", []), *([configured] if configured else [])]
            if not isinstance(class_path, str) or not is_trusted_class_path(class_path, trusted):
                raise CheckpointError(untrusted_class_message(path, class_path, f"--model {class_path} or --trust_model_class '[{class_path}]'"))
            hparams = {"class_path": class_path, "dict_kwargs": hparams}
        try:
            self.config = self.parser.parse_object({subcommand: {"model": hparams}}, self.config)
        except SystemExit:
            sys.stderr.write(f"Parsing the model settings stored in {path} failed\n")
            raise

    def before_instantiate_classes(self) -> None:
        if self._held_ckpt_path is not None:
            self.config[self.subcommand]["ckpt_path"] = self._held_ckpt_path
        self._lock_run_folder()
        # Keep W&B's local files in the run directory unless a config says otherwise.
        config = self.config.get(self.subcommand, self.config) if self.subcommand else self.config
        trainer = config.get("trainer", {})
        root = trainer.get("default_root_dir") or "."
        logger = trainer.get("logger")
        for entry in logger if isinstance(logger, list) else [logger]:
            if entry is not None and not isinstance(entry, bool) and "WandbLogger" in str(entry.get("class_path", "")):
                init = entry.get("init_args")
                if init is not None and init.get("save_dir") in (None, "", "."):
                    init["save_dir"] = root

    def instantiate_classes(self) -> None:
        config = self.config.get(self.subcommand, self.config) if self.subcommand else self.config
        fill_input_facts(config)  # data.images left null: the backbone's size, channels, normalisation
        # The data is checked before the model loads its (possibly large) pretrained weights.
        data_config = config.get("data")
        if data_config is not None:
            ChestXrayDataModule(**_without_config_paths(data_config.as_dict())).check_images_present()
        super().instantiate_classes()

    def _lock_run_folder(self) -> None:
        # One run per folder: a second run into a folder in use is refused before it writes there.
        if self.subcommand is None or not is_global_rank_zero():
            return
        root = self.config[self.subcommand].get("trainer", {}).get("default_root_dir") or "."
        if "://" in str(root):
            return  # remote storage: no flock
        self._run_lock = RunFolderLock(root).acquire(" ".join(["cxr-lightning", *sys.argv[1:]]))

    def before_fit(self) -> None:
        self._check_free_space()

    def _check_free_space(self) -> None:
        """Refuse a fit whose checkpoints cannot fit on the disk, before the first epoch."""
        root = Path(self.trainer.default_root_dir)
        if "://" in str(root) or not self.trainer.is_global_zero:
            return
        tensors = [*self.model.parameters(), *self.model.buffers()]
        weights = sum(t.numel() * t.element_size() for t in tensors)
        trainable = sum(p.numel() * p.element_size() for p in self.model.parameters() if p.requires_grad)
        # best + last, plus the temporary copy of an atomic save; each holds weights and Adam's two moments.
        needed = 3 * (weights + 2 * trainable) + RUN_FOLDER_MARGIN_BYTES
        free = shutil.disk_usage(root).free
        if free < needed:
            raise RunFolderError(f"{root} has {free / 2**20:.0f} MiB free, but this run's checkpoints need about "
                                 f"{needed / 2**20:.0f} MiB; free some space or choose another --trainer.default_root_dir")  # fmt: skip

    def after_fit(self) -> None:
        if self.config.fit.get("test_after_fit"):
            best = self.trainer.checkpoint_callback.best_model_path if self.trainer.checkpoint_callback else ""
            if best and not _inside(best, _checkpoint_dir(self.trainer.default_root_dir)):
                # A resumed checkpoint carries its callbacks' state, best_model_path included: a file
                # it names elsewhere is not this run's and is not loaded.
                warnings.warn(f"the best checkpoint recorded ({best}) is outside this run's folder; testing the final weights instead")
                best = ""
            # Validate the best checkpoint first: its thresholds are re-tuned on the same
            # predictions (so unchanged) and its validation predictions are written for
            # calibration; then test it.
            # That validation is not logged: the loggers' history would gain a val/loss point at
            # the last step holding the best epoch's value.
            loggers, self.trainer.loggers = self.trainer.loggers, []
            try:
                self.trainer.validate(self.model, datamodule=self.datamodule, ckpt_path=best or None, weights_only=True)
            finally:
                self.trainer.loggers = loggers
            self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=best or None, weights_only=True)


def _checkpoint_dir(root: str | None) -> str:
    return str(Path(root or ".") / "checkpoints")


def _resolve_ckpt_path(ckpt_path: str | None, root: str | None) -> Path | None:
    """The local file ``--ckpt_path`` names (``last``: this run's ``last.ckpt``), or None."""
    if not ckpt_path or "://" in str(ckpt_path):
        return None
    if ckpt_path in ("last", "best", "hpc", "registry") or str(ckpt_path).startswith("registry:"):
        last = Path(_checkpoint_dir(root)) / "last.ckpt"
        return last if ckpt_path == "last" and last.is_file() else None
    path = Path(ckpt_path)
    if not path.is_file():
        raise CheckpointError(f"--ckpt_path {path}: no such file" + (" (it is a directory)" if path.is_dir() else ""))
    return path


def _without_config_paths(options: dict) -> dict:
    """The data options without jsonargparse's ``__path__`` entries (a section read from its own file has one too)."""
    return {k: _without_config_paths(v) if isinstance(v, dict) else v for k, v in options.items() if not k.startswith("__")}


def _inside(path: str, folder: str) -> bool:
    return Path(path).resolve().is_relative_to(Path(folder).resolve())

