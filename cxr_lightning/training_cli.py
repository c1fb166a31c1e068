"""LightningCLI for fit/validate/test/predict, with the links from the data to the model."""

from __future__ import annotations

from pathlib import Path

import yaml
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import WandbLogger

from cxr_lightning.callbacks import PredictionCSVWriter, TestOutputWriter, ThresholdTuner
from cxr_lightning.checkpoint import LatestCheckpoint
from cxr_lightning.data.datamodule import ChestXrayDataModule
from cxr_lightning.models.base import CXRClassifier


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
        super().__init__(CXRClassifier, ChestXrayDataModule, *args, **kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(ThresholdTuner, "threshold_tuner")
        parser.add_lightning_class_args(TestOutputWriter, "test_outputs")
        parser.add_lightning_class_args(PredictionCSVWriter, "predict_outputs")
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults({"checkpoint.monitor": "val/loss", "checkpoint.mode": "min", "checkpoint.save_last": False,
                             "checkpoint.filename": "best-{epoch:02d}"})  # fmt: skip
        parser.link_arguments("trainer.default_root_dir", "checkpoint.dirpath", compute_fn=_checkpoint_dir)
        # The one writer of last.ckpt: after every epoch and every 10 minutes of training, so a
        # preempted run loses at most that much; rewritten in place on a rerun (no last-v1.ckpt).
        parser.add_lightning_class_args(LatestCheckpoint, "resume_checkpoint")
        parser.set_defaults({"resume_checkpoint.save_last": True, "resume_checkpoint.save_top_k": 0,
                             "resume_checkpoint.train_time_interval": "0:10:00",
                             "resume_checkpoint.enable_version_counter": False})  # fmt: skip
        parser.link_arguments("trainer.default_root_dir", "resume_checkpoint.dirpath", compute_fn=_checkpoint_dir)
        parser.add_argument("--test_after_fit", type=bool, default=False, help="run test on the best checkpoint after fit")
        for source, target in (
            ("data.num_labels", "model.init_args.num_labels"),
            ("data.label_names", "model.init_args.label_names"),
            ("data.metadata_dim", "model.init_args.metadata_dim"),
            ("data.pos_weight", "model.init_args.pos_weight"),
        ):
            parser.link_arguments(source, target, apply_on="instantiate")

    def before_instantiate_classes(self) -> None:
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
        # The data is checked before the model loads its (possibly large) pretrained weights.
        data_config = self.config.get(self.subcommand, self.config).get("data") if self.subcommand else self.config.get("data")
        if data_config is not None:
            ChestXrayDataModule(**{k: v for k, v in data_config.as_dict().items() if not k.startswith("__")}).check_images_present()
        super().instantiate_classes()

    def after_fit(self) -> None:
        if self.config.fit.get("test_after_fit"):
            best = self.trainer.checkpoint_callback.best_model_path if self.trainer.checkpoint_callback else ""
            # Validate the best checkpoint first: its thresholds are re-tuned on the same
            # predictions (so unchanged) and its validation predictions are written for
            # calibration; then test it.
            # That validation is not logged: the loggers' history would gain a val/loss point at
            # the last step holding the best epoch's value.
            loggers, self.trainer.loggers = self.trainer.loggers, []
            try:
                self.trainer.validate(self.model, datamodule=self.datamodule, ckpt_path=best or None)
            finally:
                self.trainer.loggers = loggers
            self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=best or None)


def _checkpoint_dir(root: str | None) -> str:
    return str(Path(root or ".") / "checkpoints")

