"""The uint8 image cache: exact pixels, resume, bad images, lookup and the batched dataset."""

from __future__ import annotations

import argparse
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision.transforms.v2 import functional as F

from cxr_lightning.cli.parser import CommandParser
from cxr_lightning.data.cache import (
    CacheBuildError,
    CachedChestXrayDataset,
    CacheLookupError,
    build_cache,
    cached_collate,
    open_cache,
)
from cxr_lightning.data.cache import decode as cache_decode
from cxr_lightning.data.cache import format as cache_format
from cxr_lightning.data.cache.prepare import add_prepare_arguments, run_prepare
from cxr_lightning.data.dataset import ChestXrayDataset, DataNotFoundError
from cxr_lightning.data.gpu_augment import BatchAugment
from cxr_lightning.data.images import load_grey
from cxr_lightning.data.transforms import Augmentation, ImageTransform

NIH_SAMPLE = Path(__file__).parent / "data" / "nih_sample" / "images"
REPO = Path(__file__).resolve().parents[1]


def expected_pixels(path: Path, size: int) -> np.ndarray:
    """The per-sample path's resize of the float image, rounded to uint8."""
    grey = load_grey(path)
    if grey.shape[-2:] != (size, size):
        grey = F.resize(grey, [size, size], antialias=True)
    return torch.round(255 * grey).clamp(0, 255).to(torch.uint8)[0].numpy()


def make_synthetic_pngs(folder: Path, count: int = 0, side: int = 96) -> list[str]:
    """PNGs of every mode the loader handles (odd, non-square sizes) plus ``count`` grey ones."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    names = []

    def save(name: str, image: Image.Image) -> None:
        image.save(folder / name)
        names.append(name)

    grey = (rng.random((70, 90)) * 255).astype(np.uint8)
    save("synth_L.png", Image.fromarray(grey, "L"))
    rgba = np.dstack([grey, np.roll(grey, 5, 1), 255 - grey, np.full_like(grey, 255)])
    save("synth_RGBA.png", Image.fromarray(rgba, "RGBA"))  # unequal colour channels: luma
    save("synth_RGB.png", Image.fromarray(rgba[..., :3], "RGB"))
    save("synth_LA.png", Image.fromarray(np.dstack([grey, np.full_like(grey, 200)])))
    save("synth_P.png", Image.fromarray(grey, "L").convert("P"))
    save("synth_1.png", Image.fromarray(grey > 128))
    save("synth_I16.png", Image.fromarray((rng.random((61, 47)) * 65535).astype(np.uint16)))
    save("synth_exact.png", Image.fromarray((rng.random((32, 32)) * 255).astype(np.uint8), "L"))  # already 32x32
    for i in range(count):
        save(f"grey_{i:03d}.png", Image.fromarray((rng.random((side, side)) * 255).astype(np.uint8), "L"))
    return names


@pytest.fixture
def mixed_root(tmp_path: Path) -> tuple[Path, list[str]]:
    """The five real NIH sample images (2 of them RGBA) and synthetic PNGs of every mode."""
    root = tmp_path / "data"
    shutil.copytree(NIH_SAMPLE, root / "images", ignore=shutil.ignore_patterns("MD5SUMS"))
    real = sorted(p.name for p in (root / "images").glob("*.png"))
    return root, real + make_synthetic_pngs(root / "images")


class DecodeCounter:
    """Counts ``decode_resized`` calls made in this process (``workers=0``)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch):
        self.names: list[str] = []
        original = cache_decode.decode_resized

        def counted(path, size):
            self.names.append(Path(path).name)
            return original(path, size)

        monkeypatch.setattr(cache_decode, "decode_resized", counted)


