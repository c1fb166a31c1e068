"""Hostile image folders: every unreadable entry is named (default) or skipped, counted and reported (skip),
in fit (the DataModule), ``data prepare`` (the uint8 cache) and ``predict`` on files; the listing never crashes."""

from __future__ import annotations

import builtins
import os
import re
import shutil
import struct
import zlib
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import pytest
import torch

import cxr_lightning.data.images as images_module
from cxr_lightning.checkpoint import DataSpec
from cxr_lightning.data import ChestXrayDataModule
from cxr_lightning.data.cache import decode_resized, open_cache
from cxr_lightning.data.commands import main as data_main
from cxr_lightning.data.dataset import has_images, index_images
from cxr_lightning.data.images import ImageDecodeError, load_grey
from cxr_lightning.inference.inputs import resolve_inputs
from cxr_lightning.inference.predictor import Predictor, skipped_csv_path
from cxr_lightning.models import BaselineCNN


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def with_claimed_size(png: bytes, width: int, height: int) -> bytes:
    """``png`` whose IHDR claims ``width`` x ``height`` (the pixel data stays tiny): a decompression bomb's header."""
    ihdr = png[16:29]
    return png[:8] + png_chunk(b"IHDR", struct.pack(">II", width, height) + ihdr[8:]) + png[33:]


def refuse_reading(monkeypatch, path: Path) -> None:
    """``open(path)`` raises PermissionError in the decoders, as chmod 000 does for a user who is not root."""
    path.chmod(0)
    if os.geteuid() != 0:
        return
    target = str(path)

    def guarded_open(file, *args, **kwargs):
        if str(file) == target:
            raise PermissionError(13, "Permission denied", target)
        return builtins.open(file, *args, **kwargs)

    monkeypatch.setattr(images_module, "open", guarded_open, raising=False)


@pytest.fixture
def hostile_root(synthetic_root, tmp_path, monkeypatch):
    """The synthetic dataset with one image of each hostile kind; ``victims`` maps its name to the reason expected.

    ``linked`` is an image replaced by a symbolic link to the real file elsewhere: it must load.
    """
    root = tmp_path / "hostile"
    shutil.copytree(synthetic_root, root)
    images = root / "images"
    names = (root / "train_val_list.txt").read_text().split()
    good = (images / names[20]).read_bytes()
    kinds = [
        "empty",
        "truncated",
        "not an image",
        "bomb",
        "too large",
        "link loop",
        "directory",
        "broken link",
        "fifo",
        "permission",
    ]
    victims = dict(zip(kinds, names[: len(kinds)]))
    expected = {
        "empty": r"empty file \(0 bytes\)",
        "truncated": r"cannot decode image",
        "not an image": r"cannot decode image",
        "bomb": r"image too large to decode \(Pillow refuses it",
        "too large": r"image too large to decode \(9000x9000",
        "link loop": r"symbolic link loop",
        "directory": r"a directory, not an image file",
        "broken link": r"broken symbolic link",
        "fifo": r"not a regular file",
        "permission": r"permission denied",
    }
    for name in victims.values():
        (images / name).unlink()
    (images / victims["empty"]).write_bytes(b"")
    (images / victims["truncated"]).write_bytes(good[:100])
    (images / victims["not an image"]).write_text("not a png")
    (images / victims["bomb"]).write_bytes(with_claimed_size(good, 100_000, 100_000))  # > 2x Pillow's limit
    (images / victims["too large"]).write_bytes(with_claimed_size(good, 9000, 9000))  # under Pillow's, over ours
    (images / victims["link loop"]).symlink_to(victims["link loop"])
    (images / victims["directory"]).mkdir()
    (images / victims["broken link"]).symlink_to(root / "nowhere.png")
    os.mkfifo(images / victims["fifo"])
    (images / victims["permission"]).write_bytes(good)
    refuse_reading(monkeypatch, images / victims["permission"])
    (images / "stray_loop").symlink_to("stray_loop")  # no CSV row names it: only the listing meets it
    linked = names[len(kinds)]
    elsewhere = root / "elsewhere"
    elsewhere.mkdir()
    (images / linked).rename(elsewhere / linked)
    (images / linked).symlink_to(elsewhere / linked)
    return root, {name: expected[kind] for kind, name in victims.items()}, linked


