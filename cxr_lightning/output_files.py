"""Writing a command's output files safely: check the folder first, then replace files atomically.

* :func:`check_writable_folder` creates the output folder if needed and writes (then removes) a
  small probe file in it, so a read-only folder, a read-only file system or a full disk stops the
  command in one line *before* the long work (a cache build, a model export), not after it.
* :func:`atomic_outputs` hands out staging paths, with the final file names, in a hidden folder
  inside the target folder (same file system, so ``os.replace`` is atomic). Only when the block
  finishes are the files moved to their final names; on any error the staging folder is removed.
  A crash or a full disk therefore never leaves a half-written file under the final name.
* An ``OSError`` of a full disk (``ENOSPC``/``EDQUOT``) or a read-only target while writing
  becomes :class:`OutputFileError` "disk full writing FILE ...", one line at the command line.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

_DISK_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
_NOT_WRITABLE = {errno.EACCES, errno.EPERM, errno.EROFS}


class OutputFileError(RuntimeError):
    """An output folder that cannot be written, or a write that failed (disk full); one-line message."""


def describe_os_error(err: OSError) -> str:
    """What a failed write means to a user: disk full, read-only file system, permission denied..."""
    if err.errno in _DISK_FULL:
        return "the disk is full"
    if err.errno == errno.EROFS:
        return "the file system is read-only"
    if err.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    return err.strerror or str(err)


def check_writable_folder(folder: str | Path, what: str) -> Path:
    """Create ``folder`` if needed and prove it writable with a probe file; else :class:`OutputFileError`.

    ``what`` names the output for the message ("the report", "the cache").
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-probe-{os.getpid()}"
        try:
            with open(probe, "wb") as handle:
                handle.write(b"probe")
                handle.flush()
                os.fsync(handle.fileno())
        finally:
            with contextlib.suppress(OSError):
                os.unlink(probe)
    except OSError as err:
        raise OutputFileError(
            f"cannot write {what} in {folder}: {describe_os_error(err)}; choose another output folder or free/fix it"
        ) from err
    return folder


def _translated(err: OSError, staged: list[Path], finals: list[Path]) -> OutputFileError | None:
    """A one-line error for a full disk (wherever it happened) or an unwritable staged file; None for other errors."""
    final = _final_for(err, staged, finals)
    if err.errno in _DISK_FULL:
        path = final or finals[0]
        return OutputFileError(
            f"disk full writing {path}: nothing was written under that name; free space in {path.parent} or choose another output folder"
        )
    if err.errno in _NOT_WRITABLE and final is not None:  # not an unreadable input file
        return OutputFileError(f"cannot write {final}: {describe_os_error(err)}; nothing was written under that name")
    return None


def _os_error_in(err: BaseException) -> OSError | None:
    """The OSError in ``err``'s cause/context chain (libraries such as pandas or torch wrap it)."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, OSError):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


@contextlib.contextmanager
def atomic_outputs(*paths: str | Path) -> Iterator[list[Path]]:
    """Yield staging paths (same names, a hidden folder beside the first path) for ``paths``; move them there on success.

    All ``paths`` must share one folder. A staged path the block did not create is not moved
    (and an older file of that name is left as it is).
    """
    finals = [Path(p) for p in paths]
    folder = finals[0].parent
    if any(p.parent != folder for p in finals):
        raise ValueError(f"atomic_outputs: all files must be in one folder, got {[str(p) for p in finals]}")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{finals[0].name}.", suffix=".partial", dir=folder))
    except OSError as err:
        raise OutputFileError(f"cannot write {finals[0]}: {describe_os_error(err)}; choose another output folder or free/fix it") from err
    staged = [staging / p.name for p in finals]
    try:
        yield staged
        for tmp, final in zip(staged, finals):
            if tmp.exists():
                with open(tmp, "rb+") as handle:  # on disk before the rename makes it visible
                    os.fsync(handle.fileno())
                os.replace(tmp, final)
    except BaseException as err:
        os_error = _os_error_in(err) if isinstance(err, Exception) else None
        translated = _translated(os_error, staged, finals) if os_error is not None else None
        if translated is not None:
            raise translated from err
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _final_for(err: OSError, staged: list[Path], finals: list[Path]) -> Path | None:
    """The final name of the staged file ``err`` is about, or None when it names none of ours."""
    for filename in (err.filename, err.filename2):
        if filename is None:
            continue
        path = Path(os.fsdecode(filename)) if isinstance(filename, (str, bytes, os.PathLike)) else None
        for tmp, final in zip(staged, finals):
            if path in (tmp, final):
                return final
        if path is not None and path.parent == staged[0].parent:
            return finals[0]
    return None


def atomic_write_text(path: str | Path, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_outputs`)."""
    with atomic_outputs(path) as (tmp,), open(tmp, "w", encoding=encoding) as handle:
        handle.write(text)
    return Path(path)


def disk_full_message(err: BaseException) -> str | None:
    """The "disk full writing FILE ..." message for an ENOSPC anywhere in ``err``'s chain (writes outside :func:`atomic_outputs`), else None."""
    os_error = _os_error_in(err)
    if os_error is None or os_error.errno not in _DISK_FULL:
        return None
    where = f" {os.fsdecode(os_error.filename)}" if isinstance(os_error.filename, (str, bytes, os.PathLike)) else ""
    return f"disk full writing{where}: free space on that disk (or choose another output folder) and run the command again"
