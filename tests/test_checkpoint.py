"""A checkpoint predicts on its own: no training data, no pretrained weights to fetch."""

from __future__ import annotations

import os
import stat

import pytest
import torch

from cxr_lightning.checkpoint import load_classifier
from cxr_lightning.data import ChestXrayDataModule
from cxr_lightning.models import BaselineCNN, BEiTClassifier, ResNet50Classifier
from cxr_lightning.models.beit import BeitBackbone, tiny_beit_config
from tests.helpers.checkpoints import train_one_step_and_save


def test_beit_from_a_local_directory_reloads_without_that_directory(synthetic_root, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pretrained = tmp_path / "beit"
    BeitBackbone(pretrained=None, config=tiny_beit_config(image_size=32)).model.save_pretrained(pretrained)
    dm = ChestXrayDataModule(data_root=synthetic_root, split="official", val_fraction=0.25, image_size=32, batch_size=4,
                             num_workers=0, normalization="beit", metadata_encoding="code")  # fmt: skip
    model = BEiTClassifier(pretrained=str(pretrained), metadata_dim=dm.metadata_dim, label_names=dm.label_names)
    model.thresholds.fill_(0.3)
    train_one_step_and_save(model, dm, tmp_path / "beit.ckpt")
    for child in pretrained.iterdir():
        child.unlink()
    pretrained.rmdir()  # the pretrained weights are gone: the checkpoint must suffice
    loaded, spec = load_classifier(tmp_path / "beit.ckpt")
    assert torch.equal(loaded.thresholds, torch.full((15,), 0.3))
    assert spec.normalization == "beit" and spec.image_size == 32 and spec.metadata_encoder.scheme == "code"
    images, metadata = torch.rand(2, 3, 32, 32), torch.zeros(2, 3)
    model.eval()
    assert torch.allclose(loaded(images, metadata), model(images, metadata), atol=1e-6)


def test_resnet_checkpoint_loads_with_weights_only_and_no_imagenet_file(synthetic_root, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "empty_hub"))
    dm = ChestXrayDataModule(data_root=synthetic_root, split="official", val_fraction=0.25, image_size=32, batch_size=4, num_workers=0)
    model = ResNet50Classifier(weights=None, metadata_dim=dm.metadata_dim, label_names=dm.label_names)
    train_one_step_and_save(model, dm, tmp_path / "resnet.ckpt")
    state = torch.load(tmp_path / "resnet.ckpt", weights_only=True)  # no pickled objects
    state["hyper_parameters"]["weights"] = "IMAGENET1K_V2"  # as a real run's checkpoint says
    torch.save(state, tmp_path / "resnet_v2.ckpt")
    loaded, spec = load_classifier(tmp_path / "resnet_v2.ckpt")
    assert spec.label_names == dm.label_names and spec.metadata_encoder.age_mean == dm.encoder.age_mean
    model.eval()
    x = torch.rand(1, 3, 32, 32)
    assert torch.allclose(loaded(x, torch.zeros(1, 5)), model(x, torch.zeros(1, 5)), atol=1e-6)


def test_a_save_killed_midway_leaves_the_previous_checkpoint_whole(tmp_path, monkeypatch):
    from cxr_lightning.checkpoint import AtomicCheckpointIO

    io = AtomicCheckpointIO()
    path = tmp_path / "checkpoints" / "last.ckpt"
    previous = os.umask(0o022)
    try:
        io.save_checkpoint({"step": 1, "weights": torch.ones(3)}, path)
    finally:
        os.umask(previous)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # as a plain open() makes it, not mkstemp's 0600
    real_save = torch.save

    def dying_save(obj, file, *args, **kwargs):
        file.write(b"half a checkpoint")
        raise KeyboardInterrupt  # what a kill looks like from inside the process

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"step": 2, "weights": torch.zeros(3)}, path)
    monkeypatch.setattr(torch, "save", real_save)
    state = torch.load(path, weights_only=True)
    assert state["step"] == 1 and torch.equal(state["weights"], torch.ones(3))
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]  # no temporary file left behind


def test_the_cli_trainer_writes_checkpoints_atomically(synthetic_root):
    from cxr_lightning.cli.lightning_cli import CXRLightningCLI

    cli = CXRLightningCLI(args=["--model", "cxr_lightning.models.BaselineCNN", f"--data.data_root={synthetic_root}",
                                "--data.split=official", "--data.val_fraction=0.25", "--trainer.logger=false"], run=False)  # fmt: skip
    assert type(cli.trainer.strategy.checkpoint_io).__name__ == "AtomicCheckpointIO"


class SiteDataModule(ChestXrayDataModule):
    """A user's DataModule subclass (its checkpoint state is stored under its own class name)."""


class SiteCNN(BaselineCNN):
    """A user's model subclass."""


def test_checkpoints_of_subclasses_load(synthetic_root, tmp_path):
    dm = SiteDataModule(data_root=synthetic_root, split="official", val_fraction=0.25, image_size=32, batch_size=4, num_workers=0)
    model = SiteCNN(channels=(8, 8, 16, 16, 16), metadata_dim=dm.metadata_dim, label_names=dm.label_names)
    train_one_step_and_save(model, dm, tmp_path / "site.ckpt")
    assert "SiteDataModule" in torch.load(tmp_path / "site.ckpt", weights_only=True)
    loaded, spec = load_classifier(tmp_path / "site.ckpt", trusted_classes=[SiteCNN.__module__])
    assert type(loaded).__name__ == "SiteCNN" and spec.image_size == 32 and spec.label_names == dm.label_names
    model.eval()
    x = torch.rand(2, 3, 32, 32)
    assert torch.allclose(loaded(x, torch.zeros(2, 5)), model(x, torch.zeros(2, 5)), atol=1e-6)