def test_cached_pixels_equal_the_per_sample_resize(mixed_root):
    root, names = mixed_root
    report = build_cache(root, names, 32, workers=2, progress=False)
    assert report.complete and report.cached == report.decoded == len(names) and not report.bad
    cache = open_cache(root, 32)
    assert cache is not None and cache.array.shape == (len(names), 32, 32) and cache.array.dtype == np.uint8
    assert cache.path == root / "cache" / "32"
    for name, row in zip(names, cache.rows(names)):
        np.testing.assert_array_equal(cache.array[row], expected_pixels(root / "images" / name, 32), err_msg=name)
    # The real RGBA files decode like their 'L' twins would: equal channels, opaque alpha.
    assert Image.open(root / "images" / "00000100_000.png").mode == "RGBA"
    # self-describing: a plain np.load of the .npy gives the array, the index names each row
    index = json.loads((cache.path / "index.json").read_text())
    assert index["names"] == names and index["size"] == 32 and index["complete"] is True
    stat = os.stat(root / "images" / names[0])
    assert tuple(np.load(cache.path / index["sources"])[0]) == (stat.st_size, stat.st_mtime_ns)
    np.testing.assert_array_equal(np.load(cache.path / index["array"]), np.asarray(cache.array))


def test_in_process_build_matches_workers_and_real_image_at_224(tmp_path):
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    shutil.copy(NIH_SAMPLE / "00002578_000.png", root / "images")  # RGBA, 1024x1024
    build_cache(root, ["00002578_000.png"], 224, workers=0, progress=False)
    cache = open_cache(root, 224)
    np.testing.assert_array_equal(cache.array[0], expected_pixels(root / "images" / "00002578_000.png", 224))


def test_open_cache_is_none_for_absent_incomplete_or_other_size(mixed_root):
    root, names = mixed_root
    assert open_cache(root, 32) is None
    build_cache(root, names[:3], 32, workers=0, progress=False)
    assert open_cache(root, 32) is not None
    assert open_cache(root, 64) is None
    # an index for another size copied into the 64 folder is not taken for a 64 cache
    shutil.copytree(root / "cache" / "32", root / "cache" / "64")
    assert open_cache(root, 64) is None
    # incomplete (interrupted) build
    with pytest.raises(RuntimeError, match="stop"):
        build_cache(root, names, 16, workers=0, progress=False, chunk_size=2, on_chunk=_stop_after(1))
    assert open_cache(root, 16) is None


def test_an_index_that_names_files_outside_its_folder_is_not_followed(mixed_root, monkeypatch):
    root, names = mixed_root
    build_cache(root, names[:3], 32, workers=0, progress=False)
    index_path = root / "cache" / "32" / "index.json"
    index = json.loads(index_path.read_text())
    outside = root / "outside.npy"
    shutil.copy(root / "cache" / "32" / index["array"], outside)
    opened: list[str] = []
    real_load = np.load
    monkeypatch.setattr(np, "load", lambda file, *a, **k: opened.append(str(file)) or real_load(file, *a, **k))
    for name in ("../../outside.npy", str(outside)):
        index_path.write_text(json.dumps({**index, "array": name}))
        assert open_cache(root, 32) is None  # treated as no cache, never read
    assert not any("outside" in path for path in opened)


def _stop_after(chunks: int):
    calls = []

    def on_chunk(done: int, total: int) -> None:
        calls.append(done)
        if len(calls) >= chunks:
            raise RuntimeError("stop")

    return on_chunk


def test_interrupted_build_resumes_without_redoing_finished_rows(mixed_root, monkeypatch):
    root, names = mixed_root
    counter = DecodeCounter(monkeypatch)
    with pytest.raises(RuntimeError, match="stop"):
        build_cache(root, names, 24, workers=0, progress=False, chunk_size=3, on_chunk=_stop_after(2))
    first = list(counter.names)
    assert len(first) == 6
    index = json.loads((root / "cache" / "24" / "index.json").read_text())
    assert int((np.load(root / "cache" / "24" / index["done"]) == 1).sum()) == 6
    counter.names.clear()
    report = build_cache(root, names, 24, workers=0, progress=False, chunk_size=3)
    assert report.reused == 6 and report.decoded == len(names) - 6 and report.complete
    assert sorted(counter.names) == sorted(set(names) - set(first))  # nothing decoded twice
    cache = open_cache(root, 24)
    for name, row in zip(names, cache.rows(names)):
        np.testing.assert_array_equal(cache.array[row], expected_pixels(root / "images" / name, 24), err_msg=name)
    # a third run has nothing to do; a changed source file is decoded again
    counter.names.clear()
    assert build_cache(root, names, 24, workers=0, progress=False).decoded == 0 and counter.names == []
    assert open_cache(root, 24).changed_sources(root) == []
    Image.fromarray(np.zeros((40, 40), np.uint8)).save(root / "images" / "synth_L.png")
    assert open_cache(root, 24).changed_sources(root) == ["synth_L.png"]
    report = build_cache(root, names, 24, workers=0, progress=False)
    assert counter.names == ["synth_L.png"] and report.decoded == 1
    assert not open_cache(root, 24).array[names.index("synth_L.png")].any()


