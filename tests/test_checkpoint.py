"""A checkpoint predicts on its own: no training data, no pretrained weights to fetch."""

from __future__ import annotations

import os
import re
import stat

import lightning as L
import pytest
import torch

from cxr_lightning.checkpoint import CheckpointError, load_classifier
from cxr_lightning.data import ChestXrayDataModule
from cxr_lightning.models import BaselineCNN, BEiTClassifier, ResNet50Classifier
from cxr_lightning.models.base import CLASS_PATH_KEY, INSTANTIATOR_KEY, LEGACY_MODEL_CLASS_KEY
from cxr_lightning.models.beit import BeitBackbone, tiny_beit_config
from tests.helpers.checkpoints import train_one_step_and_save


def test_beit_from_a_local_directory_reloads_without_that_directory(synthetic_root, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pretrained = tmp_path / "beit"
    BeitBackbone(pretrained=None, config=tiny_beit_config(image_size=32)).model.save_pretrained(pretrained)
    dm = ChestXrayDataModule(data_root=synthetic_root, split={"name": "official", "val_fraction": 0.25}, images={"size": 32, "normalization": "beit"},
                             loading={"batch_size": 4, "num_workers": 0}, metadata={"encoding": "code"})  # fmt: skip
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
    dm = ChestXrayDataModule(data_root=synthetic_root, split={"name": "official", "val_fraction": 0.25}, images={"size": 32},
                             loading={"batch_size": 4, "num_workers": 0})  # fmt: skip
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
                                "--data.split.name=official", "--data.split.val_fraction=0.25", "--trainer.logger=false"], run=False)  # fmt: skip
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


SITE_CNN = f"{SiteCNN.__module__}.SiteCNN"
UNTRUSTED = "outside cxr_lightning; it was not imported"


@pytest.fixture(scope="module")
def site_checkpoint(synthetic_root, tmp_path_factory):
    """A user's model subclass trained a step and saved outside the CLI, and its model."""
    dm = ChestXrayDataModule(data_root=synthetic_root, split={"name": "official", "val_fraction": 0.25}, images={"size": 32},
                             loading={"batch_size": 4, "num_workers": 0})  # fmt: skip
    model = SiteCNN(channels=(8, 8, 16, 16, 16), metadata_dim=dm.metadata_dim, label_names=dm.label_names)
    return train_one_step_and_save(model, dm, tmp_path_factory.mktemp("site") / "site.ckpt"), model.eval()


def test_a_checkpoint_records_its_model_class_once_where_lightning_does(site_checkpoint):
    path, model = site_checkpoint
    state = torch.load(path, weights_only=True)
    assert state["hyper_parameters"][CLASS_PATH_KEY] == SITE_CNN and LEGACY_MODEL_CLASS_KEY not in state
    # Lightning's own loader reads that record (with the instantiator beside it) and rebuilds the subclass.
    assert state["hyper_parameters"][INSTANTIATOR_KEY] == "lightning.pytorch.cli.instantiate_module"
    loaded = SiteCNN.load_from_checkpoint(path, map_location="cpu").eval()
    x = torch.rand(2, 3, 32, 32)
    assert type(loaded) is SiteCNN and torch.equal(loaded(x, torch.zeros(2, 5)), model(x, torch.zeros(2, 5)))


def older_checkpoint(path, tmp_path, legacy_class: str | None, recorded_class: str | None):
    """``path`` rewritten with the model class at the top level (as older versions wrote it) and/or in hyper_parameters."""
    state = torch.load(path, weights_only=True)
    for key, value in ((CLASS_PATH_KEY, recorded_class), (INSTANTIATOR_KEY, None)):
        state["hyper_parameters"].pop(key)
        if value is not None:
            state["hyper_parameters"][key] = value
    if legacy_class is not None:
        state[LEGACY_MODEL_CLASS_KEY] = legacy_class
    torch.save(state, tmp_path / "older.ckpt")
    return tmp_path / "older.ckpt"


def test_an_older_checkpoint_naming_its_class_under_the_legacy_key_loads_only_when_trusted(site_checkpoint, tmp_path):
    path, model = site_checkpoint
    older = older_checkpoint(path, tmp_path, legacy_class=SITE_CNN, recorded_class=None)
    with pytest.raises(CheckpointError, match=re.escape(f"{older}: names the model class '{SITE_CNN}', {UNTRUSTED}")):
        load_classifier(older)
    loaded, _ = load_classifier(older, trusted_classes=[SITE_CNN])
    x = torch.rand(2, 3, 32, 32)
    assert type(loaded) is SiteCNN and torch.equal(loaded(x, torch.zeros(2, 5)), model(x, torch.zeros(2, 5)))


@pytest.mark.parametrize(
    ("legacy_class", "recorded_class"),
    [("evil_module_absent.Evil", None), (None, "evil_module_absent.Evil"), ("cxr_lightning.models.BaselineCNN", "evil_module_absent.Evil")],
    ids=["legacy_key_only", "record_only", "record_beside_a_trusted_legacy_key"],
)
def test_an_untrusted_class_is_refused_under_either_key(site_checkpoint, tmp_path, legacy_class, recorded_class):
    older = older_checkpoint(site_checkpoint[0], tmp_path, legacy_class, recorded_class)
    with pytest.raises(CheckpointError, match=re.escape(f"names the model class 'evil_module_absent.Evil', {UNTRUSTED}")):
        load_classifier(older)


def test_a_checkpoint_recording_no_model_class_is_refused_naming_the_key(site_checkpoint, tmp_path):
    older = older_checkpoint(site_checkpoint[0], tmp_path, legacy_class=None, recorded_class=None)
    with pytest.raises(CheckpointError, match=re.escape(f"{older}: no model class recorded (hyper_parameters['_class_path'])")):
        load_classifier(older)


def test_thresholds_stay_float32_and_exact_under_bf16_true_precision(synthetic_root, tmp_path):
    dm = ChestXrayDataModule(data_root=synthetic_root, split="official", val_fraction=0.25, image_size=32, batch_size=4, num_workers=0)
    model = BaselineCNN(channels=(8, 8, 16, 16, 16), metadata_dim=dm.metadata_dim, label_names=dm.label_names)
    tuned = torch.linspace(0.3001, 0.7001, 15)
    assert not torch.equal(tuned.bfloat16().float(), tuned)  # bf16 would round these
    model.thresholds.copy_(tuned)
    trainer = L.Trainer(precision="bf16-true", max_steps=1, limit_val_batches=0, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu", default_root_dir=tmp_path)  # fmt: skip
    trainer.fit(model, datamodule=dm)
    assert model.head.classifier.weight.dtype == torch.bfloat16  # the model was cast
    assert model.thresholds.dtype == torch.float32 and torch.equal(model.thresholds, tuned)
    trainer.save_checkpoint(tmp_path / "bf16.ckpt")
    saved = torch.load(tmp_path / "bf16.ckpt", weights_only=True)["state_dict"]["thresholds"]
    assert saved.dtype == torch.float32 and torch.equal(saved, tuned)
    # A bf16 model loading a checkpoint keeps them exact, and they still move with the model.
    rebuilt = BaselineCNN(channels=(8, 8, 16, 16, 16), metadata_dim=dm.metadata_dim, label_names=dm.label_names).to(torch.bfloat16)
    rebuilt.load_state_dict(torch.load(tmp_path / "bf16.ckpt", weights_only=True)["state_dict"])
    assert rebuilt.thresholds.dtype == torch.float32 and torch.equal(rebuilt.thresholds, tuned)
    assert rebuilt.to("meta").thresholds.device.type == "meta"
