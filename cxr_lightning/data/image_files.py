"""Finding image files on disk, and saying why a path found there is not a readable image file.

Image folders are listed with :func:`os.scandir` one entry at a time, and an entry that cannot be
examined (a symbolic link loop, a broken link, a folder we may not read) never stops the listing:
it is kept, so the one image is reported by name when it is decoded (:func:`unreadable_reason`
says what is wrong with it) instead of the whole listing failing or the image passing for
"missing". Symbolic links to files are followed; symbolic links to folders are not descended
into by the recursive walk (so a link loop cannot make it endless), as :meth:`pathlib.Path.rglob`.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["FolderEntry", "Walk", "scan_folder", "unreadable_reason", "walk_folder"]


@dataclass(frozen=True)
class FolderEntry:
    """One entry of a folder: ``is_dir`` follows symbolic links and is False for one that leads nowhere."""

    name: str
    path: Path
    is_dir: bool
    is_link: bool


def _entry(entry: os.DirEntry) -> FolderEntry:
    try:
        is_dir = entry.is_dir()
    except OSError:  # a symbolic link loop, or a link we may not follow: decoding names the problem
        is_dir = False
    try:
        is_link = entry.is_symlink()
    except OSError:
        is_link = False
    return FolderEntry(entry.name, Path(entry.path), is_dir, is_link)


def scan_folder(folder: str | Path) -> Iterator[FolderEntry]:
    """The entries of ``folder`` (not recursive), none left out, none raising.

    Raises:
        OSError: ``folder`` itself cannot be listed (the message names it).
    """
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                yield _entry(entry)
    except OSError as err:
        raise type(err)(err.errno, f"cannot list the image folder {folder}: {err.strerror}") from err


@dataclass
class Walk:
    """What :func:`walk_folder` found: every entry below the folder and the sub-folders it could not list."""

    entries: list[FolderEntry] = field(default_factory=list)
    unlisted: list[tuple[Path, str]] = field(default_factory=list)  #: (folder, reason)


def walk_folder(folder: str | Path, skip_hidden: bool = True) -> Walk:
    """Every entry below ``folder``, depth first in name order; real sub-folders are descended, linked ones not.

    ``skip_hidden`` leaves out entries whose name starts with ``.`` (and what is below them).
    A sub-folder that cannot be listed is recorded in ``unlisted`` and the walk goes on.
    """
    walk = Walk()
    pending = [Path(folder)]
    while pending:
        current = pending.pop()
        try:
            entries = sorted(scan_folder(current), key=lambda e: e.name)
        except OSError as err:
            walk.unlisted.append((current, f"cannot list this folder ({err.strerror or err})"))
            continue
        below = []
        for entry in entries:
            if skip_hidden and entry.name.startswith("."):
                continue
            walk.entries.append(entry)
            if entry.is_dir and not entry.is_link:
                below.append(entry.path)
        pending.extend(reversed(below))
    return walk


def unreadable_reason(path: str | Path) -> str | None:
    """Why ``path`` cannot be opened as an image file, in a few words; None when it is a regular, non-empty file.

    Permission is not judged here (``root`` may read anything): opening the file tells.
    """
    try:
        info = os.stat(path)  # follows symbolic links
    except FileNotFoundError:
        if os.path.islink(path):
            return f"broken symbolic link (to {os.readlink(path)!r}, which does not exist)"
        return "file not found"
    except OSError as err:
        if err.errno == errno.ELOOP:
            return "symbolic link loop (Too many levels of symbolic links)"
        if err.errno in (errno.EACCES, errno.EPERM):
            return "permission denied (cannot reach it: check the folders' permissions)"
        return f"cannot examine it ({err.strerror or err})"
    if stat.S_ISDIR(info.st_mode):
        return "a directory, not an image file"
    if not stat.S_ISREG(info.st_mode):
        return "not a regular file (a device, FIFO or socket), not an image file"
    if info.st_size == 0:
        return "empty file (0 bytes)"
    return None
