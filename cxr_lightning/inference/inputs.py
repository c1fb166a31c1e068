"""Which image files the user means: files, folders, glob patterns and list files, expanded in order.

* files: PNG/JPEG/TIFF/BMP (:data:`IMAGE_SUFFIXES`) and DICOM (a ``.dcm``/``.dicom``/``.dic``
  suffix, or no suffix and the ``DICM`` magic);
* folders: searched recursively for those files (hidden entries left out);
* glob patterns (``'scans/**/*.png'``, quoted so the shell leaves them alone);
* list files (``.txt``/``.lst``/``.list``): one path per line, relative paths relative to the
  list file; blank lines and ``#`` comments skipped.

Inputs that match nothing are problems (``{'path', 'reason'}``), never an exception: the caller
reports them and goes on with the rest.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable
from pathlib import Path

from cxr_lightning.data.dicom import DICOM_SUFFIXES, is_dicom_file
from cxr_lightning.data.image_files import unreadable_reason, walk_folder

__all__ = ["IMAGE_SUFFIXES", "LIST_SUFFIXES", "resolve_inputs"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
LIST_SUFFIXES = (".txt", ".lst", ".list")
_GLOB_CHARS = set("*?[")


def _is_image_candidate(path: Path, is_dir: bool = False) -> bool:
    """An image by its suffix (a folder or a link loop named like one too: decoding then says what it is), or a suffix-less DICOM file."""
    suffix = path.suffix.lower()
    if suffix in IMAGE_SUFFIXES or suffix in DICOM_SUFFIXES:
        return True
    return suffix == "" and not is_dir and is_dicom_file(path)  # DICOM files often have no suffix


def _folder_files(folder: Path) -> tuple[list[Path], list[dict[str, str]]]:
    """The image files below ``folder`` (hidden entries left out) and the sub-folders that could not be listed."""
    walk = walk_folder(folder)
    files = sorted(entry.path for entry in walk.entries if _is_image_candidate(entry.path, entry.is_dir))
    return files, [{"path": str(path), "reason": reason} for path, reason in walk.unlisted]


def _read_list_file(path: Path) -> tuple[list[tuple[int, str]], str | None]:
    """``(line number, text)`` of a list file's paths (blank and ``#`` lines counted, not returned), or the reason it is unreadable.

    Read as ``utf-8-sig``: a byte-order mark is not part of the first path.
    """
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        return [], f"list file is not UTF-8 text (byte {err.start}: {err.reason})"
    except OSError as err:
        return [], f"cannot read the list file ({err.strerror or err})"
    lines = [(number, line.strip()) for number, line in enumerate(text.splitlines(), start=1)]
    return [(number, line) for number, line in lines if line and not line.startswith("#")], None


def resolve_inputs(inputs: str | Path | Iterable[str | Path]) -> tuple[list[Path], list[dict[str, str]]]:
    """Expand files, folders, globs and list files into image paths (in order, without duplicates).

    Returns ``(paths, problems)`` where each problem is ``{'path': ..., 'reason': ...}`` for an
    input that matched nothing (a missing file, an empty glob, an empty folder) or is not a file
    (a folder named like an image, a symbolic link loop...); a list file's entries say their line.
    Paths that exist but cannot be decoded are returned: decoding reports them.
    """
    items = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
    paths: list[Path] = []
    problems: list[dict[str, str]] = []

    def add(item: str | Path, base: Path | None = None, origin: str = "") -> None:
        text = str(item).strip()
        if not text:
            return
        path = Path(text).expanduser()
        if base is not None and not path.is_absolute():
            path = base / path

        def problem(reason: str) -> None:
            problems.append({"path": str(path), "reason": reason + origin})

        if path.is_dir():
            found, unlisted = _folder_files(path)
            problems.extend(unlisted)
            if not found and not unlisted:
                named_like_image = _is_image_candidate(path, is_dir=True)
                what = "a directory, not an image file, and it holds" if named_like_image else "folder holds"
                problem(f"{what} no PNG/JPEG/DICOM file")
            paths.extend(found)
        elif path.is_file():
            if path.suffix.lower() in LIST_SUFFIXES and base is None:
                lines, unreadable = _read_list_file(path)
                if unreadable is not None:
                    problem(unreadable)
                for number, line in lines:
                    add(line, base=path.parent, origin=f" (line {number} of {path})")
            else:
                paths.append(path)
        elif _GLOB_CHARS & set(text) and not os.path.lexists(path):
            pattern = str(path)
            matches = sorted(Path(m) for m in glob.glob(pattern, recursive=True))
            files = [m for m in matches if not m.is_dir() and _is_image_candidate(m)]
            for folder in (m for m in matches if m.is_dir()):
                found, unlisted = _folder_files(folder)
                files += found
                problems.extend(unlisted)
            if not files:
                problem("no image file matches this pattern")
            paths.extend(files)
        else:
            problem(unreadable_reason(path) or "file not found")

    for item in items:
        add(item)
    # One entry per file, however it was reached (a list file's "../x.png" and a glob's "x.png").
    unique: dict[Path, Path] = {}
    for p in paths:
        unique.setdefault(_identity(p), p)
    return list(unique.values()), problems


def _identity(path: Path) -> Path:
    """The path a file is known by whatever the route to it; a link loop's own path (resolve() would raise)."""
    try:
        return path.resolve()
    except (OSError, RuntimeError):
        return path.absolute()
