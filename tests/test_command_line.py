"""One command line: every command listed by ``--help``, one option spelling, no abbreviations."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

import cxr_lightning
from cxr_lightning.cli import main as cli
from cxr_lightning.cli.main import COMMANDS, LIGHTNING_COMMANDS
from cxr_lightning.cli.parser import CommandParser, canonical_arguments


def test_help_lists_every_command_with_its_usage(capsys):
    assert cli(["--help"]) == 0
    out = capsys.readouterr().out
    for name, command in COMMANDS.items():
        assert re.search(rf"^  {re.escape(name)} +{re.escape(command.summary)}$", out, re.M), name
        assert f"cxr-lightning {name} {command.usage}" in out
    assert set(LIGHTNING_COMMANDS) <= set(COMMANDS)


@pytest.mark.parametrize("name", [n for n in COMMANDS if n not in LIGHTNING_COMMANDS])
def test_each_command_has_its_own_help(name, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli([name, "--help"])
    assert exit_info.value.code == 0
    assert f"usage: cxr-lightning {name}" in capsys.readouterr().out


def test_an_unknown_command_is_one_line_naming_the_commands(capsys):
    assert cli(["trian", "--config", "demo"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'trian'" in err and "fit, validate, test, predict, predict-files" in err


def test_help_shows_one_spelling_per_option(capsys):
    with pytest.raises(SystemExit):
        cli(["predict-files", "--help"])
    out = capsys.readouterr().out
    assert "--ckpt_path CKPT" in out and "--batch_size" in out and "--no_progress" in out
    assert "--checkpoint" not in out and "--batch-size" not in out


def test_earlier_spellings_read_as_the_one_spelling():
    from cxr_lightning.inference.predict_command import build_predict_parser

    parser = build_predict_parser()
    new = parser.parse_args(["--ckpt_path", "m.ckpt", "--images", "a.png", "--batch_size", "3", "--no_progress", "--out", "p.csv"])
    old = parser.parse_args(["--checkpoint", "m.ckpt", "--images", "a.png", "--batch-size=3", "--no-progress", "--out", "p.csv"])
    assert vars(new) == vars(old) and new.batch_size == 3 and new.ckpt_path == Path("m.ckpt")
    # values are never rewritten, nor anything after a bare --
    assert canonical_arguments(["--images", "my-scan.png", "--", "--not-an-option"]) == ["--images", "my-scan.png", "--", "--not-an-option"]
    assert canonical_arguments(["--root=/data/nih", "--size", "64"]) == ["--data_root=/data/nih", "--image_size", "64"]


def test_data_subcommands_read_the_earlier_spellings_too(tmp_path):
    from cxr_lightning.data.commands import build_parser

    args = build_parser().parse_args(["synth", "--out", str(tmp_path), "--num-images", "7", "--image-size", "32"])
    assert (args.num_images, args.image_size) == (7, 32)
    args = build_parser().parse_args(["prepare", "--root", str(tmp_path), "--size", "48"])
    assert (args.data_root, args.image_size) == (tmp_path, 48)


@pytest.mark.parametrize(
    ("argv", "refusal"),
    [
        (["predict-files", "--ckpt", "m.ckpt", "--images", "a.png", "--out", "p.csv"], "required: --ckpt_path"),
        (["predict-files", "--ckpt_path", "m.ckpt", "--image", "a.png", "--out", "p.csv"], "required: --images"),
        (["report", "--run", "runs"], "unrecognized arguments: --run runs"),
        (["data", "synth", "--out", "x", "--num", "5"], "unrecognized arguments: --num 5"),
        (["fit", "--config", "demo", "--trainer.max_epoch", "1"], "--trainer.max_epoch"),
    ],
)
def test_no_option_is_taken_by_its_prefix(argv, refusal, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli(argv)
    assert exit_info.value.code == 2
    assert refusal in capsys.readouterr().err


def test_a_new_option_must_use_the_one_spelling():
    parser = CommandParser(prog="x")
    with pytest.raises(ValueError, match="spell it --batch_size"):
        parser.add_argument("--batch-size")
    with pytest.raises(ValueError, match="spell it --ckpt_path"):
        parser.add_argument("--checkpoint")


def test_every_command_outside_lightningcli_uses_the_command_parser():
    package = Path(cxr_lightning.__file__).parent
    plain = [str(p.relative_to(package)) for p in package.rglob("*.py") if "argparse.ArgumentParser(" in p.read_text()]
    assert plain == ["cli/parser.py"] or plain == [], plain
    for name in COMMANDS:
        if COMMANDS[name].module is not None:
            assert callable(importlib.import_module(COMMANDS[name].module).main)
