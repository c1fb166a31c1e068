"""Safe extraction of a verified archive into ``ROOT``: every member is checked before anything is written.

Why the members are checked here although ``tarfile``'s ``filter="data"`` is used too: the filter
decides member by member *while* extracting, so a bad member half-way leaves the members before
it written; it also strips a leading ``/`` and extracts ``/tmp/x`` as ``ROOT/tmp/x`` instead of
refusing it.  The check pass refuses the whole archive (absolute names, ``..``, links leaving
``ROOT``, device files) before the first byte is written, and it is the only guard on Python
3.10.0-3.10.11, which ``requires-python >= 3.10`` admits and which has no data filter.  The price
is that the archive is decompressed twice (once to list the members, once to extract them).
"""

from __future__ import annotations

import gzip
import os
import re
import tarfile
import zlib
from pathlib import Path, PurePosixPath

from cxr_lightning.data.download.errors import DownloadError, UnsafeArchiveError

_FILTER_ERRORS: tuple[type[BaseException], ...] = (tarfile.FilterError,) if hasattr(tarfile, "FilterError") else ()


def _within(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def _check_member(archive_name: str, member: tarfile.TarInfo, root: Path) -> None:
    name = member.name

    def refuse(why: str) -> UnsafeArchiveError:
        return UnsafeArchiveError(f"refusing to extract {archive_name}: member {name!r} {why}")

    if name.startswith(("/", "\\")) or os.path.isabs(name) or re.match(r"^[A-Za-z]:", name):
        raise refuse("has an absolute path")
    if ".." in PurePosixPath(name.replace("\\", "/")).parts:
        raise refuse("contains '..'")
    target = (root / name).resolve()
    if not _within(target, root):
        raise refuse("would be written outside the target directory")
    if member.issym():
        link = member.linkname
        if os.path.isabs(link) or not _within((target.parent / link).resolve(), root):
            raise refuse(f"is a symlink to {link!r}, outside the target directory")
    elif member.islnk():
        if os.path.isabs(member.linkname) or not _within((root / member.linkname).resolve(), root):
            raise refuse(f"is a hard link to {member.linkname!r}, outside the target directory")
    elif not (member.isfile() or member.isdir()):
        raise refuse("is a device, FIFO or other special file")


def extract_archive(archive_name: str, path: Path, root: Path) -> int:
    """Safely extract ``path`` into ``root``; return the number of PNG files it held."""
    root = root.resolve()
    try:
        with tarfile.open(path, "r:*") as tar:
            members = tar.getmembers()  # all members are checked before anything is written
            for member in members:
                _check_member(archive_name, member, root)
            if hasattr(tarfile, "data_filter"):
                tar.extractall(root, members=members, filter="data")
            else:  # pragma: no cover - no PEP 706 filter (3.10.0-3.10.11, 3.11.0-3.11.3); the members were checked above
                tar.extractall(root, members=members)
    except _FILTER_ERRORS as exc:  # the data filter's own refusal (after our checks: unlikely)
        raise UnsafeArchiveError(f"refusing to extract {archive_name}: {exc}") from exc
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
        path.unlink(missing_ok=True)
        raise DownloadError(
            f"{archive_name} is not a readable tar.gz archive ({exc}); the bad file {path} was deleted, "
            "re-run the command to download it again."
        ) from exc
    except OSError as exc:  # disk full, permissions, ...
        raise DownloadError(
            f"could not extract {archive_name} into {root}: {exc}. Fix the problem and re-run the command; "
            f"the downloaded archive stays in {path.parent}."
        ) from exc
    return sum(1 for m in members if m.isfile() and m.name.lower().endswith(".png"))
