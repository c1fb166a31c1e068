"""Building a cache: decode the listed images into the current generation (resumably), then finish its index."""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from tqdm import tqdm

from cxr_lightning.data.cache.decode import RowResult, decode_chunk, init_worker
from cxr_lightning.data.cache.format import (
    MISSING,
    OK,
    STATUS_NAMES,
    TODO,
    UNREADABLE,
    Generation,
    build_lock,
    default_cache_dir,
    generation_files,
    new_generation,
    read_index,
    remove_unreferenced,
    source_stats,
    write_index,
)
from cxr_lightning.data.dataset import DOWNLOAD_HINT, DataNotFoundError, index_images

BadImagePolicy = Literal["error", "skip"]


class CacheBuildError(RuntimeError):
    """Some listed images are missing or unreadable (``bad``: name -> reason)."""

    def __init__(self, message: str, bad: Mapping[str, str] | None = None):
        super().__init__(message)
        self.bad = dict(bad or {})


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

    with build_lock(directory, progress):
        old = read_index(directory)
        if old is not None and old.get("size") != size:
            old = None
        state = None
        if old is not None and old["names"] == names:
            with contextlib.suppress(OSError, ValueError, KeyError):
                state = Generation(directory, old)
        elif old is not None and old.get("complete") and _holds_all(old, names, directory):
            report.cached = report.reused = len(names)
            report.complete = True
            report.seconds = time.perf_counter() - start
            if progress:
                print(f"[cache] {directory} already holds all {len(names):,} images", file=sys.stderr)
            return report
        if state is None:
            state = _start_new_generation(directory, names, size, old)
        remove_unreferenced(directory, generation_files(state.index))
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


def _start_new_generation(directory: Path, names: list[str], size: int, old: dict | None) -> Generation:
    index = new_generation(directory, names, size)
    state = Generation(directory, index)
    if old is not None:
        # Copy the rows an earlier cache (another name list, same size) already decoded.
        with contextlib.suppress(OSError, ValueError, KeyError):
            prev = Generation(directory, old)
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
    write_index(directory, index)
    return state


def _fill(
    state: Generation,
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
            stats = source_stats([paths[i] for i in finished])
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

    bar = tqdm(total=len(names), initial=report.reused, unit="img", desc=f"cache {size}px", dynamic_ncols=True) if progress else None
    rows_done = report.reused
    reasons = report._reasons

    def commit(results: list[RowResult]) -> None:
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
                commit(decode_chunk(task))
        else:
            # Forked workers start with the decoder's modules loaded (decode imports them at the top).
            with ProcessPoolExecutor(workers, initializer=init_worker, initargs=(os.getpid(),)) as pool:
                pending = set()
                try:
                    for task in tasks:
                        pending.add(pool.submit(decode_chunk, task))
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


def _finish(state: Generation, names: list[str], located: dict[str, Path], on_bad_image: str, report: CacheReport) -> None:
    """Record the bad images' reasons and the complete flag in the index (the statuses and source stats stay in the arrays)."""
    done = np.asarray(state.done)
    report.cached = int((done == OK).sum())
    bad_rows = np.flatnonzero((done == MISSING) | (done == UNREADABLE))
    report.bad = {}
    for r in bad_rows:
        name = names[r]
        kind = STATUS_NAMES[int(done[r])]
        path = located.get(name)
        detail = report._reasons.get(int(r)) or ("not found under the image folders" if path is None else str(path))
        report.bad[name] = f"{kind}: {detail}"
    all_done = bool((done != TODO).all())
    complete = all_done and (not report.bad or on_bad_image == "skip")
    index = {**state.index, "complete": complete, "bad": report.bad}
    state.images.flush()
    write_index(state.directory, index)
    state.index = index
    report.complete = complete


def _bad_message(report: CacheReport, limit: int = 20) -> str:
    lines = [f"{len(report.bad):,} of {report.total:,} images could not be cached ({len(report.missing):,} missing, "
             f"{len(report.unreadable):,} unreadable); the other {report.cached:,} are cached in {report.path}:"]  # fmt: skip
    for name, reason in list(report.bad.items())[:limit]:
        lines.append(f"  {name}: {reason}")
    if len(report.bad) > limit:
        lines.append(f"  ... and {len(report.bad) - limit:,} more")
    lines.append("Fix or re-download them and run again (only they are decoded), or pass --skip_bad (data.images.on_bad: skip when training) to leave them out.")
    return "\n".join(lines)
