"""Hostile and broken checkpoints, through every command that reads one: refused or used as data, never run.

Three attacks, each built for real:
- a pickle payload (``__reduce__`` calling ``os.system``) that would create a marker file if unpickled;
- a chain: a clean checkpoint (it loads with ``weights_only=True``) whose settings name that payload
  as ``weights_path``, with no ``weights`` key;
- a class path outside the package, naming a module whose import would create a marker file.
Every command must leave the marker absent; the chain must even work (its state dict has the weights).
"""

from __future__ import annotations

import os
import re
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from cxr_lightning.checkpoint import CheckpointError, is_trusted_class_path, load_classifier
from cxr_lightning.cli import main as cli_main
from cxr_lightning.data import ChestXrayDataModule
from cxr_lightning.models import BaselineCNN, ResNet50Classifier
from cxr_lightning.models.base import LEGACY_MODEL_CLASS_KEY
from cxr_lightning.models.weights import WeightsFileError, load_state_dict_file
from tests.helpers.checkpoints import train_one_step_and_save


class Payload:
    """Unpickling this runs ``touch MARKER``: what a malicious checkpoint does."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


EVIL_MODULE = """
from pathlib import Path
Path({marker!r}).touch()  # import-time code: must never run unless the user trusts this module
from cxr_lightning.models import BaselineCNN


class Evil(BaselineCNN):
    pass
"""


def fit_and_save(model, root: Path, path: Path) -> Path:
    dm = ChestXrayDataModule(data_root=root, split="official", val_fraction=0.25, image_size=32, batch_size=8, num_workers=0)
    return train_one_step_and_save(model, dm, path)


@pytest.fixture(scope="module")
def hostile(synthetic_root, tmp_path_factory) -> dict[str, Path]:
    """The hostile files, a marker file each would create, and a clean CNN checkpoint for comparison."""
    tmp = tmp_path_factory.mktemp("hostile")
    files = {"marker": tmp / "PWNED", "import_marker": tmp / "IMPORTED", "modules": tmp / "modules"}
    files["good"] = fit_and_save(BaselineCNN(channels=(8, 8, 16, 16, 16)), synthetic_root, tmp / "good.ckpt")
    # 1. A pickle payload, both as a weights file and as a whole checkpoint.
    files["payload"] = tmp / "payload.pth"
    torch.save({"state_dict": {"w": torch.ones(1)}, "x": Payload(files["marker"])}, files["payload"])
    state = torch.load(files["good"], weights_only=True)
    state["callbacks"] = Payload(files["marker"])
    files["pickled_ckpt"] = tmp / "pickled.ckpt"
    torch.save(state, files["pickled_ckpt"])
    # 2. The chain: a clean ResNet-50 checkpoint naming the payload as its weights file.
    resnet = fit_and_save(ResNet50Classifier(weights=None), synthetic_root, tmp / "resnet.ckpt")
    state = torch.load(resnet, weights_only=True)  # clean: no pickled objects
    state["hyper_parameters"].pop("weights")
    state["hyper_parameters"]["weights_path"] = str(files["payload"])
    files["chain"] = tmp / "chain.ckpt"
    torch.save(state, files["chain"])
    # 3. A class path outside the package, whose module runs code on import.
    files["modules"].mkdir()
    (files["modules"] / "evil_module.py").write_text(textwrap.dedent(EVIL_MODULE.format(marker=str(files["import_marker"]))))
    state = torch.load(files["good"], weights_only=True)
    state[LEGACY_MODEL_CLASS_KEY] = "evil_module.Evil"  # as a checkpoint of an older version also records it
    state["hyper_parameters"]["_class_path"] = "evil_module.Evil"
    files["outside"] = tmp / "outside.ckpt"
    torch.save(state, files["outside"])
    # Broken ones: empty and truncated.
    files["empty"] = tmp / "empty.ckpt"
    files["empty"].write_bytes(b"")
    files["truncated"] = tmp / "truncated.ckpt"
    files["truncated"].write_bytes(files["good"].read_bytes()[: files["good"].stat().st_size // 2])
    files["text"] = tmp / "notes.ckpt"
    files["text"].write_text("this is not a checkpoint\n")
    return files


@pytest.fixture
def evil_on_path(hostile, monkeypatch):
    """The evil module importable, as it would be from a user's working directory."""
    monkeypatch.syspath_prepend(str(hostile["modules"]))
    yield
    sys.modules.pop("evil_module", None)


