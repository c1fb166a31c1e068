"""What a cache folder holds on disk: the index, one generation of ``.npy`` files, the builder's lock.

Each fact is stored once: ``index.json`` holds what no array holds (the names, the size, the
complete flag, the generation's file names, the reason each bad image was left out); the
arrays hold the pixels (``images``), each row's status (``done``) and each source file's size
and mtime when it was decoded (``sources``). A folder whose index is unreadable, of another
:data:`FORMAT_VERSION`, or names files outside the folder is "no cache" (rebuilt, never misread).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from numpy.lib.format import open_memmap

INDEX_FILE = "index.json"
LOCK_FILE = ".lock"
# Indexes written before each fact was stored once (same version) also held copies of what the
# arrays hold; nothing reads those keys, so such caches are read as they are, and the copies are
# dropped when the index is rewritten (never left behind stale).
FORMAT_VERSION = 1
_COPIED_KEYS = ("shape", "dtype", "counts", "status", "source_size", "source_mtime_ns")

# Values of the done-<gen>.npy progress mask.
TODO, OK, MISSING, UNREADABLE = 0, 1, 2, 3
STATUS_NAMES = {OK: "ok", MISSING: "missing", UNREADABLE: "unreadable"}

_GENERATION_KEYS = ("array", "done", "sources")  # index keys naming the generation's .npy files


def default_cache_dir(root: str | Path, size: int) -> Path:
    return Path(root) / "cache" / str(int(size))


def write_index(directory: Path, index: dict) -> None:
    """Replace ``index.json`` atomically (a reader sees the old or the new index, never half)."""
    path = directory / INDEX_FILE
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        json.dump({k: v for k, v in index.items() if k not in _COPIED_KEYS}, f, separators=(",", ":"))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_index(directory: Path) -> dict | None:
    """The folder's index, or ``None`` when there is none this version can read safely."""
    try:
        with open(directory / INDEX_FILE) as f:
            index = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(index, dict) or index.get("version") != FORMAT_VERSION:
        return None
    # The index names its data files: only plain names inside this folder (a copied cache is data
    # from elsewhere; its index must not point us at files outside it).
    for key in _GENERATION_KEYS:
        name = index.get(key)
        if not isinstance(name, str) or not name or Path(name).name != name or name in (".", ".."):
            return None
    return index


@contextlib.contextmanager
def build_lock(directory: Path, progress: bool) -> Iterator[None]:
    """Hold the folder's lock for a build; a second builder waits (and says so when ``progress``)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no locking
        yield
        return
    # POSIX record locks (lockf), not flock: forked decoding workers do not inherit them, so a
    # builder that is killed releases the lock at once even if its workers linger.
    with open(directory / LOCK_FILE, "a+") as handle:
        try:
            fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            if progress:
                print(f"[cache] another process is building {directory}; waiting for it", file=sys.stderr)
            fcntl.lockf(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.lockf(handle, fcntl.LOCK_UN)


class Generation:
    """The files of one generation of a cache directory, opened for writing."""

    def __init__(self, directory: Path, index: dict):
        self.directory = directory
        self.index = index
        self.names: list[str] = index["names"]
        n, size = len(self.names), int(index["size"])
        self.images = np.load(directory / index["array"], mmap_mode="r+")
        self.done = np.load(directory / index["done"], mmap_mode="r+")
        self.sources = np.load(directory / index["sources"], mmap_mode="r+")
        if self.images.shape != (n, size, size) or self.images.dtype != np.uint8 or self.done.shape != (n,) or self.sources.shape != (n, 2):
            raise ValueError("cache files disagree with the index")

    @property
    def array_path(self) -> Path:
        return self.directory / self.index["array"]

    def flush(self) -> None:
        self.done.flush()
        self.sources.flush()

    def close(self) -> None:
        self.flush()
        del self.images, self.done, self.sources


def new_generation(directory: Path, names: list[str], size: int) -> dict:
    """Create the empty files of a new generation for ``names`` and return its (not yet written) index."""
    gen = uuid.uuid4().hex[:8]
    index = {
        "version": FORMAT_VERSION,
        "size": int(size),
        "array": f"images-{gen}.npy",
        "done": f"done-{gen}.npy",
        "sources": f"sources-{gen}.npy",
        "complete": False,
        "names": list(names),
    }
    need, free = len(names) * size * size, shutil.disk_usage(directory).free
    if need > free:
        raise OSError(f"the cache needs {need / 1e9:.2f} GB in {directory} but only {free / 1e9:.2f} GB are free; pass another out= (--out)")
    # The array is created once (a sparse file) and filled in place.
    array = open_memmap(directory / index["array"], mode="w+", dtype=np.uint8, shape=(len(names), size, size))
    del array
    np.save(directory / index["done"], np.zeros(len(names), dtype=np.uint8))
    np.save(directory / index["sources"], np.zeros((len(names), 2), dtype=np.int64))
    return index


def generation_files(index: dict | None) -> set[str]:
    return set() if index is None else {index.get(key, "") for key in _GENERATION_KEYS}


def remove_unreferenced(directory: Path, keep: set[str]) -> None:
    """Delete the ``.npy`` files of other (older) generations."""
    for path in directory.iterdir():
        if path.is_file() and path.name.endswith(".npy") and path.name.split("-")[0] in ("images", "done", "sources") and path.name not in keep:
            path.unlink(missing_ok=True)


def source_stats(paths: Sequence[str | None]) -> np.ndarray:
    """``(N, 2)`` int64 size and mtime_ns, as ``sources-<gen>.npy`` records them (-1 for a missing file)."""
    out = np.full((len(paths), 2), -1, dtype=np.int64)
    for i, path in enumerate(paths):
        if path is not None:
            try:
                st = os.stat(path)
            except OSError:
                continue
            out[i] = (st.st_size, st.st_mtime_ns)
    return out
