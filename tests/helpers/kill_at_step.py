"""A callback that SIGKILLs its own process at a given global step (for the resume test)."""

import os
import signal

import lightning as L


class KillAtStep(L.Callback):
    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        # Checkpoint callbacks run last in on_train_batch_end, so the checkpoint of step - 1 is on disk.
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)
