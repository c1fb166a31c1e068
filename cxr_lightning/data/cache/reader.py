"""Reading a complete cache: :func:`open_cache` and :class:`ImageCache` (rows by name, staleness check)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from cxr_lightning.data.cache.format import OK, default_cache_dir, read_index, source_stats
from cxr_lightning.data.dataset import index_images


class CacheLookupError(LookupError):
    """Names that the cache does not hold (absent or recorded as bad)."""

    def __str__(self) -> str:  # LookupError would repr() the message
        return str(self.args[0]) if self.args else ""


class ImageCache:
    """A complete cache opened read-only: ``array`` is the ``(N, S, S)`` uint8 memmap.

    Serves the rows ``done-<gen>.npy`` marks cached; ``bad`` (name -> reason) comes from the index.
    Pickles without the array (DataLoader workers under ``spawn``/``forkserver`` reopen the
    memmap instead of receiving a copy).
    """

    def __init__(self, directory: str | Path, index: dict):
        self.path = Path(directory)
        self.size = int(index["size"])
        self.names = np.asarray(index["names"], dtype=np.str_)
        self.bad: dict[str, str] = dict(index.get("bad", {}))
        self._array_file = self.path / index["array"]
        self._sources_file = self.path / index["sources"]
        n = len(self.names)
        done = np.load(self.path / index["done"], mmap_mode="r")
        if done.shape != (n,):
            raise ValueError(f"{self.path / index['done']}: shape {done.shape} disagrees with its index")
        self._cached = np.asarray(done == OK)  # a row left unfinished is never served, whatever the index says
        if np.load(self._sources_file, mmap_mode="r").shape != (n, 2):
            raise ValueError(f"{self._sources_file}: disagrees with its index")
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
            names = self.names.tolist()
            self._row = {names[i]: int(i) for i in np.flatnonzero(self._cached)}
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
        recorded = np.load(self._sources_file)
        located = index_images(root) if located is None else located
        names = self.names.tolist()
        now = source_stats([str(located[n]) if n in located else None for n in names])
        good = self._cached & np.asarray([n not in self.bad for n in names], dtype=bool)
        if ignore_missing:
            good &= now[:, 0] >= 0
        return [names[i] for i in np.flatnonzero(good & (now != recorded).any(axis=1))]


def open_cache(root: str | Path | None, size: int, path: str | Path | None = None) -> ImageCache | None:
    """The complete cache at ``path`` (default ``root/cache/<size>``) built at ``size``, else ``None``."""
    directory = Path(path) if path is not None else default_cache_dir(root, size)
    index = read_index(directory)
    if index is None or not index.get("complete") or int(index.get("size", -1)) != int(size):
        return None
    try:
        return ImageCache(directory, index)
    except (OSError, ValueError, KeyError):
        return None
