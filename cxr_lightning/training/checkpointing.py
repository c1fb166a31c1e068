"""``LatestCheckpoint``: the one writer of ``last.ckpt``, and what makes a resume from it exact.

A resume from any ``last.ckpt`` must end exactly as an uninterrupted run: the same batches,
weights, thresholds, best checkpoint and learning-rate schedule. Lightning's loops restore most of
that; this callback covers the rest (saves on an epoch's last batch, ReduceLROnPlateau's epoch-end
step). It uses Lightning's public API only (callback hooks, ``trainer.save_checkpoint``); the fit
loop's saved progress has no public API: it is read and changed only by the private functions at
the end of this file.
"""

from __future__ import annotations

import copy
import os
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import Checkpoint
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_warn
from torch.optim.lr_scheduler import ReduceLROnPlateau


class LatestCheckpoint(Checkpoint):
    """The one writer of ``last.ckpt``: after every validation, at every epoch end, and on its clock.

    Lightning's ``ModelCheckpoint(save_last=True)`` refreshes ``last.ckpt`` only in a step where its
    own trigger saved, so a best-only or clock-only writer leaves ``last.ckpt`` at an older epoch
    (with both, one of them wrote ``last-v1.ckpt``), and epochs without validation
    (``check_val_every_n_epoch > 1``) are never saved. This callback writes it after each
    validation (thresholds just tuned) and at each training-epoch end, once per step, so
    ``last.ckpt`` is always the newest state: what ``fit --ckpt_path last`` resumes and what
    ``predict``/``export`` of "the last model" mean. The clock (``train_time_interval``, 10 minutes
    in the CLI) and ``every_n_train_steps`` bound what a preemption mid-epoch loses. It is a
    ``Checkpoint`` callback, so Lightning runs it after every other callback in each hook. For
    ``ckpt_path="last"`` Lightning looks in the folders of the trainer's ``ModelCheckpoint``
    callbacks only: in the CLI the best checkpoint's (``checkpoint``) is this folder; a trainer
    built otherwise needs such a ``ModelCheckpoint`` beside it, or the path itself.

    Every ``last.ckpt`` it writes resumes exactly wherever it was taken. A step or clock save that
    falls on an epoch's last training batch is left to the save after that epoch's validation and
    end, in the same step: Lightning resumes a save taken on the last batch by skipping that
    validation (its threshold tuning, best checkpoint, early stopping and plateau step) and by
    restoring its epoch counters one step apart, which made every later save read as a finished
    epoch (resuming one trained that epoch again). Such a checkpoint written elsewhere (an older
    ``last.ckpt``, a user's own ``ModelCheckpoint``) has its counters mended when loaded, so later
    saves resume exactly; the skipped validation is warned about, naming the checkpoint.

    A ReduceLROnPlateau scheduler steps after every hook of an epoch's end, and Lightning never
    replays that step on resume (nor takes it at the end of an epoch it resumed inside). So every
    checkpoint the trainer writes after an epoch's training (``best.ckpt`` too) holds the
    optimizer and scheduler as after that step, computed on a copy; and the end of an epoch resumed
    inside takes the step Lightning leaves out. A checkpoint from an older version that lacks it
    is warned about when loaded.

    Args:
        dirpath: the folder of ``last.ckpt`` (default: ``trainer.default_root_dir/checkpoints``).
        every_n_train_steps: also save after every n-th optimizer step (``None`` or 0: never).
        train_time_interval: also save when this much training time has passed since the last
            clock save (``None``: never).
    """

    FILE_NAME = "last.ckpt"

    def __init__(
        self,
        dirpath: str | Path | None = None,
        every_n_train_steps: int | None = None,
        train_time_interval: timedelta | None = None,
    ) -> None:
        if every_n_train_steps is not None and every_n_train_steps < 0:
            raise ValueError(f"every_n_train_steps must be 0 or more, got {every_n_train_steps}")
        self.dirpath = None if dirpath is None else _local_path(dirpath)
        self.every_n_train_steps = every_n_train_steps or 0
        self.train_time_interval = train_time_interval
        # What ModelCheckpoint derived from these settings, in the state key (see state_key).
        self._legacy_every_n_epochs = 1 if every_n_train_steps is None and train_time_interval is None else 0
        self.last_step_saved = 0  # the global step of the newest save by this process (step 0 is never saved)
        self._clock_checked: float | None = None  # the training clock, started as training starts
        self._validated_epoch: int | None = None  # the last epoch validated in this process
        self._plateau_stepped_epoch: int | None = None  # the epoch end whose plateau step this callback took
        self._resumed_without_plateau_step = False  # resumed from a save that lacks its epoch's step

    @property
    def last_model_path(self) -> str:
        """Where ``last.ckpt`` is written ("" before ``setup`` without a ``dirpath``)."""
        return os.path.join(self.dirpath, self.FILE_NAME) if self.dirpath else ""

    @property
    def state_key(self) -> str:
        # This callback saves no state of its own (its record of the last step saved is, as
        # ModelCheckpoint's was, per process). The key is the one the earlier ModelCheckpoint-based
        # LatestCheckpoint saved its (unused) state under: Lightning finds it on resuming such a
        # last.ckpt and does not warn that the callback which wrote it is missing.
        legacy_state_key = {"monitor": None, "mode": "min", "every_n_train_steps": self.every_n_train_steps,
                            "every_n_epochs": self._legacy_every_n_epochs, "train_time_interval": self.train_time_interval}  # fmt: skip
        return f"{type(self).__qualname__}{legacy_state_key!r}"

    def setup(self, trainer, pl_module, stage: str) -> None:
        dirpath = self.dirpath or os.path.join(trainer.default_root_dir, "checkpoints")
        self.dirpath = trainer.strategy.broadcast(dirpath)  # every rank writes (and names) the same file

    def on_train_start(self, trainer, pl_module) -> None:
        self._clock_checked = time.monotonic()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx + 1 >= trainer.num_training_batches:
            return  # the epoch's last batch: saved after its validation and epoch end (see above)
        due_by_step = self.every_n_train_steps > 0 and trainer.global_step % self.every_n_train_steps == 0
        due_by_clock = False
        now = time.monotonic()
        if self.train_time_interval is not None:
            due_by_clock = self._clock_checked is not None and now - self._clock_checked >= self.train_time_interval.total_seconds()
            due_by_clock = trainer.strategy.broadcast(due_by_clock)  # rank 0's clock decides for all ranks
        if not (due_by_step or due_by_clock):
            return
        if due_by_clock:
            self._clock_checked = now
        self._save_newest(trainer)

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        if trainer.state.fn != TrainerFn.FITTING:
            return
        epoch = _end_last_batch_epoch(checkpoint)
        if epoch is not None:
            rank_zero_warn(
                f"{trainer.ckpt_path} was saved on the last training batch of epoch {epoch}, before that "
                f"epoch's validation: training resumes at epoch {epoch + 1} without that validation (no "
                "threshold tuning, best-checkpoint, early-stopping or LR-plateau update for it), so it "
                "can differ from an uninterrupted run; a last.ckpt saved after that validation resumes exactly"
            )
        elif (epoch := _plateau_step_missing(checkpoint)) is not None:
            self._resumed_without_plateau_step = True
            rank_zero_warn(
                f"{trainer.ckpt_path} was saved at the end of epoch {epoch} by an older cxr-lightning or another "
                "trainer, before that epoch's ReduceLROnPlateau step, which Lightning does not replay on resume "
                "(the validation metric is not in the checkpoint): the learning-rate schedule can differ from an "
                "uninterrupted run"
            )

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        # Runs for every checkpoint the trainer writes, whichever callback triggered it.
        if trainer.state.fn != TrainerFn.FITTING or PLATEAU_STEP_KEY in checkpoint:
            return  # not training, or already brought past the step (a second LatestCheckpoint)
        if not any(config.reduce_on_plateau for config in trainer.lr_scheduler_configs):
            return
        if not _after_epoch_training(checkpoint, trainer.num_training_batches):
            return  # mid-epoch, or the epoch's end is over: the live state is what resuming needs
        epoch = trainer.current_epoch
        if self._plateau_stepped_epoch == epoch:
            pass  # this callback took the step already: the saved state is after it
        elif not trainer.fit_loop.restarting or self._validated_epoch == epoch:
            # The step comes later in this epoch's end, on the validation loss it would read now:
            # by Lightning, or (an epoch resumed inside) by on_train_epoch_end below.
            _write_plateau_steps(trainer, checkpoint)
        elif self._resumed_without_plateau_step:
            return  # resumed after this epoch's validation from a save without its step: so is this one
        # Otherwise resumed after this epoch's validation from a save that already holds its step.
        checkpoint[PLATEAU_STEP_KEY] = epoch

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        # In an epoch resumed inside, Lightning skips the epoch-end plateau step (it stays
        # "restarting" until the epoch ends); this epoch's validation ran after the resume, so the
        # step is due, with that validation's loss. Taken here, after the module's own epoch end.
        epoch = trainer.current_epoch
        skipped = trainer.fit_loop.restarting and self._validated_epoch == epoch and self._plateau_stepped_epoch != epoch
        live_loop = {"loops": {"fit_loop": trainer.fit_loop.state_dict()}}
        if skipped and _after_epoch_training(live_loop, trainer.num_training_batches):
            for config, value in _due_plateau_steps(trainer):
                pl_module.lr_scheduler_step(config.scheduler, value)
            self._plateau_stepped_epoch = epoch
        self._save_newest(trainer)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        # Recorded before any callback's on_validation_end saves (the best checkpoint saves there
        # first): on_save_checkpoint reads it.
        if not trainer.sanity_checking:
            self._validated_epoch = trainer.current_epoch

    def on_validation_end(self, trainer, pl_module) -> None:
        # Also when this step was saved before the validation (a step-based trigger on the epoch's
        # last batch): the validation has just retuned the thresholds, which last.ckpt must carry.
        self._save_newest(trainer, after_validation=True)

    def _save_newest(self, trainer, after_validation: bool = False) -> None:
        # Never in sanity checks, non-fit stages or fast_dev_run; a step already saved only when a
        # validation came after that save. All ranks take the same decision and all call
        # save_checkpoint (the strategy decides which rank writes; the CLI's AtomicCheckpointIO
        # makes the write atomic).
        if trainer.sanity_checking or bool(trainer.fast_dev_run) or trainer.state.fn != TrainerFn.FITTING:
            return
        if self.last_step_saved == trainer.global_step and not after_validation:
            return
        trainer.save_checkpoint(self.last_model_path, weights_only=False)  # the full state: it is resumed from
        self.last_step_saved = trainer.global_step