def no_code_ran(hostile) -> bool:
    return not hostile["marker"].exists() and not hostile["import_marker"].exists()


def run_cli(args: list[str], capsys) -> tuple[int, str]:
    status = cli_main([str(a) for a in args])
    return status, capsys.readouterr().err


def command_lines(kind: str, checkpoint: Path, image: Path, out: Path, root: Path) -> list[list]:
    """Every command that reads a checkpoint, on ``checkpoint``."""
    cli_fit_args = ["--data.data_root", root, "--data.split", "official", "--data.val_fraction", "0.25", "--data.image_size", "32",
                    "--data.batch_size", "8", "--data.num_workers", "0", "--trainer.logger", "false", "--trainer.accelerator", "cpu",
                    "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", out / "run", "--ckpt_path", checkpoint]  # fmt: skip
    model = ["--model", "cxr_lightning.models.ResNet50Classifier", "--model.weights", "null"] if kind == "resnet" else \
        ["--model", "cxr_lightning.models.BaselineCNN", "--model.channels", "[8, 8, 16, 16, 16]"]  # fmt: skip
    return [
        ["predict-files", "--ckpt_path", checkpoint, "--images", image, "--out", out / "preds.csv", "--workers", "0", "--no-progress"],
        ["predict-files", "--checkpoint", checkpoint, "--images", image, "--out", out / "preds2.csv", "--workers", "0", "--no-progress"],
        ["export", "--checkpoint", checkpoint, "--format", "torchscript", "--out", out / "model.pt", "--no-verify"],
        ["explain", "--checkpoint", checkpoint, "--images", image, "--out", out / "explain", "--workers", "0", "--no-progress",
         "--no-overlays"],
        ["test", *model, *cli_fit_args],
        ["validate", *model, *cli_fit_args],
        ["fit", *model, *cli_fit_args, "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "1"],
    ]  # fmt: skip


@pytest.mark.parametrize("name", ["pickled_ckpt", "outside", "empty", "truncated", "text"])
def test_every_command_refuses_a_hostile_or_broken_checkpoint_in_one_line(hostile, evil_on_path, synthetic_root, tmp_path, capsys, name):
    image = next((synthetic_root / "images").glob("*.png"))
    for args in command_lines("cnn", hostile[name], image, tmp_path / "out", synthetic_root):
        status, err = run_cli(args, capsys)
        assert status == 1, (args[0], err[-1500:])
        message = err.strip().splitlines()[-1]
        assert message.startswith("cxr-lightning: error:") and str(hostile[name]) in message, (args[0], err[-1500:])
        assert "Traceback" not in err, (args[0], err[-1500:])
        assert no_code_ran(hostile), args[0]
    assert not (tmp_path / "out" / "preds.csv").exists() and not (tmp_path / "out" / "model.pt").exists()


def test_the_messages_say_what_was_wrong(hostile, evil_on_path):
    expected = {
        "pickled_ckpt": "pickled Python objects other than tensors",
        "outside": "outside cxr_lightning; it was not imported",
        "empty": "is empty (0 bytes)",
        "truncated": "truncated",
        "text": "truncated or not a PyTorch file",
    }
    for name, words in expected.items():
        with pytest.raises(CheckpointError, match=re.escape(words)):
            load_classifier(hostile[name])
    with pytest.raises(WeightsFileError, match="refused, since unpickling them could run code"):
        load_state_dict_file(hostile["payload"])
    assert no_code_ran(hostile)


def test_the_weights_path_chain_is_used_as_data_and_never_opens_the_named_file(hostile, synthetic_root, tmp_path, capsys, monkeypatch):
    opened: list[str] = []
    real_load = torch.load

    def watching_load(f, *args, **kwargs):
        opened.append(str(f))
        assert kwargs.get("weights_only") is True, f"torch.load({f}) without weights_only=True"
        return real_load(f, *args, **kwargs)

    monkeypatch.setattr(torch, "load", watching_load)
    model, spec = load_classifier(hostile["chain"])
    assert model.hparams.weights_path is None and spec.image_size == 32
    image = next((synthetic_root / "images").glob("*.png"))
    for args in command_lines("resnet", hostile["chain"], image, tmp_path / "out", synthetic_root):
        status, err = run_cli(args, capsys)
        assert status == 0, (args[0], err[-2000:])
        assert no_code_ran(hostile), args[0]
    assert str(hostile["payload"]) not in opened, "a file named by the checkpoint's settings was opened"
    assert (tmp_path / "out" / "preds.csv").is_file() and (tmp_path / "out" / "run" / "metrics.json").is_file()


def test_a_class_outside_the_package_loads_only_when_the_user_trusts_it(hostile, evil_on_path, synthetic_root, tmp_path, capsys):
    with pytest.raises(CheckpointError, match="--trust_model_class evil_module.Evil"):
        load_classifier(hostile["outside"])
    assert no_code_ran(hostile)
    model, _ = load_classifier(hostile["outside"], trusted_classes=["evil_module"])
    assert type(model).__name__ == "Evil" and hostile["import_marker"].exists()  # the user vouched for it
    image = next((synthetic_root / "images").glob("*.png"))
    status, err = run_cli(["predict-files", "--ckpt_path", hostile["outside"], "--images", image, "--out", tmp_path / "p.csv",
                           "--workers", "0", "--no-progress", "--trust-model-class", "evil_module.Evil"], capsys)  # fmt: skip
    assert status == 0, err[-1500:]
    hostile["import_marker"].unlink()


@pytest.mark.parametrize(
    "class_path, trusted, allowed",
    [
        ("cxr_lightning.models.BaselineCNN", [], True),
        ("cxr_lightning_evil.Model", [], False),  # a name that only starts like the package
        ("os.system", [], False),
        ("evil_module.Evil", ["evil_module"], True),
        ("evil_module.Other", ["evil_module.Evil"], False),
        ("evil_module_two.Evil", ["evil_module"], False),
    ],
)
def test_which_class_paths_are_trusted(class_path, trusted, allowed):
    assert is_trusted_class_path(class_path, trusted) is allowed


def test_weights_only_false_is_refused(hostile, synthetic_root, tmp_path, capsys):
    status, err = run_cli(["test", "--model", "cxr_lightning.models.BaselineCNN", "--data.data_root", synthetic_root,
                           "--trainer.default_root_dir", tmp_path, "--ckpt_path", hostile["good"], "--weights_only", "false"], capsys)  # fmt: skip
    assert status == 1 and "--weights_only false is refused" in err


def test_a_resumed_checkpoint_cannot_make_fit_test_a_file_it_names(hostile, synthetic_root, tmp_path, capsys):
    """A checkpoint's callback state names a "best" checkpoint elsewhere: fit's final test ignores it."""
    first = tmp_path / "first"
    common = ["--data.data_root", synthetic_root, "--data.split", "official", "--data.val_fraction", "0.25", "--data.image_size", "32",
              "--data.batch_size", "16", "--data.num_workers", "0", "--trainer.logger", "false", "--trainer.accelerator", "cpu",
              "--trainer.enable_progress_bar", "false", "--trainer.limit_train_batches", "1", "--trainer.limit_val_batches", "1",
              "--model", "cxr_lightning.models.BaselineCNN", "--model.channels", "[8, 8, 16, 16, 16]"]  # fmt: skip
    assert run_cli(["fit", *common, "--trainer.default_root_dir", first, "--trainer.max_epochs", "1"], capsys)[0] == 0
    state = torch.load(first / "checkpoints" / "last.ckpt", weights_only=True)
    elsewhere = str(hostile["good"])  # a checkpoint outside the resumed run's folder
    for key, callback_state in state["callbacks"].items():
        if "best_model_path" in callback_state:
            callback_state["best_model_path"] = elsewhere
    planted = tmp_path / "planted.ckpt"
    torch.save(state, planted)
    second = tmp_path / "second"
    status, err = run_cli(["fit", *common, "--trainer.default_root_dir", second, "--trainer.max_epochs", "1",
                           "--ckpt_path", planted, "--test_after_fit", "true"], capsys)  # fmt: skip
    assert status == 0, err[-2000:]
    metrics = (second / "metrics.json").read_text()
    assert elsewhere not in metrics and str(hostile["good"].parent) not in metrics
