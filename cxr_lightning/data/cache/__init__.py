"""A pre-decoded, pre-resized uint8 image cache: decode every PNG once, then train from one memmap.

Decoding a 1024x1024 NIH PNG costs about 10-20 ms of a core, so the per-sample PNG path tops out
at some tens of images per second per core. :func:`build_cache` decodes each listed image once
with the per-sample path's semantics (:func:`cxr_lightning.data.images.load_grey`, then the
bilinear antialiased resize of :class:`~cxr_lightning.data.transforms.ImageTransform` on the
float image, then rounded to uint8) and writes them into ONE ``(N, S, S)`` uint8 ``.npy`` file,
memory-mapped. Training then slices that array (:class:`CachedChestXrayDataset`) and does the
float work (augmentation, channel replication, normalisation) on the accelerator
(:mod:`cxr_lightning.data.gpu_augment`).

Layout, under ``root/cache/<size>/`` by default::

    index.json          names (row = position), size, shape, file names, complete flag, the bad
                        images and, once complete, each source file's size and mtime
    images-<gen>.npy    the (N, S, S) uint8 array (numpy.lib.format.open_memmap: self-describing)
    done-<gen>.npy      (N,) uint8 progress mask: 0 to do, 1 cached, 2 missing, 3 unreadable
    sources-<gen>.npy   (N, 2) int64 size and mtime_ns of each source file when it was decoded
    .lock               held (a POSIX lockf lock) while a build runs; a second builder waits

A build is resumable: the array is created once and filled in place by worker processes, one
chunk at a time; a chunk's pixels are written and flushed before its rows are marked done, so a
killed or interrupted build continues where it stopped and never decodes a finished row again.
Finished rows whose source file changed (size or mtime) are decoded again.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch.utils.data import Dataset, get_worker_info
from torch.utils.data._utils.collate import default_collate

from cxr_lightning.data.argument_types import closed_fraction, open_fraction
from cxr_lightning.data.images import ImageDecodeError, load_grey

INDEX_FILE = "index.json"
LOCK_FILE = ".lock"
FORMAT_VERSION = 1

TODO, OK, MISSING, UNREADABLE = 0, 1, 2, 3
_STATUS_NAMES = {OK: "ok", MISSING: "missing", UNREADABLE: "unreadable"}

BadImagePolicy = Literal["error", "skip"]


class CacheBuildError(RuntimeError):
    """Some listed images are missing or unreadable (``bad``: name -> reason)."""

    def __init__(self, message: str, bad: Mapping[str, str] | None = None):
        super().__init__(message)
        self.bad = dict(bad or {})


class CacheLookupError(LookupError):
    """Names that the cache does not hold (absent or recorded as bad)."""

    def __str__(self) -> str:  # LookupError would repr() the message
        return str(self.args[0]) if self.args else ""


def default_cache_dir(root: str | Path, size: int) -> Path:
    return Path(root) / "cache" / str(int(size))


# --------------------------------------------------------------------------------------------
# decoding (runs in worker processes)
# --------------------------------------------------------------------------------------------
def decode_resized(path: str | Path, size: int) -> np.ndarray:
    """One image as ``(size, size)`` uint8: ``round(255 * resize(load_grey(path)))``.

    The resize is :class:`~cxr_lightning.data.transforms.ImageTransform`'s: bilinear with
    antialiasing on the float image (skipped when the image already has that size).
    """
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.v2 import functional as F

    image = load_grey(path)
    if image.shape[-2:] != (size, size):
        image = F.resize(image, [size, size], interpolation=InterpolationMode.BILINEAR, antialias=True)
    return image.mul_(255.0).round_().clamp_(0.0, 255.0).to(torch.uint8)[0].numpy()


def _init_worker(parent: int) -> None:
    torch.set_num_threads(1)

    # A killed builder leaves its pool workers behind; make them exit instead of waiting forever.
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="cache-parent-watchdog").start()


def _decode_chunk(task: tuple[str, int, int, list[int], list[str | None]]) -> list[tuple[int, int, int, int, str]]:
    """Decode a chunk of rows and write them into the .npy file; ``(row, status, size, mtime_ns, reason)`` each.

    Pixels are written with ``pwrite`` at the row's offset and flushed (``fdatasync``) before the
    chunk is reported, so a row the caller marks done is on disk.
    """
    array_path, offset, size, rows, paths = task
    results = []
    row_bytes = size * size
    fd = os.open(array_path, os.O_WRONLY)
    try:
        for row, path in zip(rows, paths):
            if path is None:
                results.append((row, MISSING, 0, 0, "not found under the image folders"))
                continue
            try:
                st = os.stat(path)
                stats = (st.st_size, st.st_mtime_ns)
            except FileNotFoundError:
                stats = None  # gone, or a broken symbolic link: the decoder says which
            except OSError:
                stats = (0, 0)  # a symbolic link loop...: the decoder names the problem
            try:
                pixels = decode_resized(path, size)
            except ImageDecodeError as err:
                status = MISSING if str(err).endswith(": file not found") else UNREADABLE
                results.append((row, status, *(stats or (0, 0)), str(err)))
                continue
            except Exception as err:  # noqa: BLE001 - any failure of one file is that file's problem
                results.append((row, UNREADABLE, *(stats or (0, 0)), f"{path}: {type(err).__name__}: {err}"))
                continue
            data = np.ascontiguousarray(pixels).tobytes()
            written = os.pwrite(fd, data, offset + row * row_bytes)
            if written != row_bytes:
                raise OSError(f"short write to {array_path} (row {row}: {written} of {row_bytes} bytes)")
            # a file that appeared after the stat records (0, 0): a later build sees it as changed
            results.append((row, OK, *(stats or (0, 0)), ""))
        if hasattr(os, "fdatasync"):
            os.fdatasync(fd)
        else:  # pragma: no cover - non-Linux
            os.fsync(fd)
    finally:
        os.close(fd)
    return results


# --------------------------------------------------------------------------------------------
# the on-disk state
# --------------------------------------------------------------------------------------------
@dataclass
class CacheReport:
    """What one :func:`build_cache` run did."""

    path: Path
    size: int
    total: int = 0  #: rows listed
    cached: int = 0  #: rows holding a decoded image at the end
    decoded: int = 0  #: images decoded by this run
    reused: int = 0  #: rows already done before this run (resumed, or copied from an earlier cache)
    bad: dict[str, str] = field(default_factory=dict)  #: name -> reason (missing / unreadable)
    seconds: float = 0.0
    complete: bool = False
    _reasons: dict[int, str] = field(default_factory=dict, repr=False)  #: row -> decoder message (this run)

    @property
    def missing(self) -> list[str]:
        return [n for n, r in self.bad.items() if r.startswith("missing")]

    @property
    def unreadable(self) -> list[str]:
        return [n for n, r in self.bad.items() if r.startswith("unreadable")]

    def summary(self) -> str:
        rate = f", {self.decoded / self.seconds:,.0f} images/s" if self.decoded and self.seconds > 0 else ""
        text = (
            f"{self.path}: {self.cached:,} of {self.total:,} images cached at {self.size}x{self.size} "
            f"({self.decoded:,} decoded now, {self.reused:,} reused, {len(self.missing):,} missing, "
            f"{len(self.unreadable):,} unreadable) in {self.seconds:.1f} s{rate}"
        )
        return text + ("" if self.complete else " [INCOMPLETE]")


def _write_json_atomic(path: Path, payload: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        json.dump(payload, f, separators=(",", ":"))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _read_index(directory: Path) -> dict | None:
    try:
        with open(directory / INDEX_FILE) as f:
            index = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(index, dict) or index.get("version") != FORMAT_VERSION:
        return None
    # The index names its data files: only plain names inside this folder (a copied cache is data
    # from elsewhere; its index must not point us at files outside it).
    for key in ("array", "done", "sources"):
        name = index.get(key)
        if not isinstance(name, str) or not name or Path(name).name != name or name in (".", ".."):
            return None
    return index


@contextlib.contextmanager
def _locked(directory: Path, progress: bool) -> Iterator[None]:
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


class _State:
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


def _new_generation(directory: Path, names: list[str], size: int) -> dict:
    gen = uuid.uuid4().hex[:8]
    index = {
        "version": FORMAT_VERSION,
        "size": int(size),
        "shape": [len(names), int(size), int(size)],
        "dtype": "uint8",
        "array": f"images-{gen}.npy",
        "done": f"done-{gen}.npy",
        "sources": f"sources-{gen}.npy",
        "complete": False,
        "names": list(names),
    }
    from numpy.lib.format import open_memmap

    need, free = len(names) * size * size, shutil.disk_usage(directory).free
    if need > free:
        raise OSError(f"the cache needs {need / 1e9:.2f} GB in {directory} but only {free / 1e9:.2f} GB are free; pass another out= (--out)")
    # The array is created once (a sparse file) and filled in place.
    array = open_memmap(directory / index["array"], mode="w+", dtype=np.uint8, shape=(len(names), size, size))
    del array
    np.save(directory / index["done"], np.zeros(len(names), dtype=np.uint8))
    np.save(directory / index["sources"], np.zeros((len(names), 2), dtype=np.int64))
    return index


def _generation_files(index: dict | None) -> set[str]:
    return set() if index is None else {index.get("array", ""), index.get("done", ""), index.get("sources", "")}


def _remove_unreferenced(directory: Path, keep: set[str]) -> None:
    for path in directory.iterdir():
        if path.is_file() and path.name.endswith(".npy") and path.name.split("-")[0] in ("images", "done", "sources") and path.name not in keep:
            path.unlink(missing_ok=True)


def _source_stats(paths: Sequence[str | None]) -> np.ndarray:
    """``(N, 2)`` int64 size and mtime_ns (-1 for a missing file)."""
    out = np.full((len(paths), 2), -1, dtype=np.int64)
    for i, path in enumerate(paths):
        if path is not None:
            try:
                st = os.stat(path)
            except OSError:
                continue
            out[i] = (st.st_size, st.st_mtime_ns)
    return out


# --------------------------------------------------------------------------------------------
# building
# --------------------------------------------------------------------------------------------
def build_cache(
    root: str | Path,
    image_names: Sequence[str],
    size: int,
    out: str | Path | None = None,
    workers: int | None = None,
    progress: bool = True,
    on_bad_image: BadImagePolicy = "error",
    chunk_size: int = 64,
    check_sources: bool = True,
    on_chunk: Callable[[int, int], None] | None = None,
) -> CacheReport:
    """Decode ``image_names`` (found under ``root`` by :func:`~cxr_lightning.data.dataset.index_images`) into a uint8 cache.

    Args:
        root: data root in the NIH layout (``images/`` or the Kaggle ``images_*/images/``).
        image_names: the images to cache, in row order (duplicates are an error).
        size: side of the cached square images.
        out: cache directory; default ``root/cache/<size>``.
        workers: decoding processes; default ``os.cpu_count()``; ``0`` decodes in this process.
        progress: show a tqdm progress bar.
        on_bad_image: ``error``: after caching every readable image, raise
            :class:`CacheBuildError` naming the missing and unreadable ones (the cache stays
            incomplete; a re-run after fixing them only decodes those); ``skip``: record them in
            the report and the index as bad and mark the cache complete.
        chunk_size: images per task; the progress mask is committed after each chunk.
        check_sources: re-decode finished rows whose source file changed size or mtime.
        on_chunk: called as ``on_chunk(rows_done, rows_total)`` after each committed chunk.

    An existing cache in ``out`` for the same names is resumed; one whose names hold all of
    ``image_names`` is left as it is; otherwise a new array is made and the rows it shares with
    the old cache are copied over (not decoded again) before the old files are removed.
    """
    from cxr_lightning.data.dataset import DOWNLOAD_HINT, DataNotFoundError, index_images

    if on_bad_image not in ("error", "skip"):
        raise ValueError(f"on_bad_image must be 'error' or 'skip', got {on_bad_image!r}")
    size = int(size)
    if size < 1:
        raise ValueError(f"size must be positive, got {size}")
    names = [str(n) for n in image_names]
    if not names:
        raise ValueError("no images to cache")
    if len(set(names)) != len(names):
        seen: set[str] = set()
        dupes = [n for n in names if n in seen or seen.add(n)]
        raise ValueError(f"{len(dupes)} duplicated image name(s), e.g. {dupes[:3]}")
    workers = (os.cpu_count() or 1) if workers is None else int(workers)
    directory = Path(out) if out is not None else default_cache_dir(root, size)
    located = index_images(root)
    if not located:
        # Nothing to decode: fail before a (possibly 100+ GB) array is allocated for nothing.
        raise DataNotFoundError(f"no images under {Path(root).resolve()}/images.\n" + DOWNLOAD_HINT.format(root=root))
    directory.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    report = CacheReport(path=directory, size=size, total=len(names))

    with _locked(directory, progress):
        old = _read_index(directory)
        if old is not None and old.get("size") != size:
            old = None
        state = None
        if old is not None and old["names"] == names:
            with contextlib.suppress(OSError, ValueError, KeyError):
                state = _State(directory, old)
        elif old is not None and old.get("complete") and _holds_all(old, names, directory):
            report.cached = report.reused = len(names)
            report.complete = True
            report.seconds = time.perf_counter() - start
            if progress:
                print(f"[cache] {directory} already holds all {len(names):,} images", file=sys.stderr)
            return report
        if state is None:
            state = _start_new_generation(directory, names, size, old, located)
        _remove_unreferenced(directory, _generation_files(state.index))
        try:
            _fill(state, names, located, size, workers, progress, chunk_size, check_sources, on_chunk, report)
            _finish(state, names, located, on_bad_image, report)
        finally:
            state.close()
    report.seconds = time.perf_counter() - start
    if report.bad and on_bad_image == "error":
        raise CacheBuildError(_bad_message(report), report.bad)
    return report


def _holds_all(index: dict, names: list[str], directory: Path) -> bool:
    try:
        done = np.load(directory / index["done"], mmap_mode="r")
    except (OSError, ValueError, KeyError):
        return False
    row = {n: i for i, n in enumerate(index["names"])}
    rows = np.asarray([row.get(n, -1) for n in names], dtype=np.int64)
    if (rows < 0).any():
        return False
    return bool((done[rows] == OK).all())


def _start_new_generation(directory: Path, names: list[str], size: int, old: dict | None, located: dict[str, Path]) -> _State:
    index = _new_generation(directory, names, size)
    state = _State(directory, index)
    if old is not None:
        # Copy the rows an earlier cache (another name list, same size) already decoded.
        with contextlib.suppress(OSError, ValueError, KeyError):
            prev = _State(directory, old)
            try:
                prev_row = {n: i for i, n in enumerate(prev.names)}
                pairs = [(i, prev_row[n]) for i, n in enumerate(names) if n in prev_row and prev.done[prev_row[n]] == OK]
                if pairs:
                    new_rows = np.asarray([p[0] for p in pairs], dtype=np.int64)
                    old_rows = np.asarray([p[1] for p in pairs], dtype=np.int64)
                    for lo in range(0, len(pairs), 1024):
                        state.images[new_rows[lo : lo + 1024]] = prev.images[old_rows[lo : lo + 1024]]
                    state.sources[new_rows] = prev.sources[old_rows]
                    state.images.flush()
                    state.done[new_rows] = OK
                    state.flush()
            finally:
                prev.close()
    _write_json_atomic(directory / INDEX_FILE, index)
    return state


def _fill(
    state: _State,
    names: list[str],
    located: dict[str, Path],
    size: int,
    workers: int,
    progress: bool,
    chunk_size: int,
    check_sources: bool,
    on_chunk: Callable[[int, int], None] | None,
    report: CacheReport,
) -> None:
    paths: list[str | None] = [str(located[n]) if n in located else None for n in names]
    done = state.done
    todo_mask = done != OK
    if check_sources:
        finished = np.flatnonzero(~todo_mask)
        if len(finished):
            stats = _source_stats([paths[i] for i in finished])
            changed = finished[(stats != state.sources[finished]).any(axis=1)]
            todo_mask[changed] = True
    todo = np.flatnonzero(todo_mask)
    report.reused = len(names) - len(todo)
    if len(todo) == 0:
        return
    workers = max(0, min(workers, len(todo)))
    chunk = max(1, min(chunk_size, math.ceil(len(todo) / max(1, workers) / 4)))
    chunks = [todo[i : i + chunk].tolist() for i in range(0, len(todo), chunk)]
    offset = int(state.images.offset)
    array_path = str(state.array_path)
    tasks = ((array_path, offset, size, rows, [paths[r] for r in rows]) for rows in chunks)

    # Import the decoder's modules here so forked workers start with them loaded.
    import torchvision.transforms.v2.functional  # noqa: F401

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(names), initial=report.reused, unit="img", desc=f"cache {size}px", dynamic_ncols=True)
    rows_done = report.reused
    reasons = report._reasons

    def commit(results: list[tuple[int, int, int, int, str]]) -> None:
        nonlocal rows_done
        rows = np.asarray([r[0] for r in results], dtype=np.int64)
        state.sources[rows] = np.asarray([(r[2], r[3]) for r in results], dtype=np.int64).reshape(-1, 2)
        done[rows] = np.asarray([r[1] for r in results], dtype=np.uint8)
        state.flush()
        report.decoded += sum(1 for r in results if r[1] == OK)
        for r in results:
            if r[1] != OK:
                reasons[r[0]] = r[4]
        rows_done += len(results)
        if bar is not None:
            bar.update(len(results))
        if on_chunk is not None:
            on_chunk(rows_done, len(names))

    try:
        if workers == 0:
            for task in tasks:
                commit(_decode_chunk(task))
        else:
            with ProcessPoolExecutor(workers, initializer=_init_worker, initargs=(os.getpid(),)) as pool:
                pending = set()
                try:
                    for task in tasks:
                        pending.add(pool.submit(_decode_chunk, task))
                        if len(pending) >= 2 * workers:
                            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                            for fut in finished:
                                commit(fut.result())
                    while pending:
                        finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                        for fut in finished:
                            commit(fut.result())
                except BaseException:
                    for fut in pending:
                        fut.cancel()
                    raise
    finally:
        if bar is not None:
            bar.close()


def _finish(state: _State, names: list[str], located: dict[str, Path], on_bad_image: str, report: CacheReport) -> None:
    done = np.asarray(state.done)
    report.cached = int((done == OK).sum())
    bad_rows = np.flatnonzero((done == MISSING) | (done == UNREADABLE))
    report.bad = {}
    for r in bad_rows:
        name = names[r]
        kind = _STATUS_NAMES[int(done[r])]
        path = located.get(name)
        detail = report._reasons.get(int(r)) or ("not found under the image folders" if path is None else str(path))
        report.bad[name] = f"{kind}: {detail}"
    all_done = bool((done != TODO).all())
    complete = all_done and (not report.bad or on_bad_image == "skip")
    index = dict(state.index)
    index["complete"] = complete
    index["bad"] = report.bad
    index["counts"] = {"cached": report.cached, "missing": len(report.missing), "unreadable": len(report.unreadable)}
    index["status"] = [_STATUS_NAMES.get(int(s), "todo") for s in done]
    sources = np.asarray(state.sources)
    index["source_size"] = sources[:, 0].tolist()
    index["source_mtime_ns"] = sources[:, 1].tolist()
    state.images.flush()
    _write_json_atomic(state.directory / INDEX_FILE, index)
    state.index = index
    report.complete = complete


def _bad_message(report: CacheReport, limit: int = 20) -> str:
    lines = [f"{len(report.bad):,} of {report.total:,} images could not be cached ({len(report.missing):,} missing, "
             f"{len(report.unreadable):,} unreadable); the other {report.cached:,} are cached in {report.path}:"]  # fmt: skip
    for name, reason in list(report.bad.items())[:limit]:
        lines.append(f"  {name}: {reason}")
    if len(report.bad) > limit:
        lines.append(f"  ... and {len(report.bad) - limit:,} more")
    lines.append("Fix or re-download them and run again (only they are decoded), or pass on_bad_image='skip' (--skip-bad) to leave them out.")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------------
class ImageCache:
    """A complete cache opened read-only: ``array`` is the ``(N, S, S)`` uint8 memmap.

    Pickles without the array (DataLoader workers under ``spawn``/``forkserver`` reopen the
    memmap instead of receiving a copy).
    """

    def __init__(self, directory: str | Path, index: dict):
        self.path = Path(directory)
        self.size = int(index["size"])
        self.names = np.asarray(index["names"], dtype=np.str_)
        self.bad: dict[str, str] = dict(index.get("bad", {}))
        self._array_file = self.path / index["array"]
        self._row: dict[str, int] | None = None
        self._array: np.memmap | None = None
        self.array  # open now so a broken file fails here  # noqa: B018

    @property
    def array(self) -> np.memmap:
        if self._array is None:
            array = np.load(self._array_file, mmap_mode="r")
            if array.shape != (len(self.names), self.size, self.size) or array.dtype != np.uint8:
                raise ValueError(f"{self._array_file}: shape {array.shape} {array.dtype} disagrees with its index")
            self._array = array
        return self._array

    def __len__(self) -> int:
        return len(self.names)

    def __repr__(self) -> str:
        return f"ImageCache({str(self.path)!r}, {len(self.names):,} x {self.size}x{self.size} uint8, {len(self.bad)} bad)"

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_array"] = None
        state["_row"] = None
        return state

    def _rows_of(self) -> dict[str, int]:
        if self._row is None:
            self._row = {n: i for i, n in enumerate(self.names.tolist())}
            for name in self.bad:
                self._row.pop(name, None)
        return self._row

    def __contains__(self, name: str) -> bool:
        return name in self._rows_of()

    def missing(self, names: Sequence[str]) -> list[str]:
        """The names this cache cannot serve (absent, or recorded as bad)."""
        row = self._rows_of()
        return [n for n in names if n not in row]

    def rows(self, names: Sequence[str] | np.ndarray) -> np.ndarray:
        """Row positions (int64) of ``names``; absent or bad names are an error naming them."""
        row = self._rows_of()
        names = [str(n) for n in names]
        out = np.fromiter((row.get(n, -1) for n in names), dtype=np.int64, count=len(names))
        if (out < 0).any():
            missing = [names[i] for i in np.flatnonzero(out < 0)]
            bad = [n for n in missing if n in self.bad]
            detail = f" ({len(bad)} recorded as bad when it was built, e.g. {bad[0]}: {self.bad[bad[0]]})" if bad else ""
            raise CacheLookupError(
                f"{len(missing):,} of {len(names):,} images are not in the cache {self.path}{detail}: "
                f"{missing[:10]}{' ...' if len(missing) > 10 else ''}. Rebuild it with `cxr-lightning data prepare`."
            )
        return out

    def changed_sources(self, root: str | Path, ignore_missing: bool = False, located: Mapping[str, Path] | None = None) -> list[str]:
        """Names whose source file now differs (size, mtime or existence) from when it was cached.

        ``ignore_missing``: a source file deleted since (to save disk once cached) is not a change.
        ``located``: ``index_images(root)`` if the caller already has it (one directory listing).
        """
        from cxr_lightning.data.dataset import index_images

        index = _read_index(self.path) or {}
        size, mtime = index.get("source_size"), index.get("source_mtime_ns")
        if size is None or mtime is None:
            return []
        located = index_images(root) if located is None else located
        names = self.names.tolist()
        recorded = np.stack([np.asarray(size, dtype=np.int64), np.asarray(mtime, dtype=np.int64)], axis=1)
        now = _source_stats([str(located[n]) if n in located else None for n in names])
        good = np.asarray([n not in self.bad for n in names], dtype=bool)
        if ignore_missing:
            good &= now[:, 0] >= 0
        return [names[i] for i in np.flatnonzero(good & (now != recorded).any(axis=1))]


def open_cache(root: str | Path | None, size: int, path: str | Path | None = None) -> ImageCache | None:
    """The complete cache at ``path`` (default ``root/cache/<size>``) built at ``size``, else ``None``."""
    directory = Path(path) if path is not None else default_cache_dir(root, size)
    index = _read_index(directory)
    if index is None or not index.get("complete") or int(index.get("size", -1)) != int(size):
        return None
    try:
        return ImageCache(directory, index)
    except (OSError, ValueError, KeyError):
        return None


# --------------------------------------------------------------------------------------------
# the dataset
# --------------------------------------------------------------------------------------------
def _uint8_batch(shape: tuple[int, ...], pin_memory: bool = False) -> torch.Tensor:
    """An uninitialised uint8 tensor: in shared memory inside a DataLoader worker (no copy on the
    way out, as ``default_collate`` does), else pinned when asked and CUDA is available."""
    if get_worker_info() is not None:
        numel = math.prod(shape)
        storage = torch.empty(0, dtype=torch.uint8)._typed_storage()._new_shared(numel, device="cpu")
        return torch.empty(0, dtype=torch.uint8).new(storage).view(shape)
    if pin_memory and torch.cuda.is_available():
        return torch.empty(shape, dtype=torch.uint8, pin_memory=True)
    return torch.empty(shape, dtype=torch.uint8)


class CachedBatch(dict):
    """A batch that :meth:`CachedChestXrayDataset.__getitems__` already collated."""


class CachedChestXrayDataset(Dataset):
    """:class:`~cxr_lightning.data.dataset.ChestXrayDataset`'s samples with ``image`` read from an :class:`ImageCache`.

    ``image`` is the cached ``(1, S, S)`` uint8 tensor: convert, augment and normalise it on the
    device with :mod:`cxr_lightning.data.gpu_augment`. With a DataLoader's automatic batching,
    :meth:`__getitems__` reads a whole batch with one fancy index of the memmap (rows sorted for
    locality) and returns it collated; pass ``collate_fn=cached_collate``. Samples of a batch
    come in cache-row order (all fields permuted alike); with ``shuffle=False`` over a dataset
    in CSV order that is the sampler's order.

    With an ``augmentation`` (the training part), each sample/batch also carries ``augment``: the
    ``(4,)``/``(B, 4)`` float32 parameters (angle, brightness, contrast, contrast_first) drawn like
    :class:`~cxr_lightning.data.dataset.ChestXrayDataset` draws them, from
    ``sample_seed(seed, epoch, index)`` (``epoch`` is the shared tensor a
    :class:`~cxr_lightning.data.loading.ResumableSampler` writes), for
    :class:`~cxr_lightning.data.gpu_augment.BatchAugment` to apply on the device. Batches carry
    ``skipped: []`` like ``collate_skipping_bad``'s (bad images are left out when the cache is built).

    ``pin_memory=True`` (for ``num_workers=0`` on CUDA): batches read in the main process go
    straight into pinned memory, so the DataLoader's ``pin_memory`` step has nothing to copy.
    """

    def __init__(
        self,
        cache: ImageCache,
        names: Sequence[str] | np.ndarray,
        labels: np.ndarray,
        metadata: np.ndarray,
        seed: int = 0,
        augmentation=None,
        pin_memory: bool = False,
    ):
        if not (len(names) == len(labels) == len(metadata)):
            raise ValueError(f"names, labels and metadata differ in length: {len(names)}, {len(labels)}, {len(metadata)}")
        self.cache = cache
        self.names = np.asarray([str(n) for n in names], dtype=np.str_)
        self.cache_rows = cache.rows(self.names)
        self.labels = torch.from_numpy(np.ascontiguousarray(labels, dtype=np.float32))
        self.metadata = torch.from_numpy(np.ascontiguousarray(metadata, dtype=np.float32))
        self.size = cache.size
        self.seed = seed
        self.augmentation = augmentation
        self.pin_memory = pin_memory
        # Written by the sampler's set_epoch; shared memory so DataLoader workers see it too.
        self.epoch = torch.zeros(1, dtype=torch.int64).share_memory_()

    def augment_params(self, indices: Sequence[int] | np.ndarray) -> torch.Tensor:
        """``(B, 4)`` float32 augmentation parameters of these samples in this epoch."""
        from cxr_lightning.data.gpu_augment import AugmentParams
        from cxr_lightning.data.loading import sample_seed

        a, epoch = self.augmentation, int(self.epoch[0])
        seeds = [sample_seed(self.seed, epoch, int(i)) for i in indices]
        return AugmentParams.from_seeds(seeds, a.rotation_degrees, a.brightness, a.contrast).as_tensor()

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> dict:
        draw, index = int(index), int(index) % len(self)  # a repeated draw reads index % len (tag_repeats)
        image = torch.from_numpy(np.array(self.cache.array[self.cache_rows[index]])).unsqueeze(0)
        sample = {
            "image": image,
            "metadata": self.metadata[index],
            "labels": self.labels[index],
            "name": str(self.names[index]),
            "index": int(index),
        }
        if self.augmentation is not None:
            sample["augment"] = self.augment_params([draw])[0]
        return sample

    def __getitems__(self, indices: Sequence[int]) -> CachedBatch:
        idx = np.asarray(indices, dtype=np.int64)
        if idx.ndim != 1:
            raise ValueError("__getitems__ takes a flat list of indices")
        if len(idx) and idx.min() < -len(self):
            raise IndexError(f"index out of range for a dataset of {len(self)}")
        # Indices >= len are a sampler's repeated draws (tag_repeats): the image at index % len,
        # augmented with the whole index as its seed.
        draws = np.where(idx < 0, idx + len(self), idx)
        idx = draws % len(self)
        rows = self.cache_rows[idx]
        order = np.argsort(rows, kind="stable")
        idx, rows, draws = idx[order], rows[order], draws[order]
        s = self.size
        image = _uint8_batch((len(idx), 1, s, s), self.pin_memory)
        # mode="clip": rows are valid, and the default mode="raise" would buffer `out` (a second copy).
        np.take(self.cache.array, rows, axis=0, out=image.numpy().reshape(len(idx), s, s), mode="clip")
        positions = torch.from_numpy(idx)
        batch = CachedBatch(
            image=image,
            metadata=self.metadata.index_select(0, positions),
            labels=self.labels.index_select(0, positions),
            name=self.names[idx].tolist(),
            index=positions,
            skipped=[],
        )
        if self.augmentation is not None:
            batch["augment"] = self.augment_params(draws)
        return batch


def cached_collate(batch):
    """Collate for :class:`CachedChestXrayDataset`: passes a pre-collated batch through, else ``default_collate``."""
    if isinstance(batch, CachedBatch):
        return dict(batch)
    out = default_collate(batch)
    if isinstance(out, dict):
        out.setdefault("skipped", [])
    return out


# --------------------------------------------------------------------------------------------
# CLI: cxr-lightning data prepare
# --------------------------------------------------------------------------------------------
def add_prepare_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--root", type=Path, required=True, help="data root holding images/ (or the Kaggle images_*/images/)")
    parser.add_argument("--size", type=int, default=224, help="side of the cached square images (default 224; match data.image_size)")
    parser.add_argument("--out", type=Path, default=None, help="cache directory (default ROOT/cache/SIZE)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="decoding processes (default: all cores; 0: in this process)")
    parser.add_argument(
        "--split", choices=("all", "paper", "official", "patient"), default="all",
        help="cache every image of the metadata CSV (all, default) or only the --parts of this split",
    )  # fmt: skip
    parser.add_argument("--parts", nargs="+", choices=("train", "val", "test"), default=["train", "val", "test"], help="parts of --split to cache")
    parser.add_argument("--metadata-csv", type=Path, default=None, help="metadata CSV (default: ROOT's or the packaged one)")
    parser.add_argument("--train-val-list", type=Path, default=None, help="official train_val list (default: ROOT's or the packaged one)")
    parser.add_argument("--test-list", type=Path, default=None, help="official test list (default: ROOT's or the packaged one)")
    parser.add_argument("--val-fraction", type=open_fraction, default=0.15, help="official split: patient fraction of train_val for validation")
    parser.add_argument("--seed", type=int, default=100, help="official/patient split seed")
    parser.add_argument("--fractions", type=closed_fraction, nargs=3, default=(0.7, 0.1, 0.2), metavar=("TRAIN", "VAL", "TEST"))
    parser.add_argument("--stratify", action="store_true", help="patient split: stratify by rarest finding")
    parser.add_argument("--skip-bad", action="store_true", help="record missing/unreadable images as bad and finish, instead of failing")
    parser.add_argument("--chunk-size", type=int, default=64, help="images per worker task (progress is saved after each)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _prepare_names(args: argparse.Namespace) -> list[str]:
    from cxr_lightning.data.metadata import find_metadata_csv, read_metadata

    meta = read_metadata(args.metadata_csv or find_metadata_csv(args.root), quiet=True)
    names = meta.frame["image"].to_numpy()
    if args.split == "all":
        return names.tolist()
    from cxr_lightning.data.commands import split_from_args

    split = split_from_args(args, meta)
    rows = np.sort(np.concatenate([split.part(p) for p in dict.fromkeys(args.parts)]))
    return names[rows].tolist()


def run_prepare(args: argparse.Namespace) -> int:
    """``cxr-lightning data prepare``: build (or resume) the uint8 cache of the metadata CSV's images."""
    from cxr_lightning.data.dataset import DataNotFoundError

    names = _prepare_names(args)
    print(f"[cache] {len(names):,} images listed; caching at {args.size}x{args.size} with {args.workers} worker(s)", file=sys.stderr)
    try:
        report = build_cache(
            args.root,
            names,
            args.size,
            out=args.out,
            workers=args.workers,
            progress=not args.no_progress,
            on_bad_image="skip" if args.skip_bad else "error",
            chunk_size=args.chunk_size,
        )
    except (CacheBuildError, DataNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(report.summary())
    if report.bad:
        print(f"skipped {len(report.bad):,} bad image(s) (listed in {report.path / INDEX_FILE} under 'bad'):")
        for name, reason in list(report.bad.items())[:20]:
            print(f"  {name}: {reason}")
    return 0
