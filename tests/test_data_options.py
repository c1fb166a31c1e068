"""The DataModule's options in sections: the flat layout of before (Python, YAML, overrides, checkpoints) still reads the same."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from jsonargparse import ArgumentParser

from cxr_lightning.cli import main
from cxr_lightning.cli.configs import resolve_config_args
from cxr_lightning.data import ChestXrayDataModule
from cxr_lightning.data.options import (
    FLAT_OPTIONS,
    ConfigValueError,
    DataOptions,
    ImageOptions,
    SplitOptions,
    sectioned_data_config,
)
from cxr_lightning.models import BaselineCNN
from tests.helpers.checkpoints import train_one_step_and_save

LEGACY_CONFIGS = Path(__file__).parent / "data" / "legacy_configs"
FLAT = {"split": "official", "val_fraction": 0.25, "seed": 3, "image_size": 32, "normalization": "beit",
        "metadata_encoding": "code", "class_weights": "linear", "batch_size": 4, "num_workers": 0, "augment": False}  # fmt: skip
SECTIONED = {"split": {"name": "official", "val_fraction": 0.25, "seed": 3}, "images": {"size": 32, "normalization": "beit"},
             "metadata": {"encoding": "code"}, "labels": {"class_weights": "linear"},
             "loading": {"batch_size": 4, "num_workers": 0}, "augmentation": {"enabled": False}}  # fmt: skip


class MyData(ChestXrayDataModule):
    """A user's subclass: its checkpoint key is its own class name."""


def test_flat_python_options_build_the_same_module_as_sections(synthetic_root):
    flat = ChestXrayDataModule(data_root=synthetic_root, **FLAT)
    sectioned = ChestXrayDataModule(data_root=synthetic_root, **SECTIONED)
    as_dataclasses = ChestXrayDataModule(data_root=synthetic_root, split=SplitOptions(name="official", val_fraction=0.25, seed=3),
                                         images=ImageOptions(size=32, normalization="beit"),
                                         **{k: v for k, v in SECTIONED.items() if k not in ("split", "images")})  # fmt: skip
    assert dict(flat.hparams) == dict(sectioned.hparams) == dict(as_dataclasses.hparams)
    assert flat.hparams["images"]["size"] == 32 and flat.hparams["split"]["seed"] == 3 and "image_size" not in flat.hparams
    assert flat.options == sectioned.options and flat.training_seed == 3
    batches = [next(iter(dm.val_dataloader())) for dm in (flat, sectioned)]
    assert batches[0]["name"] == batches[1]["name"] and torch.equal(batches[0]["image"], batches[1]["image"])
    assert flat.state_dict() == sectioned.state_dict()


def test_partial_sections_keep_the_other_defaults():
    dm = ChestXrayDataModule(data_root="nowhere", images={"size": 64})
    assert dm.options.images == ImageOptions(size=64, channels=3, normalization="imagenet") and dm.options.split == SplitOptions()
    # the input facts left unset are null in the options (the CLI gives them the model's), the defaults once built
    assert (ImageOptions(size=64).channels, ImageOptions(size=64).normalization) == (None, None)
    assert ImageOptions(size=64).resolved() == dm.options.images


@pytest.mark.parametrize(("bad", "named"), [({"imagesize": 64}, "imagesize"), ({"image_size": 64, "batchsize": 2}, "batchsize")])
def test_an_unknown_flat_option_is_a_one_line_type_error_listing_the_valid_names(bad, named):
    with pytest.raises(TypeError) as caught:
        ChestXrayDataModule(data_root="nowhere", **bad)
    message = str(caught.value)
    assert "\n" not in message and f"unknown option(s) {named}; valid: " in message
    assert "images" in message and "image_size" in message  # the valid names of both layouts


def test_horizontal_flip_is_an_augmentation_option_off_by_default_in_every_layout():
    assert DataOptions().augmentation.horizontal_flip == 0.0  # the paper's configs do not flip
    sectioned = DataOptions.from_config({"augmentation": {"horizontal_flip": 0.5}})
    assert sectioned.augmentation.horizontal_flip == 0.5 and DataOptions.from_config({"horizontal_flip": 0.5}) == sectioned
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(ChestXrayDataModule, "data")
    parsed = parser.parse_args(["--data.augmentation.horizontal_flip=0.5", "--data.data_root=nowhere"])
    assert parsed.data.augmentation.horizontal_flip == 0.5
    dm = ChestXrayDataModule(data_root="nowhere", augmentation={"horizontal_flip": 0.5})
    assert dm.hparams["augmentation"]["horizontal_flip"] == 0.5 and dm.batch_augment.horizontal_flip == 0.5
    assert ChestXrayDataModule(**dict(dm.hparams)).options == dm.options  # what a checkpoint rebuilds


def test_an_unknown_key_in_a_section_is_refused_naming_it():
    with pytest.raises(ConfigValueError, match=r"^data\.images\.sise is not an option; data\.images has: size, ") as caught:
        ChestXrayDataModule(data_root="nowhere", images={"sise": 64})
    assert "\n" not in str(caught.value)


