"""``LatestCheckpoint``: the one writer of ``last.ckpt``, and what makes a resume from it exact.

A resume from any ``last.ckpt`` must end exactly as an uninterrupted run: the same batches,
weights, thresholds, best checkpoint and learning-rate schedule. Lightning's loops restore most of
that; this callback covers the rest (saves on an epoch's last batch, ReduceLROnPlateau's epoch-end
step). The fit loop's saved progress has no public API: it is read and changed only by the
private functions at the end of this file.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_warn
from torch.optim.lr_scheduler import ReduceLROnPlateau


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
    checkpoint the trainer writes after an epoch's training (``best-*.ckpt`` too) holds the
    optimizer and scheduler as after that step, computed on a copy; and the end of an epoch resumed
    inside takes the step Lightning leaves out. A checkpoint from an older version that lacks it
    is warned about when loaded.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._validated_epoch: int | None = None  # the last epoch validated in this process
        self._plateau_stepped_epoch: int | None = None  # the epoch end whose plateau step this callback took
        self._resumed_without_plateau_step = False  # resumed from a save that lacks its epoch's step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx + 1 >= trainer.num_training_batches:
            return  # the epoch's last batch: saved after its validation and epoch end (see above)
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

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
        super().on_train_epoch_end(trainer, pl_module)
        self._save_newest(trainer)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        # Recorded before any callback's on_validation_end saves (the best checkpoint saves there
        # first): on_save_checkpoint reads it.
        if not trainer.sanity_checking:
            self._validated_epoch = trainer.current_epoch

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
