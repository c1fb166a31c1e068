"""Bad input and unwritable output at the real entry point: one line naming the file and what to do, no traceback.

Every test runs ``cxr_lightning.cli.main([...])`` in-process and reads stderr. Tests run as root,
where a chmod'ed folder stays writable, so a read-only folder is simulated where the write really
happens (the probe's ``open`` raises ``EROFS``/``EACCES``) and a full disk by a write that stores
half its data and raises ``ENOSPC``.
"""

from __future__ import annotations

import errno
import gzip
import json
import os
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest

from cxr_lightning import output_files
from cxr_lightning.cli import main
from cxr_lightning.data import ChestXrayDataModule
from cxr_lightning.data.datamodule import ConfigValueError
from cxr_lightning.data.metadata import MetadataError, packaged_file
from cxr_lightning.models import BaselineCNN
from tests.conftest import NIH_HEADER
from tests.helpers.checkpoints import train_one_step_and_save
from tests.test_report import METRICS, fake_run


def run_cli(capsys, args: list[str]) -> tuple[int, str]:
    """Exit status and stdout+stderr of ``cxr-lightning ARGS``."""
    try:
        status = main([str(a) for a in args])
    except SystemExit as exit_:  # argparse's errors
        status = exit_.code
    captured = capsys.readouterr()
    return status, captured.out + captured.err


def assert_one_line_error(status: int, output: str, *expected: str) -> str:
    assert status not in (0, None), output
    assert "Traceback" not in output, output
    lines = [line for line in output.splitlines() if "error:" in line]
    assert len(lines) == 1, output
    for text in expected:
        assert text in lines[0], (text, lines[0])
    return lines[0]


def no_staging_left(folder: Path) -> bool:
    return not [p.name for p in folder.iterdir() if p.name.endswith(".partial") or p.name.startswith(".write-probe")]


# ----------------------------------------------------------------------------------------------
# 1. empty or bad metadata CSV
# ----------------------------------------------------------------------------------------------
EMPTY_CSVS = {
    "zero_bytes": ("", "is empty (no header, no rows)"),
    "header_only": (NIH_HEADER + "\n", "has a header but no data rows"),
}


def root_with_csv(tmp_path: Path, content: str) -> Path:
    root = tmp_path / "nih"
    root.mkdir()
    (root / "Data_Entry_2017_v2020.csv").write_text(content)
    return root


@pytest.mark.parametrize("kind", EMPTY_CSVS)
@pytest.mark.parametrize("command", ["stats", "split", "prepare"])
def test_data_commands_with_an_empty_metadata_csv_print_one_line(tmp_path, capsys, kind, command):
    content, problem = EMPTY_CSVS[kind]
    root = root_with_csv(tmp_path, content)
    extra = {"stats": [], "split": ["--out", tmp_path / "split"], "prepare": ["--size", "16", "--workers", "0", "--no-progress"]}[
        command
    ]
    status, output = run_cli(capsys, ["data", command, "--root", root, *extra])
    line = assert_one_line_error(status, output, str(root / "Data_Entry_2017_v2020.csv"), problem, "delete it from the data root")
    assert line.startswith("cxr-lightning: error: ")


@pytest.mark.parametrize("kind", EMPTY_CSVS)
def test_fit_with_an_empty_metadata_csv_prints_one_line(tmp_path, capsys, kind):
    content, problem = EMPTY_CSVS[kind]
    root = root_with_csv(tmp_path, content)
    with pytest.raises(MetadataError, match=re.escape(problem)):
        ChestXrayDataModule(data_root=root, loading={"num_workers": 0}).train_label_counts  # noqa: B018 - reading the metadata is the point
    status, output = run_cli(capsys, ["fit", "--config", "demo.yaml", "--data.data_root", root, "--trainer.logger=false",
                                      "--trainer.default_root_dir", tmp_path / "run"])  # fmt: skip
    assert_one_line_error(status, output, str(root / "Data_Entry_2017_v2020.csv"), problem)