def _local_path(dirpath: str | Path) -> str:
    """``dirpath`` as an absolute local path (``~`` expanded, as ModelCheckpoint does); a remote URL as it is."""
    return str(dirpath) if "://" in str(dirpath) else os.path.realpath(os.path.expanduser(dirpath))


# The epoch whose end-of-epoch ReduceLROnPlateau step a checkpoint's optimizer and scheduler states
# already account for (written by LatestCheckpoint.on_save_checkpoint); absent from older checkpoints.
PLATEAU_STEP_KEY = "lr_plateau_step_epoch"


def _end_last_batch_epoch(checkpoint: dict[str, Any]) -> int | None:
    """Rewrite the fit-loop progress of a checkpoint saved on an epoch's last training batch as of
    that epoch's end; the epoch, or None when the checkpoint was saved anywhere else.

    Lightning (2.x) restores such a save by counting the epoch processed without counting the next
    one started, and the next epoch then runs with ``epoch_progress.ready/started`` one behind
    ``processed``; every checkpoint saved in it reads as "epoch finished", so resuming one trains
    that epoch again from its first batch (more steps, other weights). As an end-of-epoch save
    (epoch processed, last batch completed, its logging step counted) Lightning starts the next
    epoch like an uninterrupted run. The loop state has no public API: this function is the one
    place that changes it and it leaves any other layout alone.
    """
    epochs, batches, loop_state = _fit_loop_progress(checkpoint)
    try:
        e, b = epochs["current"], batches["current"]
        saved_on_batch_end = b["ready"] == b["started"] == b["processed"] == b["completed"] + 1
        epoch_running = e["ready"] == e["started"] == e["processed"] + 1 and e["completed"] == e["processed"]
        if not (batches["is_last_batch"] and saved_on_batch_end and epoch_running and "_batches_that_stepped" in loop_state):
            return None
    except (KeyError, TypeError):
        return None
    for part in ("current", "total"):
        epochs[part]["processed"] += 1
        batches[part]["completed"] += 1
    loop_state["_batches_that_stepped"] += 1
    return int(e["completed"])


