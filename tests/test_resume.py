"""Crash and resume: SIGKILL at any save point, `fit --ckpt_path last`, same result as never stopping."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import warnings
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.types import LRSchedulerConfig

from cxr_lightning.training.checkpointing import PLATEAU_STEP_KEY, LatestCheckpoint, _end_last_batch_epoch

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


def last_checkpoint(run: Path) -> dict:
    return torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)


def assert_same_as_straight(straight: Path, run: Path) -> None:
    """Same step, epoch, every weight and buffer, and thresholds as the uninterrupted run."""
    a, b = last_checkpoint(straight), last_checkpoint(run)
    assert (b["global_step"], b["epoch"]) == (a["global_step"], a["epoch"]) == (24, 2)
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key
    assert json.loads((run / "thresholds.json").read_text()) == json.loads((straight / "thresholds.json").read_text())
    # The same best checkpoint, and the same record of it (what test_after_fit and the next resume use).
    assert best_files(run) == best_files(straight)
    assert best_record(a) and best_record(b) == best_record(a)
    assert [record[0] for record in best_record(a)] == best_files(straight)  # last.ckpt knows the best file there is


def best_files(run: Path) -> list[str]:
    return sorted(p.name for p in (run / "checkpoints").glob("best*.ckpt"))


def best_record(checkpoint: dict) -> list[tuple]:
    """The best-checkpoint callback's record in a checkpoint: best file name and score, top-k names."""
    records = []
    for key, state in checkpoint["callbacks"].items():
        if key.startswith("ModelCheckpoint") and state.get("best_model_path"):
            score = state.get("best_model_score")
            records.append((Path(state["best_model_path"]).name, None if score is None else float(score),
                            sorted(Path(p).name for p in state.get("best_k_models", {}))))  # fmt: skip
    return records