def datamodule(root, on_bad: str = "error", num_workers: int = 0):
    return ChestXrayDataModule(data_root=root, split={"name": "official", "val_fraction": 0.25}, images={"size": 32, "on_bad": on_bad},
                               loading={"batch_size": 8, "num_workers": num_workers})  # fmt: skip


def test_listing_keeps_every_entry_and_links_to_files_work(hostile_root):
    root, victims, linked = hostile_root
    located = index_images(root)  # the folder listing met two link loops and does not raise
    assert set(victims) | {linked, "stray_loop"} <= set(located)
    assert has_images(root)
    assert torch.equal(load_grey(located[linked]), load_grey(root / "elsewhere" / linked))
    for name, reason in victims.items():
        with pytest.raises(ImageDecodeError, match=rf"{re.escape(name)}: {reason}"):
            load_grey(located[name])


def test_default_policy_names_each_file_in_one_line_with_what_to_do(hostile_root):
    root, victims, linked = hostile_root
    dm = datamodule(root)
    where = {Path(p).name: (dm.dataset(part), i) for part in ("train", "val") for i, p in enumerate(dm.dataset(part).paths)}
    assert set(victims) <= set(where)  # present, not "missing": each is read and named
    for name, reason in victims.items():
        dataset, index = where[name]
        with pytest.raises(ImageDecodeError) as caught:
            dataset[index]
        message = str(caught.value)
        assert re.search(rf"{re.escape(name)}: {reason}", message) and "--data.images.on_bad skip" in message
        assert "\n" not in message
    dataset, index = where[linked]
    assert dataset[index]["image"].shape == (3, 32, 32)


def test_skip_policy_skips_counts_and_reports_each_kind(hostile_root):
    root, victims, linked = hostile_root
    dm = datamodule(root, on_bad="skip", num_workers=2)
    dm.setup("fit")
    parts = {part: {Path(p).name for p in dm.dataset(part).paths.tolist()} for part in ("train", "val")}
    skipped = {"train": [], "val": []}
    for part, loader in (("train", dm.train_dataloader()), ("val", dm.val_dataloader())):
        for batch in loader:
            skipped[part] += batch["skipped"]
            assert linked not in batch["skipped"]
    for part in ("train", "val"):
        assert sorted(skipped[part]) == sorted(n for n in victims if n in parts[part])
    assert sorted(skipped["train"] + skipped["val"]) == sorted(victims)

    model = BaselineCNN(channels=(8, 8, 8, 8, 8), label_names=dm.label_names)
    trainer = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False, accelerator="cpu",
                        num_sanity_val_steps=0)  # fmt: skip
    with pytest.warns(UserWarning, match=r"unreadable images skipped"):
        trainer.fit(model, datamodule=dm)
    assert sorted(model.skipped_images["train"]) == sorted(skipped["train"])
    assert sorted(model.skipped_images["val"]) == sorted(skipped["val"])
    assert trainer.callback_metrics["train/skipped_images"].item() == len(skipped["train"])


