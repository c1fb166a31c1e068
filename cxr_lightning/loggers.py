"""A Weights & Biases logger that never blocks or stops training.

Offline by default: the run is written under the run directory and can be uploaded later with
``wandb sync``. Online, the W&B server is probed first (a TCP connection with a short
timeout); an unreachable server, a missing or rejected API key, or any other failure to start
the W&B run gives a warning and falls back to an offline run, with the same local files.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlparse

from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.loggers.logger import rank_zero_experiment
from lightning.pytorch.utilities import rank_zero_warn

DEFAULT_SERVER = "https://api.wandb.ai"


def server_reachable(url: str, timeout: float) -> bool:
    """Whether a TCP connection to the server of ``url`` opens within ``timeout`` seconds."""
    parsed = urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname or "", port), timeout=timeout):
            return True
    except OSError:
        return False


class SafeWandbLogger(WandbLogger):
    """``WandbLogger`` (same arguments) that falls back to offline instead of hanging or crashing.

    Args:
        offline: write the run locally only (default); ``wandb sync`` uploads it later.
        connect_timeout: seconds to wait for the W&B server before going offline.
    """

    def __init__(self, *args, offline: bool = True, connect_timeout: float = 5.0, **kwargs):
        if not offline:
            server = os.environ.get("WANDB_BASE_URL", DEFAULT_SERVER)
            if not server_reachable(server, connect_timeout):
                rank_zero_warn(f"W&B server {server} is not reachable within {connect_timeout:g} s: logging offline "
                               "(upload later with `wandb sync`)")  # fmt: skip
                offline = True
        super().__init__(*args, offline=offline, **kwargs)
        self.offline = offline  # whether the run is (or has fallen back to) offline

    @property
    @rank_zero_experiment
    def experiment(self):
        try:
            return WandbLogger.experiment.fget(self)
        except Exception as err:  # noqa: BLE001 - any failure of the W&B service must not stop training
            if self.offline:
                raise
            rank_zero_warn(f"W&B could not start an online run ({type(err).__name__}: {err}); logging offline instead")
            self.offline = True
            with _wandb_offline_mode():
                return WandbLogger.experiment.fget(self)


@contextmanager
def _wandb_offline_mode() -> Iterator[None]:
    """``wandb.init`` starts offline runs inside (W&B's ``WANDB_MODE`` setting), as it did before outside."""
    previous = os.environ.get("WANDB_MODE")
    os.environ["WANDB_MODE"] = "offline"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("WANDB_MODE", None)
        else:
            os.environ["WANDB_MODE"] = previous
