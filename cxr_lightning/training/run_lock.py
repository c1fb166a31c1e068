"""One run per folder: an exclusive lock on the run directory, held for the life of the process.

Two runs writing into one ``default_root_dir`` mix their checkpoints, thresholds and metrics (the
second tests the first one's best checkpoint and reports it as its own). A run therefore takes an
advisory ``flock`` on ``<run>/.lock`` before it writes anything there. The operating system drops
the lock when the process ends, however it ends (exit, exception, SIGKILL, a node lost), so there
is never a stale lock to clean up by hand. The file itself records who holds it, for the message
another run prints when it is refused.

Only the process of global rank 0 takes it: under DDP every rank runs the CLI on the same folder.
``flock`` is POSIX; where it is missing (Windows) the lock is skipped with a warning.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import time
import warnings
from pathlib import Path
from typing import IO

from cxr_lightning.output_files import describe_os_error

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

LOCK_NAME = ".lock"
# Environment variables that carry a process's rank under torchrun, SLURM and Lightning's launcher.
_RANK_VARIABLES = ("RANK", "SLURM_PROCID", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK")


class RunFolderError(RuntimeError):
    """The run folder is in use by another run, or cannot be written."""


def is_global_rank_zero() -> bool:
    """Whether this process is the first of its job (every rank variable that is set says 0)."""
    return all(os.environ.get(name, "0").strip() in ("", "0") for name in _RANK_VARIABLES)


class RunFolderLock:
    """The exclusive lock on one run folder; :meth:`acquire` refuses a folder another process holds."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self._handle: IO[str] | None = None

    def acquire(self, command: str = "") -> RunFolderLock:
        if self._handle is not None:
            return self
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            handle = open(self.path, "a+", encoding="utf-8")  # noqa: SIM115 - held open for the run's life
        except OSError as err:
            raise RunFolderError(unwritable_message(self.folder, err)) from err
        if fcntl is None:  # pragma: no cover - Windows
            warnings.warn(f"{self.folder}: no flock on this system; two runs into this folder are not prevented", stacklevel=2)
            self._handle = handle
            return self
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            holder = _read_holder(handle)
            handle.close()
            if err.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise RunFolderError(
                    f"run folder {self.folder} is in use by another run ({holder}); wait for it to finish, stop it, "
                    "or give this run its own folder (--trainer.default_root_dir)"
                ) from err
            raise RunFolderError(f"cannot lock run folder {self.folder} ({err}); give this run another folder") from err
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S"), "command": command}
        try:
            handle.seek(0)
            handle.truncate()
            handle.write(json.dumps(holder) + "\n")
            handle.flush()
        except OSError as err:
            handle.close()
            raise RunFolderError(unwritable_message(self.folder, err)) from err
        self._handle = handle
        return self

    def release(self) -> None:
        if self._handle is None:
            return
        if fcntl is not None:
            fcntl.flock(self._handle.fileno(), fcntl.LOCK_UN)
        self._handle.close()
        self._handle = None


def _read_holder(handle: IO[str]) -> str:
    try:
        handle.seek(0)
        holder = json.loads(handle.readline() or "{}")
        return f"pid {holder['pid']} on {holder['host']}, started {holder['started']}: {holder['command']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "a process that has not recorded itself yet"


def unwritable_message(folder: Path, err: OSError) -> str:
    return f"cannot write into {folder} ({describe_os_error(err)}); choose a folder you can write to"