def _fit_loop_progress(checkpoint: dict[str, Any]) -> tuple[Any, Any, Any]:
    """Epoch progress, batch progress and epoch-loop state of the saved fit loop (None where absent).

    Lightning's private layout (2.x), read only here: there is no public API for the loop state.
    """
    fit_loop = (checkpoint.get("loops") or {}).get("fit_loop") or {}
    return fit_loop.get("epoch_progress"), fit_loop.get("epoch_loop.batch_progress"), fit_loop.get("epoch_loop.state_dict")


def _after_epoch_training(checkpoint: dict[str, Any], num_training_batches: float | None = None) -> bool:
    """Whether the fit loop was saved after its epoch's last training batch (and that batch's
    validation) but before the epoch completed: before Lightning's epoch-end ReduceLROnPlateau step.

    That is after the validation (epoch started, not yet processed) or in the epoch-end hooks
    (processed, not completed), with every batch completed and the last one reached, as Lightning
    decides it (``is_last_batch``, or as many batches as the epoch has).
    """
    epochs, batches, _ = _fit_loop_progress(checkpoint)
    try:
        e, b = epochs["current"], batches["current"]
        epoch_ending = e["ready"] == e["started"] == e["completed"] + 1 and e["processed"] in (e["completed"], e["started"])
        batches_done = b["ready"] == b["started"] == b["processed"] == b["completed"] > 0
        return bool(epoch_ending and batches_done and (batches["is_last_batch"] or b["ready"] == num_training_batches))
    except (KeyError, TypeError):
        return False


