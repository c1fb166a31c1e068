"""Callbacks that SIGKILL their own process at a given global step (for the resume tests)."""

import os
import signal

import lightning as L


class KillAtStep(L.Callback):
    """Dies before training batch ``step + 1``: ``last.ckpt`` (saved every step) is the state at ``step``."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        # Checkpoint callbacks run last in on_train_batch_end, so the checkpoint of step - 1 is on disk.
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


class KillInValidationAtStep(L.Callback):
    """Dies as the validation after training step ``step`` starts, before anything saves after it.

    With a save every step, what is on disk is then the save taken on that training batch (the
    epoch's last batch when ``step`` ends an epoch), not an after-validation one.
    """

    def __init__(self, step: int):
        self.step = step

    def on_validation_start(self, trainer, pl_module):
        if not trainer.sanity_checking and trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


class KillAtEpochEndAtStep(L.Callback):
    """Dies as the training-epoch end after step ``step`` starts: after that epoch's validation, before its end.

    Checkpoint callbacks run last at an epoch's end, so what is on disk is the save taken after
    the validation (``last.ckpt``, the best checkpoint), not the epoch-end one.
    """

    def __init__(self, step: int):
        self.step = step

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)