MISSING_COLUMN = (
    "Image Index,Finding Labels,Patient ID",
    "00000001_000.png,Mass,1",
    [],
    "missing column(s) ['Patient Age', 'Patient Gender', 'View Position']",
)
# Only stats and split take --bad-values error; prepare needs just the image names.
NON_NUMERIC_AGE = (
    NIH_HEADER,
    "00000001_000.png,Mass,0,1,old,M,PA,1,1,0.1,0.1",
    ["--bad-values", "error"],
    "line 2: non-numeric age 'old'",
)


@pytest.mark.parametrize(
    ("command", "header", "row", "args", "expected"),
    [(c, *MISSING_COLUMN) for c in ("stats", "split", "prepare")] + [(c, *NON_NUMERIC_AGE) for c in ("stats", "split")],
    ids=["stats-missing_column", "split-missing_column", "prepare-missing_column", "stats-non_numeric_age", "split-non_numeric_age"],
)  # fmt: skip
def test_data_commands_with_bad_metadata_print_one_line(tmp_path, capsys, command, header, row, args, expected):
    root = root_with_csv(tmp_path, f"{header}\n{row}\n")
    extra = {"stats": [], "split": ["--out", tmp_path / "split"], "prepare": ["--size", "16", "--workers", "0", "--no-progress"]}[
        command
    ]
    status, output = run_cli(capsys, ["data", command, "--root", root, *args, *extra])
    assert_one_line_error(status, output, str(root / "Data_Entry_2017_v2020.csv"), expected)


# ----------------------------------------------------------------------------------------------
# 2. official lists with a byte-order mark
# ----------------------------------------------------------------------------------------------
def test_official_lists_with_a_byte_order_mark_give_the_paper_split(tmp_path, capsys):
    root = tmp_path / "nih"
    root.mkdir()
    for name in ("train_val_list.txt", "test_list.txt"):
        text = gzip.decompress(packaged_file(name + ".gz").read_bytes()).decode("utf-8")
        (root / name).write_text("\ufeff" + text.replace("\n", "\r\n"), encoding="utf-8")  # as a Windows editor saves it
    test_images = text.split()  # the test list's names; its first one carried the mark
    status, output = run_cli(capsys, ["data", "split", "--root", root, "--out", tmp_path / "split"])
    assert status == 0, output
    assert "test.txt: 25,596 images" in output and "train.txt: 73,633 images" in output
    assert set((tmp_path / "split" / "test.txt").read_text().split()) == set(test_images)


def test_a_duplicate_in_an_official_list_cites_the_files_own_line(tmp_path, capsys, synthetic_root):
    root = tmp_path / "nih"
    shutil.copytree(synthetic_root, root, ignore=shutil.ignore_patterns("images"))
    names = (root / "test_list.txt").read_text().split()
    (root / "test_list.txt").write_text(f"{names[0]}\n\n\n{names[1]}\n{names[0]}\n")
    status, output = run_cli(capsys, ["data", "stats", "--root", root])
    assert_one_line_error(status, output, str(root / "test_list.txt"), f"{names[0]!r} is listed twice (lines 1 and 5)")


