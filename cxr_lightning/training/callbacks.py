"""Callbacks: per-label threshold tuning on validation, and the test outputs of a run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info

from cxr_lightning.data.synthetic import is_synthetic_root
from cxr_lightning.evaluation.metrics import THRESHOLD_RULES, ThresholdRule, best_f1_thresholds, per_label_table
from cxr_lightning.evaluation.predictions_file import write_predictions
from cxr_lightning.output_files import atomic_outputs, atomic_write_text


class ThresholdTuner(L.Callback):
    """After each validation epoch, set ``pl_module.thresholds`` to the F1-maximising per-label values.

    The search sees the whole validation set once: the module's ``PredictionCollector`` gathers
    every rank's predictions and drops the samples a distributed sampler repeats, so every rank
    computes the same thresholds. Callbacks run before the module's own epoch-end hook, so the
    epoch's ``val/*`` metrics (without ``@0.5``) already use the new thresholds, and the
    checkpoint saved after this validation carries them.

    Args:
        save_to: file name, in ``trainer.default_root_dir``, where rank 0 writes the latest
            thresholds as JSON (null: do not write).
        save_predictions: also write the validation predictions (``val_predictions.csv``),
            which temperature scaling and calibration reports fit on.
        rule: ``score`` (the paper's: the lowest validation score predicted positive at the best
            cut) or ``midpoint`` (halfway between that score and the next lower one); see
            :func:`~cxr_lightning.evaluation.metrics.best_f1_thresholds`.
    """

    def __init__(self, save_to: str | None = "thresholds.json", save_predictions: bool = True, rule: ThresholdRule = "score"):
        if rule not in THRESHOLD_RULES:
            raise ValueError(f"threshold_tuner.rule {rule!r}: use one of {', '.join(THRESHOLD_RULES)}")
        self.save_to = save_to
        self.save_predictions = save_predictions
        self.rule = rule

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        epoch = pl_module.val_predictions.compute()
        thresholds = best_f1_thresholds(epoch.probs, epoch.targets, self.rule).to(pl_module.thresholds)
        pl_module.thresholds.copy_(thresholds)
        if self.save_to and trainer.is_global_zero:
            path = Path(trainer.default_root_dir) / self.save_to
            path.parent.mkdir(parents=True, exist_ok=True)
            record = {**_weights_source(trainer, pl_module), "num_images": int(len(epoch.indices)), "rule": self.rule,
                      "thresholds": dict(zip(pl_module.label_names, thresholds.tolist()))}  # fmt: skip
            atomic_write_text(path, json.dumps(record, indent=2) + "\n")
            if self.save_predictions:
                names = _image_names(trainer.val_dataloaders, epoch.indices)
                write_predictions(path.parent / "val_predictions.csv", names, epoch.probs, epoch.targets, pl_module.label_names)


class TestOutputWriter(L.Callback):
    """Writes ``metrics.json``, ``per_label.csv`` and ``test_predictions.csv`` after ``test``.

    The folder is ``out_dir`` or ``trainer.default_root_dir`` (the run directory). Only rank 0
    writes. With a ``WandbLogger`` the per-label ROC curves (a figure) and the threshold table
    go to W&B too.
    """

    def __init__(self, out_dir: str | None = None, roc_figure: bool = True):
        self.out_dir = out_dir
        self.roc_figure = roc_figure

    def run_dir(self, trainer: L.Trainer) -> Path:
        return Path(self.out_dir or trainer.default_root_dir)

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        results = getattr(pl_module, "test_results", None)
        if not results or not trainer.is_global_zero:
            return
        out = self.run_dir(trainer)
        out.mkdir(parents=True, exist_ok=True)
        metrics, epoch, names = results["metrics"], results["predictions"], pl_module.label_names
        summary = {group: {k: v for k, v in values.items() if k != "per_label"} for group, values in metrics.items()}
        summary["thresholds"] = dict(zip(names, results["thresholds"]))
        summary["num_images"] = int(len(epoch.indices))
        summary.update(_weights_source(trainer, pl_module))
        summary["data"] = _data_source(trainer)
        atomic_write_text(out / "metrics.json", json.dumps(_finite(summary), indent=2) + "\n")

        at_half = per_label_table(metrics["default"])[["f1", "precision", "recall"]].add_suffix("@0.5")
        table = per_label_table(metrics["tuned"]).join(at_half)
        with atomic_outputs(out / "per_label.csv") as (staged,):
            table.to_csv(staged, index_label="label")

        image_names = _image_names(trainer.test_dataloaders, epoch.indices)
        write_predictions(out / "test_predictions.csv", image_names, epoch.probs, epoch.targets, names,
                          demographics=_demographics(trainer, image_names))  # fmt: skip
        figure = None
        if self.roc_figure:
            from cxr_lightning.evaluation.plots import plot_roc_curves

            figure = plot_roc_curves(epoch.probs.cpu().numpy(), epoch.targets.cpu().numpy(), names, out / "roc_curves.png")
        rank_zero_info(f"[test] wrote metrics.json, per_label.csv, test_predictions.csv to {out}")
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                if figure is not None:
                    logger.log_image("test/roc_curves", [str(figure)])
                rows = [[n, float(t), _finite(metrics["tuned"]["per_label"][n]["auroc"])] for n, t in zip(names, results["thresholds"])]
                logger.log_table("test/thresholds", columns=["label", "threshold", "auroc"], data=rows)


class PredictionCSVWriter(BasePredictionWriter):
    """Writes ``predictions.csv`` after ``predict``: image, per-label probability and decision.

    Decisions use the model's thresholds (tuned on validation when the checkpoint was trained
    with :class:`ThresholdTuner`). With several processes each rank writes
    ``predictions.rank{K}.csv`` for the samples it saw.
    """

    def __init__(self, out_dir: str | None = None):
        super().__init__(write_interval="epoch")
        self.out_dir = out_dir

    def write_on_epoch_end(self, trainer, pl_module, predictions, batch_indices) -> None:
        out = Path(self.out_dir or trainer.default_root_dir)
        out.mkdir(parents=True, exist_ok=True)
        batches = predictions[0] if predictions and isinstance(predictions[0], list) else predictions
        names = [name for batch in batches for name in batch["name"]]
        probs = torch.cat([batch["probs"] for batch in batches]).cpu().numpy() if batches else np.zeros((0, len(pl_module.label_names)))
        labels = pl_module.label_names
        frame = pd.DataFrame(probs, columns=[f"prob_{n}" for n in labels])
        decisions = pd.DataFrame((probs >= pl_module.thresholds.cpu().numpy()).astype(np.int8), columns=[f"pred_{n}" for n in labels])
        name = "predictions.csv" if trainer.world_size == 1 else f"predictions.rank{trainer.global_rank}.csv"
        with atomic_outputs(out / name) as (staged,):
            pd.concat([pd.DataFrame({"image": names}), frame, decisions], axis=1).to_csv(staged, index=False, float_format="%.9g")
        rank_zero_info(f"[predict] wrote {len(names):,} predictions to {out / name}")


def _demographics(trainer: L.Trainer, image_names: list[str]):
    """Age, sex and view of the tested images from the DataModule's own metadata (None without one that knows them)."""
    lookup = getattr(getattr(trainer, "datamodule", None), "demographics", None)
    return lookup(image_names) if callable(lookup) else None