def _plateau_step_missing(checkpoint: dict[str, Any]) -> int | None:
    """The epoch whose ReduceLROnPlateau step a checkpoint saved at that epoch's end lacks, or None.

    Saved after the epoch's training, with a plateau scheduler (its state has ``num_bad_epochs``),
    without :data:`PLATEAU_STEP_KEY` for that epoch: an older cxr-lightning or another trainer
    wrote it before the step, and resuming it leaves the step out.
    """
    if not _after_epoch_training(checkpoint):
        return None
    schedulers = checkpoint.get("lr_schedulers")
    if not any(isinstance(state, dict) and "num_bad_epochs" in state for state in schedulers or []):
        return None
    epoch = _fit_loop_progress(checkpoint)[0]["current"]["completed"]
    return None if checkpoint.get(PLATEAU_STEP_KEY) == epoch else int(epoch)


def _due_plateau_steps(trainer) -> list[tuple[Any, Any]]:
    """The ReduceLROnPlateau steps Lightning takes at the end of this training epoch, each with its
    monitored value: epoch interval, the frequency condition on ``current_epoch + 1``, automatic
    optimisation, and a monitored metric logged (Lightning skips or fails the step without one).

    Mirrors ``_TrainingEpochLoop._update_learning_rates`` (Lightning 2.6) for plateau schedulers.
    """
    if not trainer.lightning_module.automatic_optimization:
        return []
    due = []
    for config in trainer.lr_scheduler_configs:
        if config.reduce_on_plateau and config.interval == "epoch" and (trainer.current_epoch + 1) % config.frequency == 0:
            value = trainer.callback_metrics.get(config.monitor)
            if value is not None:
                due.append((config, value))
    return due


def _write_plateau_steps(trainer, checkpoint: dict[str, Any]) -> None:
    """Bring the checkpoint's scheduler and optimizer learning rates past this epoch's due plateau
    steps, as an uninterrupted run has them after its epoch end; the live ones are left alone.

    Each step is taken on a stand-in: a ReduceLROnPlateau loaded with the saved scheduler state,
    over a throwaway optimizer holding the saved param-group learning rates (all the scheduler
    reads or writes). What is written is copied, never shared with the live objects.
    """
    schedulers, optimizers = checkpoint.get("lr_schedulers"), checkpoint.get("optimizer_states")
    if not isinstance(schedulers, list) or not isinstance(optimizers, list):
        return  # a weights-only checkpoint: no optimizer or scheduler state to bring forward
    for config, value in _due_plateau_steps(trainer):
        index = next(i for i, c in enumerate(trainer.lr_scheduler_configs) if c is config)
        optimizer = next(i for i, o in enumerate(trainer.optimizers) if o is config.scheduler.optimizer)
        if "param_groups" not in optimizers[optimizer]:
            continue  # a sharded optimizer's state on a rank that does not write it
        groups = copy.deepcopy(optimizers[optimizer]["param_groups"])
        stand_in = torch.optim.SGD([{"params": [torch.zeros(())], "lr": group["lr"]} for group in groups])
        scheduler = ReduceLROnPlateau(stand_in)
        scheduler.load_state_dict(copy.deepcopy(schedulers[index]))
        scheduler.step(value)  # what Lightning's default lr_scheduler_step does with a plateau scheduler
        for group, stepped in zip(groups, stand_in.param_groups):
            group["lr"] = stepped["lr"]
        optimizers[optimizer] = {**optimizers[optimizer], "param_groups": groups}
        schedulers[index] = copy.deepcopy(scheduler.state_dict())