# ----------------------------------------------------------------------------------------------
# 3. DataModule options out of range
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("option", "value", "allowed"),
    [
        ("images.size", 0, "16..2048"),
        ("images.size", -64, "16..2048"),
        ("images.size", 100000, "16..2048"),
        ("loading.batch_size", 0, "1..65536"),
        ("loading.batch_size", -3, "1..65536"),
        ("loading.batch_size", 10**9, "1..65536"),
        ("loading.num_workers", -1, "0..1024"),
        ("split.val_fraction", 1.5, "(0, 1)"),
        ("split.val_fraction", 0, "(0, 1)"),
        ("augmentation.horizontal_flip", 1.5, "[0, 1]"),
    ],
)
def test_fit_with_an_option_out_of_range_prints_one_line(tmp_path, capsys, option, value, allowed):
    status, output = run_cli(capsys, ["fit", "--config", "demo.yaml", f"--data.{option}={value}", "--data.data_root", tmp_path / "nih",
                                      "--trainer.logger=false", "--trainer.default_root_dir", tmp_path / "run"])  # fmt: skip
    assert_one_line_error(status, output, f"data.{option}", allowed, repr(value))
    assert not (tmp_path / "nih").exists()  # refused at construction: no synthetic data generated


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"loading": {"eval_batch_size": 0}}, "data.loading.eval_batch_size must be an integer in 1..65536"),
        ({"loading": {"prefetch_factor": 0}}, "data.loading.prefetch_factor must be an integer in 1..1024"),
        ({"images": {"size": 224.5}}, "data.images.size must be an integer"),
        ({"image_size": 224.5}, "data.images.size must be an integer"),  # the flat name of before the sections
        ({"split": {"fractions": (0.7, 0.4, -0.1)}}, "data.split.fractions must be a number in [0, 1]"),
        ({"split": {"fractions": (0.5, 0.1, 0.1)}}, "data.split.fractions must sum to 1"),
        ({"split": {"val_fraction": float("nan")}}, "data.split.val_fraction must be a number in (0, 1)"),
        ({"augmentation": {"brightness": 1.5}}, "data.augmentation.brightness must be a number in [0, 1)"),
        ({"augmentation": {"rotation_degrees": -5}}, "data.augmentation.rotation_degrees must be a number in [0, 180]"),
        ({"augmentation": {"horizontal_flip": 1.5}}, "data.augmentation.horizontal_flip must be a number in [0, 1], got 1.5"),
        ({"augmentation": {"horizontal_flip": -0.1}}, "data.augmentation.horizontal_flip must be a number in [0, 1], got -0.1"),
        ({"augmentation": {"horizontal_flip": "yes"}}, "data.augmentation.horizontal_flip must be a number in [0, 1], got 'yes'"),
        ({"horizontal_flip": float("nan")}, "data.augmentation.horizontal_flip must be a number in [0, 1], got nan"),
    ],
)
def test_datamodule_rejects_other_numeric_options_at_construction(tmp_path, options, expected):
    with pytest.raises(ConfigValueError) as caught:
        ChestXrayDataModule(data_root=tmp_path, **options)
    assert expected in str(caught.value)


# ----------------------------------------------------------------------------------------------
# 4. report: broken runs are named and left out
# ----------------------------------------------------------------------------------------------
def _break_csv_cell(path: Path, data_row: int, column: str, value: str) -> None:
    frame = pd.read_csv(path, dtype=str)
    frame.loc[data_row - 1, column] = value
    frame.to_csv(path, index=False)


def _truncate(run: Path) -> None:
    path = run / "test_predictions.csv"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 40])  # the last line loses its last cells, as when a write stops


BROKEN_RUNS = {
    "invalid_json": (lambda run: (run / "metrics.json").write_text('{"tuned": {"recall_macro": 0.4'), "metrics.json is not valid JSON"),
    "json_list": (lambda run: (run / "metrics.json").write_text("[0.4, 0.5]"), "metrics.json holds a JSON list"),
    "json_wrong_value": (
        lambda run: (run / "metrics.json").write_text(json.dumps({**json.loads((run / "metrics.json").read_text()), "num_images": "many"})),
        "metrics.json: 'num_images' is 'many'",
    ),
    "nan_probability": (lambda run: _break_csv_cell(run / "test_predictions.csv", 3, "prob_Mass", "nan"),
                        "test_predictions.csv, line 4 (data row 3), column prob_Mass: an empty cell or NaN is not a probability"),
    "text_probability": (lambda run: _break_csv_cell(run / "test_predictions.csv", 7, "prob_Edema", "high"),
                         "test_predictions.csv, line 8 (data row 7), column prob_Edema: 'high' is not a probability"),
    "bad_label": (lambda run: _break_csv_cell(run / "test_predictions.csv", 1, "label_Hernia", "2"),
                  "test_predictions.csv, line 2 (data row 1), column label_Hernia: 2 is not a 0/1 label"),
    "truncated_csv": (_truncate, "test_predictions.csv, line 41 (data row 40)"),
}  # fmt: skip


