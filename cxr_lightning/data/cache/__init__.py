"""A pre-decoded, pre-resized uint8 image cache: decode every PNG once, then train from one memmap.

Decoding a 1024x1024 NIH PNG costs about 10-20 ms of a core, so the per-sample PNG path tops out
at some tens of images per second per core. :func:`build_cache` decodes each listed image once
with the per-sample path's semantics (:func:`~cxr_lightning.data.cache.decode.decode_resized`)
into ONE ``(N, S, S)`` uint8 ``.npy`` file; training slices that memmap
(:class:`CachedChestXrayDataset`) and does the float work on the accelerator
(:mod:`cxr_lightning.data.gpu_augment`).

Layout, under ``root/cache/<size>/`` by default (:mod:`~cxr_lightning.data.cache.format`)::

    index.json          names (row = position), size, the generation's file names, complete flag,
                        and the reason each bad image was left out
    images-<gen>.npy    the (N, S, S) uint8 array (numpy.lib.format.open_memmap: self-describing)
    done-<gen>.npy      (N,) uint8 progress mask: 0 to do, 1 cached, 2 missing, 3 unreadable
    sources-<gen>.npy   (N, 2) int64 size and mtime_ns of each source file when it was decoded
    .lock               held (a POSIX lockf lock) while a build runs; a second builder waits

A build is resumable (:mod:`~cxr_lightning.data.cache.build`): a chunk's pixels are written and
flushed before its rows are marked done, so a killed build continues where it stopped; finished
rows whose source file changed (size or mtime) are decoded again. ``cxr-lightning data prepare``
is :mod:`~cxr_lightning.data.cache.prepare`.
"""

from cxr_lightning.data.cache.build import CacheBuildError, CacheReport, build_cache
from cxr_lightning.data.cache.dataset import CachedBatch, CachedChestXrayDataset, cached_collate
from cxr_lightning.data.cache.decode import decode_resized
from cxr_lightning.data.cache.format import default_cache_dir
from cxr_lightning.data.cache.reader import CacheLookupError, ImageCache, open_cache

__all__ = [
    "CacheBuildError",
    "CacheLookupError",
    "CacheReport",
    "CachedBatch",
    "CachedChestXrayDataset",
    "ImageCache",
    "build_cache",
    "cached_collate",
    "decode_resized",
    "default_cache_dir",
    "open_cache",
]
