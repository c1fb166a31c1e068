"""W&B never blocks training: an unreachable server or a failing login falls back to offline."""

from __future__ import annotations

import os
import time

import pytest
import wandb

from cxr_lightning.loggers import SafeWandbLogger


def test_unreachable_server_goes_offline_quickly(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # nothing listens on the discard port
    monkeypatch.setenv("WANDB_SILENT", "true")
    start = time.monotonic()
    with pytest.warns(UserWarning, match="not reachable.*logging offline"):
        logger = SafeWandbLogger(project="cxr-test", save_dir=str(tmp_path), offline=False, connect_timeout=1.0)
    logger.log_metrics({"x": 1.0}, step=0)
    logger.experiment.finish()
    assert time.monotonic() - start < 60
    assert list((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))


def test_failed_online_start_falls_back_to_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setattr("cxr_lightning.loggers.server_reachable", lambda url, timeout: True)
    real_init, calls = wandb.init, []

    def init(**kwargs):
        mode = kwargs.get("mode") or os.environ.get("WANDB_MODE")  # W&B reads its mode from either
        calls.append(mode)
        if mode != "offline":
            raise wandb.errors.AuthenticationError("API key rejected")
        return real_init(**kwargs)

    monkeypatch.setattr(wandb, "init", init)
    logger = SafeWandbLogger(project="cxr-test", save_dir=str(tmp_path), offline=False)
    with pytest.warns(UserWarning, match="AuthenticationError.*logging offline"):
        experiment = logger.experiment
    experiment.finish()
    assert calls == [None, "offline"] and list((tmp_path / "wandb").glob("offline-run-*"))
    assert "WANDB_MODE" not in os.environ  # offline for that run only, not for the rest of the process