@pytest.mark.parametrize("kind", BROKEN_RUNS)
def test_report_names_a_broken_run_leaves_it_out_and_reports_the_others(tmp_path, capsys, kind):
    damage, expected = BROKEN_RUNS[kind]
    runs = tmp_path / "runs"
    written = fake_run(runs / "resnet_log")
    fake_run(runs / "resnet_log_conv", seed=1)
    damage(runs / "resnet_log_conv")
    status, output = run_cli(capsys, ["report", "--runs", runs, "--bootstrap", "20"])
    assert status == 0 and "Traceback" not in output, output
    warnings = [line for line in output.splitlines() if "left out of the report" in line]
    assert len(warnings) == 1, output
    assert str(runs / "resnet_log_conv") in warnings[0] and expected in warnings[0], warnings[0]
    assert f"cxr-lightning test --config {runs / 'resnet_log_conv' / 'config.yaml'} --ckpt_path" in warnings[0]
    report = (runs / "report.md").read_text()
    assert "| `resnet_log_conv` | broken: " in report and expected in report
    assert "| `resnet_log` | done | 40 |" in report
    # The broken run's cells say so; the usable run's are filled.
    assert f"| AUC (macro) | missing (0.6912) | {written['tuned']['auroc_macro']:.4f} [" in report and "(0.7745) | broken (0.7800) |" in report


def test_report_exits_non_zero_when_every_run_is_broken(tmp_path, capsys):
    runs = tmp_path / "runs"
    fake_run(runs / "cnn")
    (runs / "cnn" / "metrics.json").write_text("")
    status, output = run_cli(capsys, ["report", "--runs", runs, "--bootstrap", "20"])
    assert status == 1 and "Traceback" not in output, output
    assert f"{runs / 'cnn' / 'metrics.json'} is not valid JSON" in output
    assert f"no usable run in {runs}: 1 broken (cnn)" in output
    assert "| `cnn` | broken: " in (runs / "report.md").read_text()


# ----------------------------------------------------------------------------------------------
# 5. read-only output folders and a full disk
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def checkpoint(synthetic_root, tmp_path_factory) -> Path:
    """A tiny CNN checkpoint after one training step on the synthetic data."""
    tmp = tmp_path_factory.mktemp("user_errors")
    dm = ChestXrayDataModule(data_root=synthetic_root, split={"name": "official", "val_fraction": 0.25}, images={"size": 32},
                             loading={"batch_size": 4, "num_workers": 0})  # fmt: skip
    model = BaselineCNN(channels=(8, 8, 8, 8, 8), metadata_dim=dm.metadata_dim, label_names=dm.label_names)
    return train_one_step_and_save(model, dm, tmp / "cnn.ckpt")


def read_only(monkeypatch, folder: Path, error: int = errno.EROFS) -> None:
    """Writing a file under ``folder`` fails as on a read-only file system (or without permission)."""
    real_open = open

    def guarded_open(file, mode="r", *args, **kwargs):
        if any(flag in mode for flag in "wax+") and folder in Path(file).parents:
            raise OSError(error, os.strerror(error), str(file))
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(output_files, "open", guarded_open, raising=False)


def output_commands(tmp_path: Path, synthetic_root: Path, out: Path) -> dict[str, list]:
    """Each command that writes files, with its output under ``out``; the checkpoint is never read (the check comes first)."""
    runs = tmp_path / "runs"
    image = synthetic_root / "images" / min(os.listdir(synthetic_root / "images"))
    return {
        "data_split": ["data", "split", "--root", synthetic_root, "--out", out / "split"],
        "data_stats": ["data", "stats", "--root", synthetic_root, "--out", out / "table.md"],
        "data_synth": ["data", "synth", "--out", out / "synthetic", "--num-images", "20", "--image-size", "32"],
        "data_prepare": ["data", "prepare", "--root", synthetic_root, "--out", out / "cache", "--size", "16", "--workers", "0", "--no-progress"],
        "report": ["report", "--runs", runs, "--out", out / "report.md", "--bootstrap", "20"],
        "predict": ["predict-files", "--ckpt_path", tmp_path / "never-read.ckpt", "--images", image, "--out", out / "preds.csv"],
        "export": ["export", "--checkpoint", tmp_path / "never-read.ckpt", "--out", out / "model.onnx"],
    }  # fmt: skip