def _data_source(trainer: L.Trainer) -> dict:
    """What the report must know of the tested data: where it was and whether it was synthetic."""
    datamodule = getattr(trainer, "datamodule", None)
    root = getattr(datamodule, "data_root", None)
    if root is None:
        return {}
    return {"data_root": str(root), "synthetic": is_synthetic_root(Path(root))}


def _image_names(loader, indices: torch.Tensor) -> list[str]:
    """Image names of dataset positions (both dataset kinds have ``names``)."""
    dataset = loader[0].dataset if isinstance(loader, (list, tuple)) else loader.dataset
    return [str(dataset.names[i]) for i in indices.tolist()]


def _weights_source(trainer: L.Trainer, pl_module: L.LightningModule) -> dict:
    """Which weights were evaluated: the epoch they come from and, for validate/test, the checkpoint file.

    validate/test with ``ckpt_path`` do not restore the trainer's epoch counter, so the loaded
    checkpoint's own epoch is used; inside fit the trainer's epoch is the weights' epoch.
    """
    if trainer.state.fn == TrainerFn.FITTING:
        return {"epoch": int(trainer.current_epoch), "checkpoint": None}
    if trainer.ckpt_path and getattr(pl_module, "checkpoint_epoch", None) is not None:
        return {"epoch": int(pl_module.checkpoint_epoch), "checkpoint": str(trainer.ckpt_path)}
    # The weights in memory: after fit, current_epoch counts the finished epochs (the last is one less).
    return {"epoch": int(trainer.current_epoch) - 1 if trainer.current_epoch > 0 else None, "checkpoint": None}


def _finite(value):
    """JSON has no NaN: undefined metrics (a label with one class) become null."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, float) and math.isnan(value):
        return None
    return value