def test_a_killed_build_resumes(tmp_path, monkeypatch):
    """SIGKILL a builder (2 worker processes) mid-way; the next run only decodes the rows it had not committed."""
    root = tmp_path / "data"
    names = make_synthetic_pngs(root / "images", count=40, side=256)
    script = textwrap.dedent(
        f"""
        import time
        from cxr_lightning.data import cache
        from cxr_lightning.data.cache import decode
        original = decode.decode_resized
        def slow(path, size):
            time.sleep(0.05)
            return original(path, size)
        decode.decode_resized = slow
        cache.build_cache({str(root)!r}, {names!r}, 32, workers=2, chunk_size=2, progress=False)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, start_new_session=True)
    try:
        folder = root / "cache" / "32"
        deadline = time.monotonic() + 60
        done_before = 0
        while time.monotonic() < deadline and done_before < 10:
            time.sleep(0.05)
            index = cache_format.read_index(folder)
            if index is not None:
                done_before = int((np.load(folder / index["done"]) == 1).sum())
        assert proc.poll() is None, "the build finished before it could be killed"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the builder and its workers (its own session)
        proc.wait()
    assert 10 <= done_before < len(names)
    counter = DecodeCounter(monkeypatch)
    report = build_cache(root, names, 32, workers=0, progress=False)
    assert report.reused >= done_before and report.decoded == len(names) - report.reused == len(counter.names)
    assert report.complete
    cache = open_cache(root, 32)
    for name, row in zip(names, cache.rows(names)):
        np.testing.assert_array_equal(cache.array[row], expected_pixels(root / "images" / name, 32), err_msg=name)


def _break_files(images: Path) -> dict[str, str]:
    (images / "empty.png").write_bytes(b"")
    data = (images / "synth_L.png").read_bytes()
    (images / "truncated.png").write_bytes(data[: len(data) // 2])
    (images / "text.png").write_text("not an image")
    return {"empty.png": "unreadable", "truncated.png": "unreadable", "text.png": "unreadable", "absent.png": "missing"}


def test_missing_and_corrupt_images_are_named_after_the_rest_is_cached(mixed_root, monkeypatch):
    root, names = mixed_root
    broken = _break_files(root / "images")
    listed = names + list(broken)
    with pytest.raises(CacheBuildError) as info:
        build_cache(root, listed, 16, workers=2, progress=False)
    message = str(info.value)
    for name, kind in broken.items():
        assert name in message and info.value.bad[name].startswith(kind)
    assert "4 of " in message and "empty file" in message
    assert open_cache(root, 16) is None  # incomplete
    # Fixing the files and running again decodes only them.
    for name in broken:
        shutil.copy(root / "images" / "synth_L.png", root / "images" / name)
    counter = DecodeCounter(monkeypatch)
    report = build_cache(root, listed, 16, workers=0, progress=False)
    assert sorted(counter.names) == sorted(broken) and report.complete and report.cached == len(listed)


def test_a_root_without_images_fails_before_anything_is_allocated(tmp_path, capsys):
    (tmp_path / "nih" / "images").mkdir(parents=True)
    with pytest.raises(DataNotFoundError, match=r"no images under .*nih/images"):
        build_cache(tmp_path / "nih", ["a.png", "b.png"], 224, workers=0, progress=False)
    assert not (tmp_path / "nih" / "cache").exists()
    parser = CommandParser()
    add_prepare_arguments(parser)
    assert run_prepare(parser.parse_args(["--root", str(tmp_path / "nih"), "--size", "224", "--no-progress"])) == 1
    assert "cxr-lightning data download --data_root" in capsys.readouterr().err
    assert not (tmp_path / "nih" / "cache").exists()


def test_skip_records_bad_images_in_the_report_and_index(mixed_root):
    root, names = mixed_root
    broken = _break_files(root / "images")
    report = build_cache(root, names + list(broken), 16, workers=0, progress=False, on_bad_image="skip")
    assert report.complete and report.cached == len(names) and set(report.bad) == set(broken)
    assert sorted(report.missing) == ["absent.png"] and len(report.unreadable) == 3
    assert "INCOMPLETE" not in report.summary() and "1 missing, 3 unreadable" in report.summary()
    cache = open_cache(root, 16)
    assert cache is not None and set(cache.bad) == set(broken)
    index = json.loads((cache.path / "index.json").read_text())
    assert set(index["bad"]) == set(broken) and np.load(cache.path / index["done"])[len(names)] == cache_format.UNREADABLE
    assert len(cache.rows(names)) == len(names)
    with pytest.raises(CacheLookupError, match=r"truncated\.png") as info:
        cache.rows([names[0], "truncated.png", "never-listed.png"])
    assert "never-listed.png" in str(info.value) and "recorded as bad" in str(info.value)
    assert cache.missing(["truncated.png", names[1]]) == ["truncated.png"]


def test_a_cache_for_other_names_is_kept_or_reused(mixed_root, monkeypatch):
    root, names = mixed_root
    build_cache(root, names, 16, workers=0, progress=False)
    counter = DecodeCounter(monkeypatch)
    # a subset of a complete cache: nothing to do, the cache keeps all rows
    assert build_cache(root, names[:4], 16, workers=0, progress=False).decoded == 0
    assert len(open_cache(root, 16)) == len(names)
    # another list: a new array; shared rows are copied, only new images decoded, old files removed
    extra = make_synthetic_pngs(root / "more" / "images", count=2)[-2:]
    for name in extra:
        shutil.copy(root / "more" / "images" / name, root / "images" / name)
    report = build_cache(root, names[2:] + extra, 16, workers=0, progress=False)
    assert sorted(counter.names) == sorted(extra) and report.reused == len(names) - 2
    cache = open_cache(root, 16)
    assert cache.names.tolist() == names[2:] + extra
    assert len(list(cache.path.glob("images-*.npy"))) == 1
    for name, row in zip(cache.names, cache.rows(cache.names)):
        np.testing.assert_array_equal(cache.array[row], expected_pixels(root / "images" / name, 16))


def test_duplicates_and_bad_arguments(mixed_root):
    root, names = mixed_root
    with pytest.raises(ValueError, match="duplicated"):
        build_cache(root, names + names[:1], 16, workers=0, progress=False)
    with pytest.raises(ValueError, match="no images"):
        build_cache(root, [], 16, workers=0, progress=False)
    with pytest.raises(ValueError, match="on_bad_image"):
        build_cache(root, names, 16, on_bad_image="ignore")


# ----------------------------------------------------------------------------------------------
# the index holds each fact once; older and foreign indexes are read right or not at all
# ----------------------------------------------------------------------------------------------
INDEX_KEYS = {"version", "size", "array", "done", "sources", "complete", "names", "bad"}


def _index_with_copies(folder: Path) -> dict:
    """The index as the writer before this format change left it: the arrays' facts copied into the JSON."""
    index = json.loads((folder / "index.json").read_text())
    done, sources = np.load(folder / index["done"]), np.load(folder / index["sources"])
    names = {1: "ok", 2: "missing", 3: "unreadable"}
    return {
        **index,
        "shape": [len(index["names"]), index["size"], index["size"]],
        "dtype": "uint8",
        "counts": {"cached": int((done == 1).sum()), "missing": int((done == 2).sum()), "unreadable": int((done == 3).sum())},
        "status": [names.get(int(s), "todo") for s in done],
        "source_size": sources[:, 0].tolist(),
        "source_mtime_ns": sources[:, 1].tolist(),
    }


def test_the_index_keeps_no_copy_of_what_the_arrays_hold(mixed_root):
    root, names = mixed_root
    broken = _break_files(root / "images")
    build_cache(root, names + list(broken), 16, workers=0, progress=False, on_bad_image="skip")
    folder = root / "cache" / "16"
    index = json.loads((folder / "index.json").read_text())
    assert set(index) == INDEX_KEYS
    done, sources = np.load(folder / index["done"]), np.load(folder / index["sources"])
    assert {n for n, s in zip(index["names"], done) if s != cache_format.OK} == set(broken) == set(index["bad"])
    for name, recorded in zip(names, sources):
        stat = os.stat(root / "images" / name)
        assert tuple(recorded) == (stat.st_size, stat.st_mtime_ns), name


def test_a_cache_whose_index_still_copies_the_arrays_is_read_and_resumed_correctly(mixed_root, monkeypatch):
    """Caches built before the index stopped copying the arrays (same version) read as they are; a rebuild drops the copies."""
    root, names = mixed_root
    broken = _break_files(root / "images")
    build_cache(root, names + list(broken), 16, workers=0, progress=False, on_bad_image="skip")
    folder = root / "cache" / "16"
    (folder / "index.json").write_text(json.dumps(_index_with_copies(folder)))
    cache = open_cache(root, 16)
    assert cache is not None and set(cache.bad) == set(broken) and cache.missing(list(broken)) == list(broken)
    for name, row in zip(names, cache.rows(names)):
        np.testing.assert_array_equal(cache.array[row], expected_pixels(root / "images" / name, 16), err_msg=name)
    assert cache.changed_sources(root) == []
    Image.fromarray(np.full((30, 30), 255, np.uint8)).save(root / "images" / "synth_L.png")
    assert open_cache(root, 16).changed_sources(root) == ["synth_L.png"]
    counter = DecodeCounter(monkeypatch)
    report = build_cache(root, names + list(broken), 16, workers=0, progress=False, on_bad_image="skip")
    # the changed image and the unreadable ones are decoded again (absent.png has no file to decode)
    assert sorted(counter.names) == sorted(["synth_L.png", "empty.png", "truncated.png", "text.png"])
    assert report.complete and set(json.loads((folder / "index.json").read_text())) == INDEX_KEYS  # no stale copies left
    cache = open_cache(root, 16)
    assert cache.changed_sources(root) == [] and (cache.array[cache.rows(["synth_L.png"])[0]] == 255).all()


@pytest.mark.parametrize("version", [0, 2, "1", None])
def test_an_index_of_another_version_is_no_cache_and_is_rebuilt(mixed_root, monkeypatch, version):
    root, names = mixed_root
    build_cache(root, names, 16, workers=0, progress=False)
    folder = root / "cache" / "16"
    index = json.loads((folder / "index.json").read_text())
    old_array = index["array"]
    (folder / "index.json").write_text(json.dumps({**index, "version": version}))
    assert open_cache(root, 16) is None
    counter = DecodeCounter(monkeypatch)
    report = build_cache(root, names, 16, workers=0, progress=False)
    assert report.decoded == len(names) and sorted(counter.names) == sorted(names)  # decoded from the PNGs, nothing trusted
    assert not (folder / old_array).exists()
    cache = open_cache(root, 16)
    for name, row in zip(names, cache.rows(names)):
        np.testing.assert_array_equal(cache.array[row], expected_pixels(root / "images" / name, 16), err_msg=name)


def test_a_row_an_interrupted_rebuild_left_unreadable_is_not_served(mixed_root):
    """A complete cache whose image turned unreadable, rebuilt and stopped before the index was rewritten:
    the index still says complete with no bad image, but done marks the row, so its old pixels are not served."""
    root, names = mixed_root
    build_cache(root, names, 16, workers=0, progress=False)
    (root / "images" / "synth_L.png").write_bytes(b"not a png any more")
    with pytest.raises(RuntimeError, match="stop"):
        build_cache(root, names, 16, workers=0, progress=False, on_chunk=_stop_after(1))
    index = json.loads((root / "cache" / "16" / "index.json").read_text())
    assert index["complete"] is True and index["bad"] == {}  # what the index alone would claim
    cache = open_cache(root, 16)
    assert "synth_L.png" not in cache and cache.missing(names) == ["synth_L.png"]
    with pytest.raises(CacheLookupError, match=r"synth_L\.png"):
        cache.rows(names)
    assert cache.changed_sources(root) == []
    others = [n for n in names if n != "synth_L.png"]
    for name, row in zip(others, cache.rows(others)):
        np.testing.assert_array_equal(cache.array[row], expected_pixels(root / "images" / name, 16), err_msg=name)


def sample_tables(names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Labels and metadata that encode each sample's position, to check the batch order."""
    n = len(names)
    labels = (np.arange(n)[:, None] >> np.arange(4)[None, :]) & 1
    metadata = np.stack([np.arange(n), np.arange(n) * 2.0, -np.arange(n)], axis=1)
    return labels.astype(np.float32), metadata.astype(np.float32)


@pytest.mark.parametrize(("workers", "context"), [(0, None), (2, None), (1, "forkserver")])
def test_dataset_batches_keep_names_labels_and_metadata_together(mixed_root, workers, context):
    root, names = mixed_root
    build_cache(root, names, 16, workers=0, progress=False)
    cache = open_cache(root, 16)
    part = names[::-1][:9]  # another order than the cache's rows
    labels, metadata = sample_tables(part)
    dataset = CachedChestXrayDataset(cache, part, labels, metadata)
    sample = dataset[3]
    assert sample["image"].shape == (1, 16, 16) and sample["image"].dtype == torch.uint8
    assert sample["name"] == part[3] and sample["index"] == 3 and sample["metadata"][0] == 3
    for shuffle in (False, True):
        # forkserver: workers receive the dataset pickled; the cache reopens its memmap there
        loader = DataLoader(dataset, batch_size=4, shuffle=shuffle, num_workers=workers, collate_fn=cached_collate,
                            multiprocessing_context=context, persistent_workers=context is not None)  # fmt: skip
        seen = []
        for batch in loader:
            assert set(batch) == {"image", "metadata", "labels", "name", "index", "skipped"} and batch["skipped"] == []
            assert batch["image"].dtype == torch.uint8 and batch["image"].shape[1:] == (1, 16, 16)
            assert batch["labels"].dtype == torch.float32 and batch["index"].dtype == torch.int64
            for image, meta, lab, name, index in zip(batch["image"], batch["metadata"], batch["labels"], batch["name"], batch["index"]):
                i = int(index)
                assert name == part[i] and meta.tolist() == metadata[i].tolist() and lab.tolist() == labels[i].tolist()
                assert torch.equal(image[0], torch.from_numpy(expected_pixels(root / "images" / name, 16)))
                seen.append(i)
        assert sorted(seen) == list(range(len(part)))
    # the per-sample path (no automatic batching of __getitems__) collates to the same batch
    batch = cached_collate([dataset[i] for i in (0, 1)])
    fast = cached_collate(dataset.__getitems__([0, 1]))
    order = fast["index"].argsort()
    assert torch.equal(batch["image"], fast["image"][order]) and batch["name"] == [fast["name"][i] for i in order]


@pytest.mark.parametrize(
    "augmentation", [Augmentation(), Augmentation(0, 0.1, 0), Augmentation(10, 0, 0.1), Augmentation(10, 0.1, 0.1, horizontal_flip=0.5)]
)
def test_cache_path_augments_each_sample_like_the_png_path(mixed_root, augmentation):
    """Same (seed, epoch, index) -> the same draws; on the device the result equals the PNG path's up to uint8 rounding."""
    root, names = mixed_root
    build_cache(root, names, 32, workers=0, progress=False)
    labels, metadata = sample_tables(names)
    cached = CachedChestXrayDataset(open_cache(root, 32), names, labels, metadata, seed=7, augmentation=augmentation)
    png = ChestXrayDataset([root / "images" / n for n in names], labels, metadata, ImageTransform(32, 1, "none", augmentation), seed=7)
    a = augmentation
    device_side = BatchAugment(
        a.rotation_degrees, a.brightness, a.contrast, channels=1, normalization="none", horizontal_flip=a.horizontal_flip
    )
    for epoch in (0, 3):
        cached.epoch.fill_(epoch)
        png.epoch.fill_(epoch)
        batch = cached_collate(cached.__getitems__(list(range(len(names)))[::-1]))
        assert batch["augment"].shape == (len(names), 5) and batch["augment"].dtype == torch.float32
        flips = batch["augment"][:, 4]  # the flip column: some samples mirrored, some not, when flips are on
        assert (0 < flips.sum() < len(names)) if a.horizontal_flip else not flips.any()
        out = device_side(batch["image"], params=batch["augment"])
        for image, index in zip(out, batch["index"].tolist()):
            expected = png[index]["image"]
            assert (image - expected).abs().max().item() <= 1.0 / 255, (epoch, names[index])
        # the per-sample fetch carries the same parameters
        assert torch.equal(cached[2]["augment"], batch["augment"][batch["index"].tolist().index(2)])
    cached.epoch.fill_(1)
    assert not torch.equal(cached_collate(cached.__getitems__([0, 1]))["augment"], batch["augment"][:2])
    # A repeated draw of image 2 (tagged 2 + N): same pixels and labels, its own augmentation,
    # equal to the PNG path's augmentation of the same draw.
    n = len(names)
    repeat = cached_collate(cached.__getitems__([2, 2 + n]))
    assert repeat["index"].tolist() == [2, 2] and torch.equal(repeat["image"][0], repeat["image"][1])
    assert not torch.equal(repeat["augment"][0], repeat["augment"][1])
    assert torch.equal(cached[2 + n]["augment"], repeat["augment"][1])
    png.epoch.fill_(1)
    out = device_side(repeat["image"], params=repeat["augment"])
    assert (out[1] - png[2 + n]["image"]).abs().max().item() <= 1.0 / 255


def test_dataset_within_a_batch_rows_are_read_in_sorted_order(mixed_root):
    root, names = mixed_root
    build_cache(root, names, 16, workers=0, progress=False)
    cache = open_cache(root, 16)
    labels, metadata = sample_tables(names)
    dataset = CachedChestXrayDataset(cache, names, labels, metadata)
    batch = cached_collate(dataset.__getitems__([5, 1, 3, 1]))
    assert batch["index"].tolist() == [1, 1, 3, 5] and batch["name"] == [names[1], names[1], names[3], names[5]]
    assert batch["metadata"][:, 0].tolist() == [1, 1, 3, 5]
    with pytest.raises(CacheLookupError, match="nope.png"):
        CachedChestXrayDataset(cache, ["nope.png"], labels[:1], metadata[:1])
    with pytest.raises(ValueError, match="differ in length"):
        CachedChestXrayDataset(cache, names, labels[:2], metadata)


def test_image_cache_pickles_without_its_array(mixed_root):
    root, names = mixed_root
    build_cache(root, names, 64, workers=0, progress=False)
    cache = open_cache(root, 64)
    blob = pickle.dumps(cache)
    assert len(blob) < cache.array.nbytes / 4
    again = pickle.loads(blob)
    np.testing.assert_array_equal(again.array, cache.array)
    assert isinstance(again.array, np.memmap)


def prepare_args(*argv: str) -> argparse.Namespace:
    parser = CommandParser()
    add_prepare_arguments(parser)
    return parser.parse_args(list(argv))


def test_prepare_command_caches_the_metadata_csv_images(real_sample_root, capsys):
    args = prepare_args("--root", str(real_sample_root), "--size", "16", "--workers", "0", "--no-progress")
    assert run_prepare(args) == 0
    out = capsys.readouterr().out
    assert "5 of 5 images cached at 16x16" in out
    cache = open_cache(real_sample_root, 16)
    assert sorted(cache.names) == sorted(p.name for p in (real_sample_root / "images").glob("*.png"))
    # a missing image fails the command by name, --skip-bad records it
    (real_sample_root / "images" / "00000211_000.png").unlink()
    args = prepare_args("--root", str(real_sample_root), "--size", "20", "--workers", "0", "--no-progress")
    assert run_prepare(args) == 1
    assert "00000211_000.png: missing" in capsys.readouterr().err
    args = prepare_args("--root", str(real_sample_root), "--size", "20", "--workers", "0", "--no-progress", "--skip-bad")
    assert run_prepare(args) == 0
    assert "skipped 1 bad image" in capsys.readouterr().out
    assert open_cache(real_sample_root, 20).bad.keys() == {"00000211_000.png"}


def test_prepare_command_split_parts(real_sample_root, capsys):
    args = prepare_args(
        "--root", str(real_sample_root), "--size", "8", "--workers", "0", "--no-progress",
        "--split", "patient", "--fractions", "0.6", "0.2", "0.2", "--seed", "0", "--parts", "val", "test",
    )  # fmt: skip
    assert run_prepare(args) == 0
    assert 0 < len(open_cache(real_sample_root, 8)) < 5