@pytest.mark.parametrize("error", [errno.EROFS, errno.EACCES], ids=["read_only_fs", "permission_denied"])
@pytest.mark.parametrize("command", ["data_split", "data_stats", "data_synth", "data_prepare", "report", "predict", "export"])
def test_unwritable_output_folder_is_refused_before_the_work(tmp_path, capsys, monkeypatch, synthetic_root, command, error):
    out = tmp_path / "out"
    read_only(monkeypatch, out, error)
    status, output = run_cli(capsys, output_commands(tmp_path, synthetic_root, out)[command])
    reason = "the file system is read-only" if error == errno.EROFS else "permission denied"
    assert_one_line_error(status, output, "cannot write", str(out), reason, "choose another output folder")
    assert "never-read.ckpt" not in output  # the folder was checked before the checkpoint was opened
    assert not [p for p in out.rglob("*") if p.is_file()]


def test_output_folder_under_a_file_is_refused(tmp_path, capsys, synthetic_root):
    """No simulation: the --out folder's parent is a regular file, which even root cannot write into."""
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file")
    status, output = run_cli(capsys, ["data", "split", "--root", synthetic_root, "--out", blocker / "split"])
    assert_one_line_error(status, output, f"cannot write the split files in {blocker / 'split'}")


def fill_disk_after_half(monkeypatch) -> None:
    """``Path.write_text`` writes half its text and then fails with ENOSPC (the disk filled up)."""
    real = Path.write_text

    def write_text(self, text, *args, **kwargs):
        real(self, text[: len(text) // 2], *args, **kwargs)
        raise OSError(errno.ENOSPC, "No space left on device", str(self))

    monkeypatch.setattr(Path, "write_text", write_text)


def test_data_split_on_a_full_disk_leaves_the_old_files_and_no_half_file(tmp_path, capsys, monkeypatch, synthetic_root):
    out = tmp_path / "split"
    out.mkdir()
    (out / "train.txt").write_text("an older split\n")
    fill_disk_after_half(monkeypatch)
    status, output = run_cli(capsys, ["data", "split", "--root", synthetic_root, "--out", out])
    assert_one_line_error(status, output, f"disk full writing {out / 'train.txt'}", "nothing was written under that name")
    assert (out / "train.txt").read_text() == "an older split\n"
    assert not (out / "val.txt").exists() and not (out / "test.txt").exists()
    assert no_staging_left(out)


def test_report_on_a_full_disk_leaves_no_half_report(tmp_path, capsys, monkeypatch):
    runs = tmp_path / "runs"
    fake_run(runs / "resnet_log", tuned=METRICS, default=METRICS)
    real_open = open

    class HalfWritten:
        def __init__(self, handle):
            self.handle = handle

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

        def write(self, text):
            self.handle.write(text[: len(text) // 2])
            raise OSError(errno.ENOSPC, "No space left on device", self.handle.name)

    def full_disk_open(file, mode="r", *args, **kwargs):
        handle = real_open(file, mode, *args, **kwargs)
        return HalfWritten(handle) if Path(file).name == "report.md" and "w" in mode else handle

    monkeypatch.setattr(output_files, "open", full_disk_open, raising=False)
    status, output = run_cli(capsys, ["report", "--runs", runs, "--bootstrap", "20"])
    assert_one_line_error(status, output, f"disk full writing {runs / 'report.md'}")
    assert not (runs / "report.md").exists() and no_staging_left(runs)


def test_predict_on_a_full_disk_leaves_no_half_csv(tmp_path, capsys, monkeypatch, synthetic_root, checkpoint):
    out = tmp_path / "preds" / "preds.csv"
    real = pd.DataFrame.to_csv

    def to_csv(self, path, *args, **kwargs):
        Path(path).write_text(real(self, None, *args, **kwargs)[:20])
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(pd.DataFrame, "to_csv", to_csv)
    images = sorted((synthetic_root / "images").glob("*.png"))[:3]
    status, output = run_cli(capsys, ["predict-files", "--ckpt_path", checkpoint, "--images", *images, "--out", out, "--no-progress"])
    assert_one_line_error(status, output, f"disk full writing {out}")
    assert not out.exists() and not (out.parent / "preds.skipped.csv").exists() and no_staging_left(out.parent)
    monkeypatch.undo()  # with room on the disk the same command writes both files
    status, output = run_cli(capsys, ["predict-files", "--ckpt_path", checkpoint, "--images", *images, "--out", out, "--no-progress"])
    assert status == 0, output
    assert len(pd.read_csv(out)) == 3 and (out.parent / "preds.skipped.csv").is_file() and no_staging_left(out.parent)


def test_export_on_a_full_disk_leaves_no_half_model(tmp_path, capsys, monkeypatch, checkpoint):
    from cxr_lightning.inference import export

    out = tmp_path / "model.onnx"

    def export_onnx(wrapper, example, path, opset, exporter):
        Path(path).write_bytes(b"half an ONNX model")
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(export, "_export_onnx", export_onnx)
    status, output = run_cli(capsys, ["export", "--checkpoint", checkpoint, "--out", out])
    assert_one_line_error(status, output, f"disk full writing {out}")
    assert not out.exists() and not export.sidecar_path(out).exists() and no_staging_left(tmp_path)


def test_data_prepare_on_a_full_disk_prints_one_line(tmp_path, capsys, monkeypatch, synthetic_root):
    """The cache's own writes (not staged: it is resumable in place) also end in one line when the disk fills."""

    def pwrite(fd, data, offset):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "pwrite", pwrite)
    status, output = run_cli(capsys, ["data", "prepare", "--root", synthetic_root, "--out", tmp_path / "cache", "--size", "16",
                                      "--workers", "0", "--no-progress"])  # fmt: skip
    assert_one_line_error(status, output, "disk full writing", "free space")


# ----------------------------------------------------------------------------------------------
# 6. download URLs
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("base_url", "expected"),
    [("ftp://mirror.example/nih", "unsupported URL scheme 'ftp'"), ("/no/such/mirror", "/no/such/mirror: no such folder")],
)
def test_download_from_an_unusable_url_prints_one_line(tmp_path, capsys, base_url, expected):
    status, output = run_cli(
        capsys, ["data", "download", "--root", tmp_path / "nih", "--base-url", base_url, "--only", "1", "--no-progress"]
    )
    assert_one_line_error(status, output, base_url, expected)


def test_download_from_a_local_mirror_without_the_archive_names_the_file(tmp_path, capsys):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    status, output = run_cli(capsys, ["data", "download", "--root", tmp_path / "nih", "--base-url", mirror.as_uri(), "--only", "3",
                                      "--no-progress"])  # fmt: skip
    assert_one_line_error(status, output, f"local mirror file {mirror / 'images_03.tar.gz'}", "does not exist")


# ----------------------------------------------------------------------------------------------
# an unreadable image met during fit (default policy), decoded in the process and in workers
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("workers", [0, 2])
def test_fit_meeting_an_unreadable_image_prints_one_line_naming_it(synthetic_root, tmp_path, capsys, workers):
    root = tmp_path / "nih"
    shutil.copytree(synthetic_root, root)
    victim = (root / "train_val_list.txt").read_text().split()[0]
    path = root / "images" / victim
    path.write_bytes(path.read_bytes()[:60])  # truncated
    status, output = run_cli(capsys, [
        "fit", "--model", "cxr_lightning.models.BaselineCNN", "--model.channels", "[8, 8, 16, 16, 16]",
        f"--data.data_root={root}", "--data.split.name=official", "--data.split.val_fraction=0.25", "--data.images.size=32",
        "--data.loading.batch_size=200", f"--data.loading.num_workers={workers}", f"--trainer.default_root_dir={tmp_path / 'run'}",
        "--trainer.max_epochs=1", "--trainer.accelerator=cpu", "--trainer.logger=false", "--trainer.enable_progress_bar=false",
        "--trainer.num_sanity_val_steps=0",
    ])  # fmt: skip
    line = assert_one_line_error(status, output, str(path), "--data.images.on_bad skip")
    assert line.startswith("cxr-lightning: error: ") and "Caught" not in line