def test_data_prepare_names_each_file_and_skip_bad_records_them(hostile_root, capsys):
    root, victims, linked = hostile_root
    argv = ["prepare", "--root", str(root), "--size", "16", "--workers", "2", "--no-progress"]
    assert data_main(argv) == 1
    err = capsys.readouterr().err
    assert f"{len(victims)} of 160 images could not be cached" in err and "--skip_bad" in err
    for name, reason in victims.items():
        assert re.search(rf"{re.escape(name)}: unreadable: .*{re.escape(name)}: {reason}", err), name
    assert data_main(argv + ["--skip-bad"]) == 0
    out = capsys.readouterr().out
    assert f"skipped {len(victims)} bad image(s)" in out and f"{len(victims)} unreadable" in out
    for name, reason in victims.items():
        assert re.search(rf"  {re.escape(name)}: unreadable: .*{reason}", out), name
    cache = open_cache(root, 16)
    assert set(cache.bad) == set(victims) and len(cache.names) == 160
    row = int(cache.rows([linked])[0])
    np.testing.assert_array_equal(cache.array[row], decode_resized(root / "elsewhere" / linked, 16))


def test_predict_lists_each_kind_in_skipped_csv_with_its_reason(hostile_root, synthetic_root, tmp_path):
    root, victims, linked = hostile_root
    clean = datamodule(synthetic_root)
    clean.setup("fit")
    spec = DataSpec(label_names=list(clean.label_names), metadata_encoder=clean.encoder, image_size=32, image_channels=clean.options.images.channels,
                    normalization=clean.options.images.normalization)  # fmt: skip
    model = BaselineCNN(channels=(8, 8, 8, 8, 8), metadata_dim=clean.metadata_dim, label_names=clean.label_names)
    predictor = Predictor.from_model(model, spec, batch_size=32, num_workers=2)
    out = tmp_path / "preds" / "preds.csv"
    frame = predictor.predict_files([root / "images"], out_csv=out, progress=False)
    assert len(frame) == 160 - len(victims) and linked in set(frame["image"])
    listed = pd.read_csv(skipped_csv_path(out))
    reasons = {Path(p).name: r for p, r in zip(listed["path"], listed["reason"])}
    assert set(reasons) == set(victims)
    for name, reason in victims.items():
        assert re.match(reason, reasons[name]), (name, reasons[name])


def test_list_file_with_bom_and_blank_lines_gives_real_line_numbers(synthetic_root, tmp_path):
    images = synthetic_root / "images"
    names = sorted(p.name for p in images.glob("*.png"))[:2]
    (tmp_path / "loop.png").symlink_to("loop.png")
    listing = tmp_path / "list.txt"
    text = f"{images / names[0]}\n\n# a comment\n{tmp_path / 'absent.png'}\n\n\nloop.png\n{images / names[1]}\n"
    listing.write_bytes("\ufeff".encode() + text.encode("utf-8"))  # a BOM, as Notepad writes
    paths, problems = resolve_inputs(listing)
    assert [p.name for p in paths] == names  # the BOM is not part of the first path
    assert problems == [
        {"path": str(tmp_path / "absent.png"), "reason": f"file not found (line 4 of {listing})"},
        {
            "path": str(tmp_path / "loop.png"),
            "reason": f"symbolic link loop (Too many levels of symbolic links) (line 7 of {listing})",
        },
    ]
    latin = tmp_path / "latin.txt"
    latin.write_bytes("caf\xe9.png\n".encode("latin-1"))
    paths, problems = resolve_inputs(latin)
    assert paths == [] and problems[0]["path"] == str(latin) and "not UTF-8" in problems[0]["reason"]


def test_a_folder_named_like_an_image_given_to_predict_says_so(tmp_path):
    (tmp_path / "00000001_000.png").mkdir()
    paths, problems = resolve_inputs(tmp_path / "00000001_000.png")
    assert paths == [] and problems == [{"path": str(tmp_path / "00000001_000.png"),
                                         "reason": "a directory, not an image file, and it holds no PNG/JPEG/DICOM file"}]  # fmt: skip


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a chmod 000 file; the monkeypatched variant covers root")
def test_chmod_000_is_permission_denied_for_a_user(tmp_path, synthetic_root):
    path = tmp_path / "locked.png"
    shutil.copy(next((synthetic_root / "images").glob("*.png")), path)
    path.chmod(0)
    with pytest.raises(ImageDecodeError, match=r"locked\.png: permission denied"):
        load_grey(path)
