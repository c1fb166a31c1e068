"""One run per folder: a second run into a folder in use is refused at start; the lock never goes stale."""

from __future__ import annotations

import errno
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import namedtuple
from pathlib import Path

import pytest
import torch

from cxr_lightning.cli import main as cli_main
from cxr_lightning.training.run_lock import LOCK_NAME, RunFolderError, RunFolderLock, is_global_rank_zero

REPO = Path(__file__).parents[1]
HOLD_LOCK = """
import sys, time
from cxr_lightning.training.run_lock import RunFolderLock
lock = RunFolderLock(sys.argv[1]).acquire("holder")  # kept: a collected lock is released
print("locked", flush=True)
time.sleep(600)
"""


def fit_args(root: Path, run: Path, *extra: str) -> list[str]:
    return ["fit", "--model", "cxr_lightning.models.BaselineCNN", "--model.channels", "[8, 8, 16, 16, 16]",
            f"--data.data_root={root}", "--data.split=official", "--data.val_fraction=0.25", "--data.image_size=32",
            "--data.batch_size=16", "--data.num_workers=0", f"--trainer.default_root_dir={run}", "--trainer.max_epochs=1",
            "--trainer.limit_train_batches=1", "--trainer.limit_val_batches=1", "--trainer.accelerator=cpu",
            "--trainer.logger=false", "--trainer.enable_progress_bar=false", *extra]  # fmt: skip


def test_a_second_lock_on_a_folder_is_refused_and_names_the_holder(tmp_path):
    first = RunFolderLock(tmp_path / "run").acquire("cxr-lightning fit --config demo.yaml")
    with pytest.raises(RunFolderError, match=r"in use by another run \(pid \d+ on .*cxr-lightning fit --config demo.yaml\)"):
        RunFolderLock(tmp_path / "run").acquire("second")
    first.release()
    RunFolderLock(tmp_path / "run").acquire("third").release()  # free again once released


def test_the_lock_of_a_killed_process_is_free_at_once(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(tmp_path / "run")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunFolderError, match="in use by another run"):
            RunFolderLock(tmp_path / "run").acquire("second")
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    assert (tmp_path / "run" / LOCK_NAME).exists()  # the file stays; the lock went with the process
    RunFolderLock(tmp_path / "run").acquire("after the crash").release()


def test_fit_into_a_folder_in_use_is_refused_before_it_writes_anything(synthetic_root, tmp_path, capsys):
    run = tmp_path / "run"
    lock = RunFolderLock(run).acquire("cxr-lightning fit (the first run)")
    try:
        status = cli_main(fit_args(synthetic_root, run))
    finally:
        lock.release()
    err = capsys.readouterr().err
    assert status == 1 and "cxr-lightning: error: run folder" in err and "the first run" in err, err[-1500:]
    assert sorted(p.name for p in run.iterdir()) == [LOCK_NAME]  # no checkpoints, config or metrics of its own


def test_the_cli_releases_the_lock_when_it_ends_or_fails(synthetic_root, tmp_path, capsys):
    run = tmp_path / "run"
    assert cli_main(fit_args(synthetic_root, run, "--ckpt_path", str(tmp_path / "missing.ckpt"))) == 1
    assert "no such file" in capsys.readouterr().err
    assert cli_main(fit_args(synthetic_root, run)) == 0
    assert (run / "checkpoints" / "last.ckpt").is_file()
    RunFolderLock(run).acquire("after both runs").release()


def test_an_unwritable_run_folder_is_named(tmp_path, monkeypatch):
    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr("builtins.open", read_only)
    with pytest.raises(RunFolderError, match=rf"cannot write into {tmp_path} \(the file system is read-only\)"):
        RunFolderLock(tmp_path).acquire("x")


def test_fit_without_room_for_its_checkpoints_is_refused_before_training(synthetic_root, tmp_path, capsys, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10 * 2**20, 9 * 2**20, 2**20))
    status = cli_main(fit_args(synthetic_root, tmp_path / "run"))
    err = capsys.readouterr().err
    assert status == 1 and "has 1 MiB free, but this run's checkpoints need about" in err, err[-1500:]
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.parametrize("variable, value, zero", [("LOCAL_RANK", "1", False), ("RANK", "3", False), ("NODE_RANK", "1", False),
                                                   ("SLURM_PROCID", "0", True), ("RANK", "0", True)])  # fmt: skip
def test_only_global_rank_zero_takes_the_lock(monkeypatch, variable, value, zero):
    for name in ("RANK", "SLURM_PROCID", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(variable, value)
    assert is_global_rank_zero() is zero


def test_two_fits_started_together_into_one_folder_one_is_refused(synthetic_root, tmp_path):
    """The reported case: two real processes, same default_root_dir, the first one still running."""
    run, go = tmp_path / "run", tmp_path / "go"
    command = [sys.executable, "-m", "cxr_lightning", *fit_args(synthetic_root, run, "--trainer.max_epochs=2")]
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'tests'}"}
    first = subprocess.Popen([*command, "--trainer.callbacks+=helpers.wait_for_file.WaitForFile", f"--trainer.callbacks.path={go}"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not (run / LOCK_NAME).exists() or (run / LOCK_NAME).stat().st_size == 0:
            assert first.poll() is None and time.monotonic() < deadline, first.communicate()[1][-2000:]
            time.sleep(0.1)
        second = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    finally:
        go.touch()
    out, err = first.communicate(timeout=600)
    assert first.returncode == 0, err[-2000:]
    assert second.returncode == 1 and "is in use by another run" in second.stderr and "Traceback" not in second.stderr, second.stderr[-2000:]
    # The first run finished with its own state: two epochs of one step, one best checkpoint.
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 2
    assert len(list((run / "checkpoints").glob("best*.ckpt"))) == 1


@pytest.mark.parametrize("smoke", ["SMOKE=1", "SMOKE=0"])
def test_every_make_row_trains_into_its_own_folder(smoke):
    """Rows cannot collide: each gets its own run folder (the lock refuses the same row run twice at once)."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    plan = subprocess.run(["make", "-n", "-B", "tables", smoke, "BIN=.venv/bin"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    folders = re.findall(r"--trainer\.default_root_dir=(\S+)", plan)
    assert len(folders) >= 12 and len(set(folders)) == len(folders), folders