def test_an_option_given_flat_and_in_its_section_with_other_values_is_refused():
    with pytest.raises(ConfigValueError, match=r"data\.images\.size=32 and data\.image_size=64 set the same option") as caught:
        ChestXrayDataModule(data_root="nowhere", images={"size": 32}, image_size=64)
    assert "\n" not in str(caught.value)
    with pytest.raises(ConfigValueError, match=r"data\.split\.seed"):
        sectioned_data_config({"seed": 1, "split": {"seed": 2}})
    # The same value both ways is one option set once (a list and a tuple of the same fractions too).
    same = sectioned_data_config({"fractions": [0.5, 0.25, 0.25], "split": {"name": "patient", "fractions": (0.5, 0.25, 0.25)}})
    assert same == {"split": {"fractions": (0.5, 0.25, 0.25), "name": "patient"}}


def test_sectioned_data_config_reads_either_layout_and_leaves_sections_alone():
    flat = {"data_root": "d", "split": "patient", "seed": 6, "image_size": 64, "on_bad_image": "skip", "synthetic": {"num_images": 9}}
    expected = {"data_root": "d", "split": {"name": "patient", "seed": 6}, "images": {"size": 64, "on_bad": "skip"},
                "synthetic": {"num_images": 9}}  # fmt: skip
    assert sectioned_data_config(flat) == expected
    assert sectioned_data_config(expected) == expected
    mixed = {"data_root": "d", "split": {"name": "patient"}, "seed": 6, "images": {"on_bad": "skip"}, "image_size": 64,
             "synthetic": {"num_images": 9}}  # fmt: skip
    assert sectioned_data_config(mixed) == expected
    with pytest.raises(ConfigValueError, match=r"^data\.imagesize is not a data option; valid: data_root, ") as caught:
        sectioned_data_config({"imagesize": 64})
    assert "\n" not in str(caught.value)
    # Every flat name lands on a real option of the sections.
    options = DataOptions.from_config({name: getattr_path(DataOptions(), path) for name, path in FLAT_OPTIONS.items()})
    assert options == DataOptions()


def getattr_path(options: DataOptions, path: str):
    value = options
    for part in path.split("."):
        value = getattr(value, part)
    return value


def test_jsonargparse_shows_the_sections_and_not_the_legacy_catch_all(capsys):
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(ChestXrayDataModule, "data")
    options = {action.dest for action in parser._actions}
    assert {"data.images.size", "data.split.name", "data.split.seed", "data.loading.batch_size", "data.training_seed"} <= options
    assert not {o for o in options if "legacy" in o or o in ("data.image_size", "data.seed")}
    with pytest.raises(Exception, match="imagesize"):
        parser.parse_args(["--data.imagesize=3"])


def print_config(capsys, *args: str) -> tuple[dict, str]:
    """``fit --print_config`` as YAML, and what was written to stderr."""
    with pytest.raises(SystemExit) as exit_:
        main(["fit", *args, "--print_config"])
    assert exit_.value.code in (0, None)
    captured = capsys.readouterr()
    return yaml.safe_load(captured.out), captured.err


@pytest.mark.parametrize("name", ["demo", "resnet_log"])
def test_an_old_flat_config_parses_to_the_migrated_shipped_config(capsys, name):
    old, note = print_config(capsys, "--config", str(LEGACY_CONFIGS / f"{name}_flat.yaml"))
    new, quiet = print_config(capsys, "--config", name)
    assert quiet == ""  # the shipped configs are sectioned: nothing to translate
    lines = note.splitlines()
    assert len(lines) == 1 and f"{name}_flat.yaml: flat data options (split, " in lines[0] and "data.images.size" in lines[0]
    # The old resnet_log named no seed (Lightning took `true` as 0); the migrated one names the 0.
    assert (old.pop("seed_everything"), new.pop("seed_everything")) == ((0, 0) if name == "demo" else (True, 0))
    assert old == new
    assert new["data"]["images"]["size"] == (64 if name == "demo" else 224) and "image_size" not in new["data"]


def test_print_config_shows_the_data_options_as_sections(capsys):
    config, _ = print_config(capsys, "--config", "demo")
    data = config["data"]
    assert list(data) == ["data_root", "split", "labels", "metadata", "images", "augmentation", "loading", "training_seed", "synthetic"]
    assert data["split"] == {"name": "official", "seed": 0, "val_fraction": 0.15, "fractions": [0.7, 0.1, 0.2], "stratify": False,
                             "train_val_list": None, "test_list": None}  # fmt: skip
    assert data["images"]["size"] == 64 and data["loading"]["batch_size"] == 32 and data["labels"]["class_weights"] == "log"