@pytest.fixture(scope="module")
def straight(synthetic_root, tmp_path_factory) -> Path:
    """An uninterrupted run of 3 epochs of 8 steps: what every resumed run must end as."""
    run = tmp_path_factory.mktemp("straight")
    fit(synthetic_root, run)
    return run


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_equals_an_uninterrupted_run(synthetic_root, straight, tmp_path):
    # 120 training images in batches of 16: 8 steps an epoch; step 11 is in the middle of epoch 2.
    killed = fit(synthetic_root, tmp_path / "killed", "--trainer.callbacks+=helpers.kill_at_step.KillAtStep",
                 "--trainer.callbacks.step=11", check=False)  # fmt: skip
    assert killed.returncode == -9, killed.stderr[-2000:]
    last = torch.load(tmp_path / "killed" / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 11 and last["epoch"] == 1
    resumed = fit(synthetic_root, tmp_path / "killed", "--ckpt_path=last")
    assert "not resumable" not in resumed.stderr
    # Lightning found last.ckpt for "last" (in the best checkpoint's folder: LatestCheckpoint is no ModelCheckpoint).
    assert f"Restoring states from the checkpoint path at {(tmp_path / 'killed' / 'checkpoints' / 'last.ckpt').resolve()}" in resumed.stderr
    assert_same_as_straight(straight, tmp_path / "killed")
    # Stopped cleanly after epoch 2 of 3 (last.ckpt from the end of an epoch), then resumed: the
    # same weights too, dropout included (the loaders do not draw from the global RNG).
    fit(synthetic_root, tmp_path / "two_then_three", "--trainer.max_epochs=2")
    fit(synthetic_root, tmp_path / "two_then_three", "--trainer.max_epochs=3", "--ckpt_path=last")
    assert_same_as_straight(straight, tmp_path / "two_then_three")


KILL = "--trainer.callbacks+=helpers.kill_at_step.KillAtStep"
KILL_IN_VALIDATION = "--trainer.callbacks+=helpers.kill_at_step.KillInValidationAtStep"
LAST_BATCH_WARNING = "was saved on the last training batch of epoch"


def assert_killed(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == -9, result.stderr[-2000:]


@pytest.mark.slow
def test_killed_in_the_validation_after_an_epochs_last_batch_then_at_a_first_batch_resumes_exactly(
    synthetic_root, straight, tmp_path
):
    # Issue 12: a save on an epoch's last training batch (the 10-minute clock can land there) resumed,
    # but every later save carried epoch counters that read "epoch finished", so resuming one
    # trained that epoch again. last.ckpt now skips that batch for the save after its validation:
    # dying in the validation leaves step 7, which resumes like any mid-epoch save.
    run = tmp_path / "killed"
    assert_killed(fit(synthetic_root, run, KILL_IN_VALIDATION, "--trainer.callbacks.step=8", check=False))
    assert last_checkpoint(run)["global_step"] == 7
    # Killed again on the second batch of epoch 3: last.ckpt is its first batch, saved after a resume.
    first = fit(synthetic_root, run, "--ckpt_path=last", KILL, "--trainer.callbacks.step=17", check=False)
    assert_killed(first)
    assert (last_checkpoint(run)["global_step"], last_checkpoint(run)["epoch"]) == (17, 2)
    second = fit(synthetic_root, run, "--ckpt_path=last")
    assert LAST_BATCH_WARNING not in first.stderr + second.stderr
    assert_same_as_straight(straight, run)


@pytest.mark.slow
def test_resume_from_a_last_batch_save_then_after_validation_then_first_batch_equals_an_uninterrupted_run(
    synthetic_root, straight, tmp_path
):
    # A save taken on epoch 1's last training batch, before its validation: by a user's own
    # step-triggered ModelCheckpoint here (or an older last.ckpt). Resumed from, then killed after
    # epoch 2's validation and on epoch 3's first batch, each resume from a save written after the last.
    run, own = tmp_path / "killed", tmp_path / "own"
    assert_killed(fit(synthetic_root, run, "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
               f"--trainer.callbacks.dirpath={own}", "--trainer.callbacks.every_n_train_steps=8",
               "--trainer.callbacks.save_top_k=-1", KILL_IN_VALIDATION, "--trainer.callbacks.step=8", check=False))  # fmt: skip
    last_batch = own / "epoch=0-step=8.ckpt"
    saved = torch.load(last_batch, weights_only=True)
    assert (saved["global_step"], saved["epoch"]) == (8, 0)
    resumed = fit(synthetic_root, run, f"--ckpt_path={last_batch}", KILL, "--trainer.callbacks.step=16", check=False)
    assert_killed(resumed)
    # Its validation is not run on resume (Lightning's behaviour): said, naming the checkpoint.
    assert f"{last_batch} {LAST_BATCH_WARNING} 0" in resumed.stderr
    assert (last_checkpoint(run)["global_step"], last_checkpoint(run)["epoch"]) == (16, 1)  # after validation
    after_validation = fit(synthetic_root, run, "--ckpt_path=last", KILL, "--trainer.callbacks.step=17", check=False)
    assert_killed(after_validation)
    assert (last_checkpoint(run)["global_step"], last_checkpoint(run)["epoch"]) == (17, 2)  # a first batch
    first_batch = fit(synthetic_root, run, "--ckpt_path=last")
    assert LAST_BATCH_WARNING not in after_validation.stderr + first_batch.stderr
    assert_same_as_straight(straight, run)


def fit_loop_state(batch: tuple[int, int, int, int], epoch: tuple[int, int, int, int], last_batch: bool) -> dict:
    """Lightning's saved fit-loop layout; counters are (ready, started, processed, completed)."""

    def progress(counts):
        current = dict(zip(("ready", "started", "processed", "completed"), counts))
        return {"current": current, "total": dict(current)}

    batches = {**progress(batch), "is_last_batch": last_batch}
    return {"loops": {"fit_loop": {"epoch_progress": progress(epoch), "epoch_loop.batch_progress": batches,
                                   "epoch_loop.state_dict": {"_batches_that_stepped": 7}}}}  # fmt: skip


def test_a_last_batch_save_is_mended_into_an_end_of_epoch_save():
    checkpoint = fit_loop_state((8, 8, 8, 7), (1, 1, 0, 0), last_batch=True)
    assert _end_last_batch_epoch(checkpoint) == 0
    fit_loop = checkpoint["loops"]["fit_loop"]
    assert fit_loop["epoch_progress"]["total"] == {"ready": 1, "started": 1, "processed": 1, "completed": 0}
    assert fit_loop["epoch_loop.batch_progress"]["current"] == {"ready": 8, "started": 8, "processed": 8, "completed": 8}
    assert fit_loop["epoch_loop.state_dict"]["_batches_that_stepped"] == 8


@pytest.mark.parametrize(
    "checkpoint",
    [
        fit_loop_state((5, 5, 5, 4), (1, 1, 0, 0), last_batch=False),  # mid-epoch batch end
        fit_loop_state((8, 8, 8, 8), (1, 1, 0, 0), last_batch=True),  # after the validation
        fit_loop_state((8, 8, 8, 8), (1, 1, 1, 0), last_batch=True),  # at the epoch's end
        {"loops": None},
        {"loops": {"fit_loop": {"epoch_progress": {"current": {}}}}},  # another Lightning's layout
        {},
    ],
    ids=["mid_epoch", "after_validation", "epoch_end", "no_loops", "unknown_layout", "empty"],
)
def test_every_other_save_is_left_as_it_is(checkpoint):
    before = copy.deepcopy(checkpoint)
    assert _end_last_batch_epoch(checkpoint) is None
    assert checkpoint == before


PLATEAU_STATE = {"mode": "min", "best": 0.7, "num_bad_epochs": 0, "last_epoch": 1}


def load_for_fit(checkpoint: dict) -> None:
    trainer = SimpleNamespace(state=SimpleNamespace(fn=TrainerFn.FITTING), ckpt_path="runs/x/last.ckpt")
    LatestCheckpoint().on_load_checkpoint(trainer, None, checkpoint)


def test_resuming_a_last_batch_save_warns_naming_the_checkpoint_and_the_skipped_validation():
    with pytest.warns(
        UserWarning, match=r"runs/x/last.ckpt was saved on the last training batch of epoch 0, before that epoch's validation"
    ):
        load_for_fit({**fit_loop_state((8, 8, 8, 7), (1, 1, 0, 0), last_batch=True), "lr_schedulers": [PLATEAU_STATE]})


@pytest.mark.parametrize("epoch", [(1, 1, 0, 0), (1, 1, 1, 0)], ids=["after_validation", "epoch_end"])
def test_resuming_an_older_epoch_end_save_with_a_plateau_scheduler_warns_of_the_missing_lr_step(epoch):
    # Written before that epoch's plateau step by a trainer without LatestCheckpoint (no step mark).
    checkpoint = {**fit_loop_state((8, 8, 8, 8), epoch, last_batch=True), "lr_schedulers": [PLATEAU_STATE]}
    with pytest.warns(UserWarning, match=r"runs/x/last.ckpt was saved at the end of epoch 0 by an older cxr-lightning or "
                      r"another trainer, before that epoch's ReduceLROnPlateau step"):  # fmt: skip
        load_for_fit(checkpoint)


@pytest.mark.parametrize(
    "checkpoint",
    [
        {**fit_loop_state((8, 8, 8, 8), (1, 1, 0, 0), last_batch=True), "lr_schedulers": [{"last_epoch": 1}]},  # LambdaLR
        {**fit_loop_state((5, 5, 5, 4), (1, 1, 0, 0), last_batch=False), "lr_schedulers": [PLATEAU_STATE]},  # mid-epoch
        {**fit_loop_state((8, 8, 8, 8), (1, 1, 1, 0), last_batch=True), "lr_schedulers": [PLATEAU_STATE], PLATEAU_STEP_KEY: 0},
    ],
    ids=["epoch_end_without_plateau", "mid_epoch_with_plateau", "epoch_end_holding_its_plateau_step"],
)
def test_saves_that_resume_exactly_load_without_a_warning(checkpoint):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_for_fit(checkpoint)


# ----- ReduceLROnPlateau: its epoch-end step is in every save after the epoch's training -----


def plateau_training(frequency: int = 1, scheduler: str = "plateau", val_loss: float | None = 2.0, epoch: int = 1):
    """A live optimizer (lr 0.1) and scheduler (plateau: best 1.0 after one step), and the trainer
    state a checkpoint dump sees in epoch ``epoch``; the plateau would halve the lr on ``val_loss`` 2.0."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.1)
    if scheduler == "plateau":
        live = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=0.5, patience=0)
        live.step(1.0)
        config = LRSchedulerConfig(live, interval="epoch", frequency=frequency, reduce_on_plateau=True, monitor="val/loss")
    else:  # the warmup_linear scheduler's kind
        live = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
        config = LRSchedulerConfig(live, interval="step")
    trainer = SimpleNamespace(
        state=SimpleNamespace(fn=TrainerFn.FITTING), lr_scheduler_configs=[config], optimizers=[optimizer],
        callback_metrics={} if val_loss is None else {"val/loss": torch.tensor(val_loss)}, current_epoch=epoch,
        num_training_batches=8, fit_loop=SimpleNamespace(restarting=False),
        lightning_module=SimpleNamespace(automatic_optimization=True),
    )  # fmt: skip
    return trainer, optimizer, live


def saved(trainer, optimizer, live, batch=(8, 8, 8, 8), epoch=(2, 2, 1, 1), last_batch=True) -> dict:
    """What Lightning dumps (states as the live objects return them), then LatestCheckpoint's hook."""
    checkpoint = {**fit_loop_state(batch, epoch, last_batch), "optimizer_states": [optimizer.state_dict()],
                  "lr_schedulers": [live.state_dict()]}  # fmt: skip
    LatestCheckpoint().on_save_checkpoint(trainer, None, checkpoint)
    return checkpoint


@pytest.mark.parametrize("epoch", [(2, 2, 1, 1), (2, 2, 2, 1)], ids=["after_validation", "epoch_end"])
def test_a_save_after_an_epochs_training_holds_its_plateau_step_and_leaves_the_live_scheduler_alone(epoch):
    trainer, optimizer, live = plateau_training()
    live_before = copy.deepcopy(live.state_dict())
    checkpoint = saved(trainer, optimizer, live, epoch=epoch)
    assert optimizer.param_groups[0]["lr"] == 0.1 and live.state_dict() == live_before  # live: not stepped
    assert checkpoint[PLATEAU_STEP_KEY] == 1
    assert checkpoint["optimizer_states"][0]["param_groups"][0]["lr"] == 0.05  # halved: 2.0 is no better than 1.0
    # Exactly the state the live objects reach by the step Lightning takes next, and not shared with them.
    live.step(torch.tensor(2.0))
    assert checkpoint["lr_schedulers"][0] == live.state_dict()
    assert checkpoint["optimizer_states"][0]["param_groups"][0]["lr"] == optimizer.param_groups[0]["lr"]
    assert checkpoint["lr_schedulers"][0]["_last_lr"] is not live.state_dict()["_last_lr"]


@pytest.mark.parametrize(
    ("training", "where"),
    [
        ({}, {"batch": (5, 5, 5, 4), "epoch": (2, 2, 1, 1), "last_batch": False}),  # mid-epoch: its step comes later
        ({}, {"batch": (8, 8, 8, 7), "epoch": (2, 2, 1, 1)}),  # on the last batch, before its validation
        ({}, {"epoch": (2, 2, 2, 2)}),  # the epoch's end is over: the live state has the step
        ({"scheduler": "warmup_linear"}, {}),  # a step-interval LambdaLR
        ({"frequency": 2, "epoch": 0}, {"epoch": (1, 1, 0, 0)}),  # a plateau that does not step this epoch
        ({"val_loss": None}, {}),  # no val/loss logged: Lightning does not step
    ],
    ids=["mid_epoch", "last_batch_before_validation", "epoch_complete", "lambda_lr", "frequency_not_due", "no_monitor"],
)
def test_other_saves_and_schedulers_are_saved_as_they_are(training, where):
    trainer, optimizer, live = plateau_training(**training)
    checkpoint = saved(trainer, optimizer, live, **where)
    assert checkpoint["optimizer_states"] == [optimizer.state_dict()] and optimizer.param_groups[0]["lr"] == 0.1
    assert checkpoint["lr_schedulers"] == [live.state_dict()]


PLATEAU = ("--model.scheduler=plateau", "--model.plateau_patience=0", "--model.plateau_factor=0.5", "--model.lr=0.03")
KILL_AT_EPOCH_END = "--trainer.callbacks+=helpers.kill_at_step.KillAtEpochEndAtStep"
PLATEAU_WARNING = "ReduceLROnPlateau step"


def learning_rates(checkpoint: dict) -> list[float]:
    return [group["lr"] for state in checkpoint["optimizer_states"] for group in state["param_groups"]]


@pytest.fixture(scope="module")
def straight_plateau(synthetic_root, tmp_path_factory) -> Path:
    """An uninterrupted run with ReduceLROnPlateau (patience 0): at lr 0.03 val/loss stops improving."""
    run = tmp_path_factory.mktemp("straight_plateau")
    fit(synthetic_root, run, *PLATEAU)
    return run


def assert_same_schedule_as_straight(straight: Path, run: Path) -> None:
    """As assert_same_as_straight, and the same scheduler state and learning rates in last.ckpt and
    in the best checkpoint (saved at an epoch's end, before its plateau step, by ModelCheckpoint)."""
    assert_same_as_straight(straight, run)
    a, b = last_checkpoint(straight), last_checkpoint(run)
    # The schedule really moved (else this compares nothing): halved at least once, and the last
    # epoch's step is in the final last.ckpt (three steps in three epochs).
    assert learning_rates(a) != [0.03] and a["lr_schedulers"][0]["last_epoch"] == 3
    assert b["lr_schedulers"] == a["lr_schedulers"]
    assert learning_rates(b) == learning_rates(a)
    (best,) = (straight / "checkpoints").glob("best*.ckpt")
    a, b = torch.load(best, weights_only=True), torch.load(run / "checkpoints" / best.name, weights_only=True)
    assert a["lr_schedulers"][0]["last_epoch"] == a["epoch"] + 1  # its epoch's plateau step is in it
    assert (b["lr_schedulers"], learning_rates(b)) == (a["lr_schedulers"], learning_rates(a))


@pytest.mark.slow
def test_plateau_killed_after_a_validation_then_at_a_first_batch_resumes_exactly(synthetic_root, straight_plateau, tmp_path):
    # Killed as epoch 1 ends: last.ckpt (and best) are the saves after its validation, before its
    # plateau step. Then killed as epoch 3 starts: last.ckpt is epoch 2's end-of-epoch save.
    run = tmp_path / "killed"
    assert_killed(fit(synthetic_root, run, *PLATEAU, KILL_AT_EPOCH_END, "--trainer.callbacks.step=8", check=False))
    after_validation = last_checkpoint(run)
    assert (after_validation["global_step"], after_validation["epoch"], after_validation[PLATEAU_STEP_KEY]) == (8, 0, 0)
    assert after_validation["lr_schedulers"][0]["last_epoch"] == 1  # its plateau step is in it
    first = fit(synthetic_root, run, *PLATEAU, "--ckpt_path=last", KILL, "--trainer.callbacks.step=16", check=False)
    assert_killed(first)
    assert (last_checkpoint(run)["global_step"], last_checkpoint(run)["epoch"]) == (16, 1)
    second = fit(synthetic_root, run, *PLATEAU, "--ckpt_path=last")
    assert PLATEAU_WARNING not in first.stderr + second.stderr
    assert_same_schedule_as_straight(straight_plateau, run)


@pytest.mark.slow
def test_plateau_killed_in_a_validation_then_after_a_first_batch_resumes_exactly(synthetic_root, straight_plateau, tmp_path):
    # Killed as epoch 1's validation starts (last.ckpt: step 7), then after epoch 3's first batch
    # (step 17): each resume ends an epoch it started inside, where Lightning skips the plateau step.
    run = tmp_path / "killed"
    assert_killed(fit(synthetic_root, run, *PLATEAU, KILL_IN_VALIDATION, "--trainer.callbacks.step=8", check=False))
    assert last_checkpoint(run)["global_step"] == 7
    first = fit(synthetic_root, run, *PLATEAU, "--ckpt_path=last", KILL, "--trainer.callbacks.step=17", check=False)
    assert_killed(first)
    assert (last_checkpoint(run)["global_step"], last_checkpoint(run)["epoch"]) == (17, 2)
    second = fit(synthetic_root, run, *PLATEAU, "--ckpt_path=last")
    assert PLATEAU_WARNING not in first.stderr + second.stderr
    assert_same_schedule_as_straight(straight_plateau, run)


# ----- last.ckpt files of the earlier LatestCheckpoint (a ModelCheckpoint subclass) -----


def legacy_state_key(**settings) -> str:
    """The key the earlier LatestCheckpoint (a ModelCheckpoint subclass) saved its state under."""
    return ModelCheckpoint(save_last=True, save_top_k=0, **settings).state_key.replace("ModelCheckpoint", "LatestCheckpoint", 1)


@pytest.mark.parametrize(
    "settings",
    [{"every_n_train_steps": 1}, {"train_time_interval": timedelta(minutes=10)}, {"every_n_train_steps": 0, "train_time_interval": None}, {}],
    ids=["steps", "clock_as_in_the_cli", "explicit_zero", "defaults"],
)
def test_the_state_key_is_the_one_older_last_ckpt_files_hold(settings):
    assert LatestCheckpoint(**settings).state_key == legacy_state_key(**settings)


@pytest.mark.slow
def test_a_last_ckpt_of_the_earlier_modelcheckpoint_based_callback_resumes_exactly(synthetic_root, straight, tmp_path):
    # Its last.ckpt holds ModelCheckpoint's state under "LatestCheckpoint{...}", and the model class
    # at the top level beside LightningCLI's record of it (a re-exported path).
    run = tmp_path / "older"
    fit(synthetic_root, run, "--trainer.max_epochs=1")
    path = (run / "checkpoints" / "last.ckpt").resolve()
    checkpoint = torch.load(path, weights_only=True)
    older = ModelCheckpoint(dirpath=path.parent, save_last=True, save_top_k=0, every_n_train_steps=1, enable_version_counter=False)
    older.last_model_path = str(path)
    assert not any(key.startswith("LatestCheckpoint") for key in checkpoint["callbacks"])  # the new one saves no state
    checkpoint["callbacks"][legacy_state_key(every_n_train_steps=1)] = older.state_dict()
    checkpoint["model_class_path"] = checkpoint["hyper_parameters"]["_class_path"]
    checkpoint["hyper_parameters"]["_class_path"] = "cxr_lightning.models.BaselineCNN"
    torch.save(checkpoint, path)
    resumed = fit(synthetic_root, run, "--ckpt_path=last")
    assert f"Restoring states from the checkpoint path at {path}" in resumed.stderr
    assert "Please add the following callbacks" not in resumed.stderr  # its state was recognised, not reported missing
    assert_same_as_straight(straight, run)


# ----- when LatestCheckpoint saves: every n steps, on its clock, never twice a step -----


def saving_trainer(global_step: int = 3, **state) -> SimpleNamespace:
    saves: list = []
    trainer = SimpleNamespace(
        global_step=global_step, num_training_batches=8, sanity_checking=False, fast_dev_run=False, current_epoch=0,
        fit_loop=SimpleNamespace(restarting=False, state_dict=dict),
        state=SimpleNamespace(fn=TrainerFn.FITTING), strategy=SimpleNamespace(broadcast=lambda value: value),
        save_checkpoint=lambda path, weights_only: saves.append((path, trainer.global_step, weights_only)), saves=saves, **state,
    )  # fmt: skip
    return trainer


def test_the_clock_saves_only_once_training_has_started_and_never_on_an_epochs_last_batch(tmp_path):
    callback, trainer = LatestCheckpoint(dirpath=tmp_path, train_time_interval=timedelta(0)), saving_trainer()
    callback.on_train_batch_end(trainer, None, None, None, batch_idx=2)
    assert trainer.saves == []  # the clock starts with training
    callback.on_train_start(trainer, None)
    callback.on_train_batch_end(trainer, None, None, None, batch_idx=2)
    callback.on_train_batch_end(trainer, None, None, None, batch_idx=2)  # the same step again
    trainer.global_step = 8
    callback.on_train_batch_end(trainer, None, None, None, batch_idx=7)  # the epoch's last batch: saved after its validation
    callback.on_validation_end(trainer, None)
    callback.on_train_epoch_end(trainer, None)  # saved after the validation already
    assert trainer.saves == [(str(tmp_path / "last.ckpt"), 3, False), (str(tmp_path / "last.ckpt"), 8, False)]


@pytest.mark.parametrize(
    ("settings", "steps_saved"),
    [({"every_n_train_steps": 2}, [2, 4, 6]), ({"train_time_interval": timedelta(hours=1)}, []), ({}, [])],
    ids=["every_2_steps", "clock_not_due", "no_trigger"],
)
def test_step_and_clock_triggers(tmp_path, settings, steps_saved):
    callback, trainer = LatestCheckpoint(dirpath=tmp_path, **settings), saving_trainer()
    callback.on_train_start(trainer, None)
    for step in range(1, 8):
        trainer.global_step = step
        callback.on_train_batch_end(trainer, None, None, None, batch_idx=step - 1)
    assert [step for _, step, _ in trainer.saves] == steps_saved


@pytest.mark.parametrize("state", [{"sanity_checking": True}, {"fast_dev_run": 1}, {"state": SimpleNamespace(fn=TrainerFn.VALIDATING)}],
                         ids=["sanity_check", "fast_dev_run", "validate"])  # fmt: skip
def test_nothing_is_saved_outside_training(tmp_path, state):
    callback, trainer = LatestCheckpoint(dirpath=tmp_path, every_n_train_steps=1), saving_trainer()
    for name, value in state.items():
        setattr(trainer, name, value)
    callback.on_train_start(trainer, None)
    callback.on_train_batch_end(trainer, None, None, None, batch_idx=2)
    callback.on_validation_end(trainer, None)
    assert trainer.saves == []
