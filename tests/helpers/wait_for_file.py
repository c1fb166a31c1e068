"""A callback that holds a run at its start until a file appears (for the two-runs-in-one-folder test)."""

import time
from pathlib import Path

import lightning as L


class WaitForFile(L.Callback):
    """Waits in ``on_train_start`` until ``path`` exists (at most ``timeout`` seconds), then trains."""

    def __init__(self, path: str, timeout: float = 300.0):
        self.path = Path(path)
        self.timeout = timeout

    def on_train_start(self, trainer, pl_module):
        deadline = time.monotonic() + self.timeout
        while not self.path.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
