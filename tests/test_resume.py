"""Crash and resume: SIGKILL mid-epoch, `fit --ckpt_path last`, same result as never stopping."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).parents[1]


def fit(root: Path, run: Path, *extra: str, check: bool = True) -> subprocess.CompletedProcess:
    args = [
        sys.executable, "-m", "cxr_lightning", "fit",
        "--model", "cxr_lightning.models.BaselineCNN", "--model.channels", "[8, 8, 16, 16, 16]", "--model.head_dropout", "0.4",
        f"--data.data_root={root}", "--data.split=official", "--data.val_fraction=0.25", "--data.seed=0",
        "--data.image_size=32", "--data.batch_size=16", "--data.num_workers=0", "--data.class_weights=log",
        f"--trainer.default_root_dir={run}", "--trainer.max_epochs=3", "--trainer.accelerator=cpu", "--trainer.devices=1",
        "--trainer.deterministic=true", "--trainer.logger=false", "--trainer.enable_progress_bar=false", "--seed_everything=0",
        "--resume_checkpoint.every_n_train_steps=1", "--resume_checkpoint.train_time_interval=null", *extra,
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'tests'}"}
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=600, check=check)


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_equals_an_uninterrupted_run(synthetic_root, tmp_path):
    fit(synthetic_root, tmp_path / "straight")
    # 120 training images in batches of 16: 8 steps an epoch; step 11 is in the middle of epoch 2.
    killed = fit(synthetic_root, tmp_path / "killed", "--trainer.callbacks+=helpers.kill_at_step.KillAtStep",
                 "--trainer.callbacks.step=11", check=False)  # fmt: skip
    assert killed.returncode == -9, killed.stderr[-2000:]
    last = torch.load(tmp_path / "killed" / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 11 and last["epoch"] == 1
    resumed = fit(synthetic_root, tmp_path / "killed", "--ckpt_path=last")
    assert "not resumable" not in resumed.stderr
    a = torch.load(tmp_path / "straight" / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(tmp_path / "killed" / "checkpoints" / "last.ckpt", weights_only=True)
    assert a["global_step"] == b["global_step"] == 24
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key
    thresholds = [json.loads((tmp_path / run / "thresholds.json").read_text()) for run in ("straight", "killed")]
    assert thresholds[0] == thresholds[1]
    # Stopped cleanly after epoch 2 of 3 (last.ckpt from the end of an epoch), then resumed: the
    # same weights too, dropout included (the loaders do not draw from the global RNG).
    fit(synthetic_root, tmp_path / "two_then_three", "--trainer.max_epochs=2")
    fit(synthetic_root, tmp_path / "two_then_three", "--trainer.max_epochs=3", "--ckpt_path=last")
    c = torch.load(tmp_path / "two_then_three" / "checkpoints" / "last.ckpt", weights_only=True)
    assert c["global_step"] == 24
    for key, value in a["state_dict"].items():
        assert torch.equal(value, c["state_dict"][key]), key
