"""Bad images: an error that names the file, or (on_bad_image=skip) a counted, reported skip."""

from __future__ import annotations

import shutil

import lightning as L
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from cxr_lightning.data import ChestXrayDataModule
from cxr_lightning.data.images import ImageDecodeError
from cxr_lightning.data.labels import LABELS
from cxr_lightning.models import BaselineCNN


@pytest.fixture
def damaged_root(synthetic_root, tmp_path):
    """The synthetic dataset with one missing, one empty, one truncated and one non-image file."""
    root = tmp_path / "damaged"
    shutil.copytree(synthetic_root, root)
    train_val = (root / "train_val_list.txt").read_text().split()
    victims = train_val[:4]
    (root / "images" / victims[0]).unlink()
    (root / "images" / victims[1]).write_bytes(b"")
    path = root / "images" / victims[2]
    path.write_bytes(path.read_bytes()[:100])
    (root / "images" / victims[3]).write_text("not a png")
    return root, victims


def module(root, on_bad: str = "error", num_workers: int = 0):
    return ChestXrayDataModule(data_root=root, split={"name": "official", "val_fraction": 0.25}, images={"size": 32, "on_bad": on_bad},
                               loading={"batch_size": 8, "num_workers": num_workers})  # fmt: skip


def test_default_policy_names_the_missing_and_the_unreadable_file(damaged_root):
    root, victims = damaged_root
    with pytest.raises(FileNotFoundError, match=rf"1 of \d+ train images are missing.*{victims[0]}"):
        module(root).dataset("train")
    shutil.copy(root / "images" / (root / "train_val_list.txt").read_text().split()[5], root / "images" / victims[0])  # present again
    dm = module(root)
    where = {str(p).rsplit("/", 1)[-1]: (dm.dataset(part), i) for part in ("train", "val") for i, p in enumerate(dm.dataset(part).paths)}
    for victim, message in ((victims[1], "empty file"), (victims[2], "cannot decode"), (victims[3], "cannot decode")):
        dataset, index = where[victim]
        with pytest.raises(ImageDecodeError, match=rf"{victim}: {message}"):
            dataset[index]


def test_skip_policy_counts_and_reports_and_labels_stay_with_their_images(damaged_root):
    root, victims = damaged_root
    dm = module(root, on_bad="skip", num_workers=2)
    with pytest.warns(UserWarning, match=rf"skipping 1 missing (train|val) images.*{victims[0]}"):
        dm.setup("fit")
    csv = pd.read_csv(root / "Data_Entry_2017_v2020.csv").set_index("Image Index")
    seen, skipped = [], []
    for batch in dm.train_dataloader():
        skipped += batch["skipped"]
        for name, labels in zip(batch["name"], batch["labels"]):
            assert {LABELS[i] for i in np.flatnonzero(labels.numpy())} == set(csv.loc[name, "Finding Labels"].split("|"))
            seen.append(name)
    train_names = {p.rsplit("/", 1)[-1] for p in dm.dataset("train").paths.tolist()}
    assert sorted(skipped) == sorted(v for v in victims[1:] if v in train_names) and skipped
    assert len(seen) + len(skipped) == len(train_names)

    model = BaselineCNN(channels=(8, 8, 8, 8, 8), label_names=dm.label_names)
    trainer = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False, accelerator="cpu")
    trainer.fit(model, datamodule=dm)
    assert sorted(model.skipped_images["train"]) == sorted(skipped)
    assert trainer.callback_metrics["train/skipped_images"].item() == len(skipped)


def test_non_square_and_16_bit_images_are_resized(tmp_path, synthetic_root):
    root = tmp_path / "odd"
    shutil.copytree(synthetic_root, root)
    names = (root / "train_val_list.txt").read_text().split()
    Image.fromarray(np.full((50, 80), 40000, dtype=np.uint16)).save(root / "images" / names[0])
    Image.new("RGB", (90, 30), (10, 20, 30)).save(root / "images" / names[1])
    dataset = module(root).dataset("train")
    paths = [str(p).rsplit("/", 1)[-1] for p in dataset.paths]
    for name in names[:2]:
        image = dataset[paths.index(name)]["image"]
        assert image.shape == (3, 32, 32) and torch.isfinite(image).all()


def test_an_all_skipped_batch_skips_the_step_alone_and_adds_zero_gradients_under_ddp():
    from types import SimpleNamespace

    model = BaselineCNN(channels=(8, 8, 8, 8, 8))
    empty = {"labels": torch.empty(0), "name": [], "index": torch.empty(0, dtype=torch.long), "skipped": ["bad.png"]}
    model._trainer = SimpleNamespace(world_size=1)
    assert model.training_step(empty, 0) is None
    model._trainer = SimpleNamespace(world_size=2)  # Lightning refuses a skipped step under DDP
    loss = model.training_step(empty, 0)
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert all(p.grad is not None and not p.grad.any() for p in model.parameters() if p.requires_grad)
    assert model._skipped["train"] == ["bad.png", "bad.png"]