def test_old_overrides_parse_equal_to_new_ones(capsys):
    old, note = print_config(capsys, "--config", "demo", "--data.image_size=48", "--data.split", "patient", "--data.seed", "3",
                             "--data.fractions=[0.5, 0.25, 0.25]", "--data.on_bad_image", "skip")  # fmt: skip
    new, quiet = print_config(capsys, "--config", "demo", "--data.images.size=48", "--data.split.name", "patient",
                              "--data.split.seed", "3", "--data.split.fractions=[0.5, 0.25, 0.25]", "--data.images.on_bad", "skip")  # fmt: skip
    assert old == new and quiet == ""
    assert new["data"]["split"]["name"] == "patient" and new["data"]["split"]["seed"] == 3 and new["data"]["images"]["on_bad"] == "skip"
    assert len(note.splitlines()) == 1 and "--data.image_size" not in note.split("read as")[1] and "--data.images.size" in note
    # --data.split given a mapping is the section, not the flat name
    section, _ = print_config(capsys, "--config", "demo", "--data.split", "{name: patient, seed: 4}")
    assert section["data"]["split"]["name"] == "patient" and section["data"]["split"]["seed"] == 4


def test_a_flat_config_under_a_subcommand_key_is_translated_and_relative_paths_keep_their_meaning(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "old.yaml").write_text("fit:\n  data:\n    data_root: data/nih   # relative: to the working directory\n"
                                                "    image_size: 64\n    metadata_csv: meta.csv\n")  # fmt: skip
    args = resolve_config_args(["--config", "conf/old.yaml", "fit"])
    assert args[0] == "--config" and args[2] == "fit"
    assert yaml.safe_load(args[1]) == {"fit": {"data": {"data_root": "data/nih", "images": {"size": 64}, "metadata": {"csv": "meta.csv"}}}}
    assert "conf/old.yaml: flat data options (image_size, metadata_csv)" in capsys.readouterr().err
    (tmp_path / "new.yaml").write_text("data:\n  images:\n    size: 64\n")
    assert resolve_config_args(["fit", "--config=new.yaml"]) == ["fit", "--config=new.yaml"]  # sectioned: passed on as the file
    assert capsys.readouterr().err == ""


def test_a_config_giving_an_option_twice_differently_is_refused_naming_the_file(tmp_path):
    config = tmp_path / "mixed.yaml"
    config.write_text("data:\n  image_size: 64\n  images:\n    size: 32\n")
    with pytest.raises(SystemExit, match=rf"^{config}: data\.image_size=64 and data\.images\.size=32 set the same option") as caught:
        resolve_config_args(["fit", "-c", str(config)])
    assert "\n" not in str(caught.value.code)


@pytest.fixture(scope="module")
def subclass_checkpoint(synthetic_root, tmp_path_factory) -> tuple[Path, MyData]:
    dm = MyData(data_root=synthetic_root, split={"name": "official", "val_fraction": 0.25}, images=ImageOptions(size=32),
                loading={"batch_size": 4, "num_workers": 0})  # fmt: skip
    model = BaselineCNN(channels=(8, 8, 8, 8, 8), metadata_dim=dm.metadata_dim, label_names=dm.label_names)
    return train_one_step_and_save(model, dm, tmp_path_factory.mktemp("sections") / "my_data.ckpt"), dm


def test_a_subclass_checkpoint_with_sections_loads_with_weights_only(subclass_checkpoint):
    path, dm = subclass_checkpoint
    checkpoint = torch.load(path, weights_only=True)  # plain types only: no dataclass is pickled
    stored = checkpoint["datamodule_hyper_parameters"]
    assert stored == dm.options.as_plain_dict() and stored["images"]["size"] == 32 and stored["split"]["name"] == "official"
    assert "MyData" in checkpoint  # Lightning's key for the subclass's state
    rebuilt = MyData.load_from_checkpoint(path, weights_only=True)
    assert type(rebuilt) is MyData and rebuilt.options == dm.options


def test_an_old_checkpoints_flat_datamodule_hyper_parameters_still_rebuild(subclass_checkpoint, tmp_path):
    path, dm = subclass_checkpoint
    checkpoint = torch.load(path, weights_only=True)
    # What save_hyperparameters stored before the sections: every option flat, the dataclass as a dict.
    checkpoint["datamodule_hyper_parameters"] = {
        "data_root": str(dm.data_root), "split": "official", "val_fraction": 0.25, "seed": 100, "training_seed": None,
        "fractions": (0.7, 0.1, 0.2), "stratify": False, "metadata_csv": None, "train_val_list": None, "test_list": None,
        "bad_values": "missing", "include_no_finding": True, "image_size": 32, "image_channels": 3, "normalization": "imagenet",
        "augment": True, "rotation_degrees": 10.0, "brightness": 0.1, "contrast": 0.1, "metadata_encoding": "onehot",
        "class_weights": "none", "batch_size": 4, "eval_batch_size": None, "num_workers": 0, "pin_memory": True,
        "persistent_workers": False, "prefetch_factor": None, "on_bad_image": "error", "sampler": "shuffle", "sampler_power": 0.5,
        "image_cache": "auto", "cache_dir": None, "synthetic": None,
    }  # fmt: skip
    old = tmp_path / "old.ckpt"
    torch.save(checkpoint, old)
    rebuilt = MyData.load_from_checkpoint(old, weights_only=True)
    assert rebuilt.options == dm.options and dict(rebuilt.hparams) == dict(dm.hparams)
