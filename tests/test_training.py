"""Training through the CLI on synthetic data: outputs, thresholds, optimisation, DDP equality."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from sklearn.metrics import f1_score, roc_auc_score

from cxr_lightning.cli import main
from cxr_lightning.data.labels import LABELS
from cxr_lightning.models import BaselineCNN, BEiTClassifier

TINY_CNN = ["--model", "cxr_lightning.models.BaselineCNN", "--model.channels", "[8, 8, 16, 16, 16]"]


def cli_args(root: Path, run: Path, *extra: str, epochs: int = 1) -> list[str]:
    return [
        *TINY_CNN,
        f"--data.data_root={root}", "--data.split.name=official", "--data.split.val_fraction=0.25", "--data.split.seed=0",
        "--data.images.size=32", "--data.loading.batch_size=16", "--data.loading.num_workers=0", "--data.labels.class_weights=log",
        f"--trainer.default_root_dir={run}", f"--trainer.max_epochs={epochs}", "--trainer.accelerator=cpu",
        "--trainer.devices=1", "--trainer.logger=false", "--trainer.enable_progress_bar=false",
        "--seed_everything=0", *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def trained_run(synthetic_root, tmp_path_factory):
    """One short fit + test of a tiny CNN; later tests inspect its outputs."""
    run = tmp_path_factory.mktemp("run")
    main(["fit", *cli_args(synthetic_root, run, "--test_after_fit=true", epochs=2)])
    return run


def test_fit_writes_checkpoints_thresholds_and_test_outputs(trained_run, synthetic_root):
    assert sorted(p.name for p in (trained_run / "checkpoints").glob("last*.ckpt")) == ["last.ckpt"]
    assert len(list((trained_run / "checkpoints").glob("best*.ckpt"))) == 1
    for name in ("metrics.json", "per_label.csv", "test_predictions.csv", "thresholds.json", "val_predictions.csv", "roc_curves.png"):
        assert (trained_run / name).is_file(), name
    predictions = pd.read_csv(trained_run / "test_predictions.csv")
    test_list = (synthetic_root / "test_list.txt").read_text().split()
    assert sorted(predictions["image"]) == sorted(test_list)
    # image, the tested images' age, sex and view (from the data's own metadata), then the probabilities
    assert list(predictions.columns[:4]) == ["image", "age", "sex", "view"]
    assert list(predictions.columns[4:19]) == [f"prob_{n}" for n in LABELS]
    meta = pd.read_csv(synthetic_root / "Data_Entry_2017_v2020.csv").set_index("Image Index")
    first = predictions.iloc[0]
    assert (first["sex"], first["view"]) == (meta.loc[first["image"], "Patient Gender"], meta.loc[first["image"], "View Position"])


def test_reported_metrics_equal_sklearn_on_the_written_predictions(trained_run):
    metrics = json.loads((trained_run / "metrics.json").read_text())
    predictions = pd.read_csv(trained_run / "test_predictions.csv")
    probs = predictions[[f"prob_{n}" for n in LABELS]].to_numpy()
    labels = predictions[[f"label_{n}" for n in LABELS]].to_numpy()
    present = [i for i in range(15) if 0 < labels[:, i].sum() < len(labels)]
    auroc = np.mean([roc_auc_score(labels[:, i], probs[:, i]) for i in present])
    assert metrics["tuned"]["auroc_macro"] == pytest.approx(auroc, abs=1e-4)  # probabilities stored to 6 digits
    thresholds = np.array([metrics["thresholds"][n] for n in LABELS])
    for group, cut in (("default", 0.5), ("tuned", thresholds)):
        decisions = (probs >= cut).astype(int)
        assert metrics[group]["f1_macro"] == pytest.approx(f1_score(labels, decisions, average="macro", zero_division=0), abs=2e-3)
        assert metrics[group]["exact_match"] == pytest.approx((decisions == labels).all(axis=1).mean(), abs=2e-3)


def test_tested_thresholds_are_the_best_f1_thresholds_of_the_written_validation_predictions(trained_run):
    from cxr_lightning.evaluation.metrics import best_f1_thresholds

    val = pd.read_csv(trained_run / "val_predictions.csv")
    probs = torch.tensor(val[[f"prob_{n}" for n in LABELS]].to_numpy(), dtype=torch.float32)
    targets = torch.tensor(val[[f"label_{n}" for n in LABELS]].to_numpy())
    tuned = json.loads((trained_run / "metrics.json").read_text())["thresholds"]
    # the CSV keeps 6 significant digits, so allow for that rounding
    assert best_f1_thresholds(probs, targets).tolist() == pytest.approx([tuned[n] for n in LABELS], abs=1e-5)


def test_checkpoint_carries_tuned_thresholds(trained_run):
    best = next((trained_run / "checkpoints").glob("best*.ckpt"))
    state = torch.load(best, map_location="cpu", weights_only=False)
    thresholds = state["state_dict"]["thresholds"]
    assert thresholds.shape == (15,) and not torch.allclose(thresholds, torch.full((15,), 0.5))
    model = BaselineCNN.load_from_checkpoint(best, map_location="cpu")
    assert torch.equal(model.thresholds, thresholds) and model.label_names == list(LABELS)
    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert [metrics["thresholds"][n] for n in LABELS] == pytest.approx(thresholds.tolist())


def test_thresholds_are_the_best_f1_on_validation(trained_run, synthetic_root, tmp_path):
    """validate on the best checkpoint re-tunes on the whole validation set: same thresholds."""
    best = next((trained_run / "checkpoints").glob("best*.ckpt"))
    run = tmp_path / "validate"
    main(["validate", *cli_args(synthetic_root, run), f"--ckpt_path={best}"])
    tuned = json.loads((run / "thresholds.json").read_text())
    model = BaselineCNN.load_from_checkpoint(best, map_location="cpu")
    assert list(tuned["thresholds"].values()) == pytest.approx(model.thresholds.tolist(), abs=1e-6)
    assert tuned["num_images"] == _part_size(synthetic_root, "val")


def _part_size(root: Path, part: str) -> int:
    from cxr_lightning.data import ChestXrayDataModule

    dm = ChestXrayDataModule(data_root=root, split={"name": "official", "val_fraction": 0.25, "seed": 0})
    return len(dm._tables()[1].part(part))


def test_head_is_optimised_and_gradients_are_clipped(synthetic_root, tmp_path):
    model = BaselineCNN(channels=(8, 8, 16, 16, 16), lr=1.0)
    optimizer = model.configure_optimizers()
    optimised = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert all(id(p) in optimised for p in model.head.parameters())
    assert optimised == {id(p) for p in model.parameters()}

    from lightning.pytorch import Callback, Trainer

    from cxr_lightning.data import ChestXrayDataModule

    class GradNorms(Callback):
        norms: list[float] = []

        def on_train_start(self, trainer, pl_module):
            def record(optimizer, args, kwargs):
                grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
                self.norms.append(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])).item())

            # post hook: Lightning computes the gradients inside optimizer.step(closure), then clips
            trainer.optimizers[0].register_step_post_hook(record)

    def run(clip):
        recorder = GradNorms()
        recorder.norms = []
        dm = ChestXrayDataModule(data_root=synthetic_root, split={"name": "official", "val_fraction": 0.25}, images={"size": 32},
                                 loading={"batch_size": 16, "num_workers": 0}, labels={"class_weights": "linear"})  # fmt: skip
        trainer = Trainer(max_steps=4, limit_val_batches=0, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                          accelerator="cpu", callbacks=[recorder], gradient_clip_val=clip, default_root_dir=tmp_path)  # fmt: skip
        trainer.fit(BaselineCNN(channels=(8, 8, 16, 16, 16), label_names=dm.label_names, pos_weight=dm.pos_weight), datamodule=dm)
        return recorder.norms

    unclipped, clipped = run(None), run(0.05)
    assert len(clipped) == 4 and max(unclipped) > 0.1
    assert max(clipped) <= 0.05 + 1e-4


def test_warmup_linear_schedule(synthetic_root, tmp_path):
    from lightning.pytorch import Callback, Trainer

    from cxr_lightning.data import ChestXrayDataModule

    class LRs(Callback):
        def __init__(self):
            self.lrs = []

        def on_train_batch_start(self, trainer, *args):
            self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])

    lrs = LRs()
    dm = ChestXrayDataModule(data_root=synthetic_root, split={"name": "official", "val_fraction": 0.25}, images={"size": 32},
                             loading={"batch_size": 8, "num_workers": 0})  # fmt: skip
    trainer = Trainer(max_epochs=2, limit_train_batches=5, limit_val_batches=0, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, accelerator="cpu", callbacks=[lrs], default_root_dir=tmp_path)  # fmt: skip
    trainer.fit(BaselineCNN(channels=(8, 8, 8, 8, 8), lr=1e-3, scheduler="warmup_linear", warmup_fraction=0.2), datamodule=dm)
    # 10 steps, 2 of warm-up: 0.5e-3, 1e-3, then linear decay to 0.
    expected = [5e-4, 1e-3] + [1e-3 * (10 - s) / 8 for s in range(2, 10)]
    assert lrs.lrs == pytest.approx(expected)


def test_every_shipped_config_parses(capsys):
    from cxr_lightning.cli.configs import shipped_config_names

    names = shipped_config_names()
    assert {"cnn.yaml", "resnet_linear.yaml", "resnet_log.yaml", "resnet_log_conv.yaml", "demo.yaml"} <= set(names)
    assert {f"beit_model{i}.yaml" for i in range(1, 6)} <= set(names)
    overlays = ("smoke.yaml", "fast.yaml")
    rows = [n for n in names if n not in overlays]
    # The overlays are parsed on top of every row config.
    layered = [["--config", n, "--config", o] for o in overlays for n in rows if n != "demo.yaml"]
    for args in [["--config", n] for n in rows] + layered:
        name = args[1]
        with pytest.raises(SystemExit) as exit_info:
            main(["fit", *args, "--print_config"])
        assert exit_info.value.code in (0, None), name
        printed = yaml.safe_load(capsys.readouterr().out)
        assert printed["model"]["class_path"].startswith("cxr_lightning.models."), name
        assert printed["checkpoint"]["monitor"] == "val/loss" and printed["trainer"]["default_root_dir"].startswith("runs/")
        assert "num_labels" not in printed["model"]["init_args"]  # linked from the data, never typed


def test_printed_config_is_commented(capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--config", "resnet_log.yaml", "--print_config=comments"])
    printed = capsys.readouterr().out
    assert "# torchvision ``ResNet50_Weights`` name" in printed and "# positive-class loss weights from the train split" in printed


def test_bare_config_names_resolve_to_shipped_configs(tmp_path, monkeypatch):
    from cxr_lightning.cli.configs import resolve_config_args

    monkeypatch.chdir(tmp_path)
    resolved = resolve_config_args(["fit", "--config", "resnet_log.yaml", "--config=cnn"])
    assert resolved[2].endswith("configs/resnet_log.yaml") and Path(resolved[2]).is_file()
    assert resolved[3].startswith("--config=") and resolved[3].endswith("configs/cnn.yaml")
    (tmp_path / "resnet_log.yaml").write_text("model: {}\n")
    assert resolve_config_args(["fit", "--config", "resnet_log.yaml"])[2] == "resnet_log.yaml"  # a local file wins
    with pytest.raises(SystemExit, match="neither a file nor a shipped config"):
        resolve_config_args(["fit", "--config", "nope.yaml"])


def test_resnet_and_beit_train_through_the_cli(synthetic_root, tmp_path):
    common = [f"--data.data_root={synthetic_root}", "--data.split.name=official", "--data.split.val_fraction=0.25",
              "--data.images.size=32", "--data.loading.batch_size=4", "--data.loading.num_workers=0", "--trainer.fast_dev_run=2",
              "--trainer.accelerator=cpu", "--trainer.logger=false", "--trainer.enable_progress_bar=false"]  # fmt: skip
    main(["fit", "--model=cxr_lightning.models.ResNet50Classifier", "--model.weights=null", f"--trainer.default_root_dir={tmp_path}/r", *common])
    tiny = '{"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64, "image_size": 32, "patch_size": 8}'
    main(["fit", "--model=cxr_lightning.models.BEiTClassifier", f"--model.config={tiny}", "--model.metadata_hidden=[16, 16]",
          "--data.images.normalization=beit", f"--trainer.default_root_dir={tmp_path}/b", *common])  # fmt: skip


ODD_SPLIT = ["--data.split.name=patient", "--data.split.fractions=[0.4, 0.3, 0.3]", "--data.split.seed=6"]


@pytest.mark.slow
def test_two_process_ddp_gives_the_same_metrics_and_thresholds(trained_run, synthetic_root, tmp_path):
    """gloo on the CPU: validate (threshold tuning) and test on 1 and 2 processes agree exactly."""
    best = next((trained_run / "checkpoints").glob("best*.ckpt"))
    results = {}
    for devices in (1, 2):
        run = tmp_path / f"ddp{devices}"
        # Odd-sized val (65) and test (35) parts: the distributed sampler pads them with repeats,
        # which the collector must drop.
        args = [*cli_args(synthetic_root, run), *ODD_SPLIT, "--data.loading.eval_batch_size=5", f"--trainer.devices={devices}", f"--ckpt_path={best}"]
        if devices == 2:
            args += ["--trainer.strategy=ddp"]
        for command in ("validate", "test"):
            env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
            subprocess.run([sys.executable, "-m", "cxr_lightning", command, *args], check=True, env=env, timeout=300)
        results[devices] = (json.loads((run / "thresholds.json").read_text()), json.loads((run / "metrics.json").read_text()))
    assert results[1][0]["num_images"] == results[2][0]["num_images"] == 65
    assert results[1][0]["thresholds"] == pytest.approx(results[2][0]["thresholds"], abs=1e-6)
    assert results[1][1]["num_images"] == results[2][1]["num_images"] == 35
    for group in ("default", "tuned"):
        for key, value in results[1][1][group].items():
            assert results[2][1][group][key] == pytest.approx(value, abs=1e-6, nan_ok=True), (group, key)


def test_predict_writes_probabilities_and_tuned_decisions(trained_run, synthetic_root, tmp_path):
    best = next((trained_run / "checkpoints").glob("best*.ckpt"))
    run = tmp_path / "predict"
    main(["predict", *cli_args(synthetic_root, run), f"--ckpt_path={best}"])
    predictions = pd.read_csv(run / "predictions.csv")
    tested = pd.read_csv(trained_run / "test_predictions.csv").set_index("image")
    assert sorted(predictions["image"]) == sorted(tested.index)
    thresholds = json.loads((trained_run / "metrics.json").read_text())["thresholds"]
    for label in ("Effusion", "No Finding"):
        probs = predictions.set_index("image")[f"prob_{label}"]
        assert np.allclose(probs, tested.loc[probs.index, f"prob_{label}"], atol=1e-5)
        assert (predictions[f"pred_{label}"] == (predictions[f"prob_{label}"] >= thresholds[label]).astype(int)).all()


def test_wandb_offline_run_writes_local_files(synthetic_root, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = tmp_path / "wandb_run"
    args = [a for a in cli_args(synthetic_root, run, "--test_after_fit=true") if a != "--trainer.logger=false"]
    main(["fit", *args, "--trainer.logger=lightning.pytorch.loggers.WandbLogger", "--trainer.logger.offline=true",
          "--trainer.logger.project=cxr-test", "--trainer.limit_train_batches=2"])  # fmt: skip
    offline_runs = list((run / "wandb").glob("offline-run-*"))
    assert len(offline_runs) == 1 and list(offline_runs[0].glob("run-*.wandb"))
    media = offline_runs[0] / "files" / "media"
    assert list(media.glob("images/test/roc_curves*.png")) and list(media.glob("table/test/thresholds*.table.json"))
    assert (run / "metrics.json").is_file()


@pytest.mark.slow
def test_demo_config_learns_the_synthetic_findings(tmp_path, monkeypatch):
    """The README's `make demo` job, as shipped, in a temporary folder: macro AUROC >= 0.90."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_SILENT", "true")
    main(["fit", "--config", "demo.yaml", "--trainer.enable_progress_bar=false"])
    metrics = json.loads((tmp_path / "runs" / "demo" / "metrics.json").read_text())
    assert metrics["num_images"] == len((tmp_path / "data" / "demo" / "test_list.txt").read_text().split())
    assert metrics["tuned"]["auroc_macro"] >= 0.90 and metrics["tuned"]["auroc_findings"] >= 0.90


def test_missing_data_and_missing_weights_are_clear_errors(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["fit", "--config", "resnet_log.yaml"]) == 1
    err = capsys.readouterr().err
    assert "no images under" in err and "cxr-lightning data download --data_root data/nih" in err
    images = tmp_path / "nih" / "images"
    images.mkdir(parents=True)
    (images / "00000001_000.png").write_bytes(b"")
    missing = tmp_path / "resnet50.pth"
    assert main(["fit", "--config", "resnet_log.yaml", "--data.data_root=nih", f"--model.weights_path={missing}"]) == 1
    err = capsys.readouterr().err
    assert str(missing) in err and "Traceback" not in err


def test_transfer_learning_trains_only_the_head_and_plateau_watches_val_loss():
    tiny = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64, "image_size": 32, "patch_size": 8}
    model = BEiTClassifier(config=tiny, freeze_backbone=True, metadata_dim=3, metadata_hidden=(64, 32))
    optimizer = model.configure_optimizers()
    optimised = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert optimised == {id(p) for p in model.head.parameters()}
    assert model.head.classifier.in_features == 32 + 32
    plateau = BaselineCNN(channels=(8, 8, 8, 8, 8), scheduler="plateau").configure_optimizers()
    assert plateau["lr_scheduler"]["monitor"] == "val/loss"
    assert isinstance(plateau["lr_scheduler"]["scheduler"], torch.optim.lr_scheduler.ReduceLROnPlateau)


def test_fourteen_findings_only(synthetic_root, tmp_path):
    run = tmp_path / "findings"
    main(["fit", *cli_args(synthetic_root, run, "--data.include_no_finding=false", "--test_after_fit=true")])
    metrics = json.loads((run / "metrics.json").read_text())
    assert list(metrics["thresholds"]) == [n for n in LABELS if n != "No Finding"]
    # without No Finding the paper's macro AUROC and the findings' mean are the same number
    assert metrics["tuned"]["auroc_macro"] == pytest.approx(metrics["tuned"]["auroc_findings"])
    assert BaselineCNN(num_labels=14).label_names == [n for n in LABELS if n != "No Finding"]


@pytest.mark.slow
def test_two_process_fit_writes_outputs_and_wandb_files_once(synthetic_root, tmp_path):
    # (--trainer.sync_batchnorm needs GPUs: PyTorch's SyncBatchNorm refuses CPU modules.)
    run = tmp_path / "ddp_fit"
    args = [a for a in cli_args(synthetic_root, run, "--test_after_fit=true") if a != "--trainer.logger=false"]
    args += ["--trainer.devices=2", "--trainer.strategy=ddp", "--trainer.limit_train_batches=2",
             "--trainer.logger=cxr_lightning.loggers.SafeWandbLogger", "--trainer.logger.project=cxr-test"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1]), "WANDB_SILENT": "true"}
    done = subprocess.run([sys.executable, "-m", "cxr_lightning", "fit", *args], env=env, timeout=300, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(list((run / "wandb").glob("offline-run-*"))) == 1  # rank 0 only
    assert json.loads((run / "metrics.json").read_text())["num_images"] == _part_size(synthetic_root, "test")


def test_fit_from_the_image_cache(synthetic_root, tmp_path):
    import shutil

    root = tmp_path / "cached"
    shutil.copytree(synthetic_root, root)
    assert main(["data", "prepare", "--root", str(root), "--size", "32", "--workers", "0", "--no-progress"]) == 0
    run = tmp_path / "run"
    main(["fit", *cli_args(root, run, "--data.image_cache=required", "--test_after_fit=true", "--trainer.limit_train_batches=3")])
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["num_images"] == len((root / "test_list.txt").read_text().split())
    # the written predictions name their images (the report groups them by patient)
    assert sorted(pd.read_csv(run / "test_predictions.csv")["image"]) == sorted((root / "test_list.txt").read_text().split())


def test_last_ckpt_is_the_newest_state_not_the_best(synthetic_root, tmp_path):
    """last.ckpt follows every epoch (with its tuned thresholds), whichever epoch was best; a rerun overwrites it."""
    run = tmp_path / "run"
    # "Best" by the lowest epoch number keeps epoch 0, so best and last must differ.
    main(["fit", *cli_args(synthetic_root, run, "--checkpoint.monitor=epoch", "--checkpoint.mode=min", epochs=3)])
    checkpoints = run / "checkpoints"
    assert json.loads((run / "thresholds.json").read_text())["epoch"] == 2
    assert sorted(p.name for p in checkpoints.glob("last*.ckpt")) == ["last.ckpt"]
    last = torch.load(checkpoints / "last.ckpt", weights_only=True)
    best = torch.load(next(checkpoints.glob("best*.ckpt")), weights_only=True)
    steps_per_epoch = best["global_step"] // (best["epoch"] + 1)
    assert last["epoch"] == 2 and last["global_step"] == 3 * steps_per_epoch
    assert best["epoch"] < last["epoch"]
    thresholds = json.loads((run / "thresholds.json").read_text())
    assert torch.allclose(last["state_dict"]["thresholds"].double(), torch.tensor(list(thresholds["thresholds"].values()), dtype=torch.float64), atol=1e-6)
    main(["test", *cli_args(synthetic_root, run, epochs=3), f"--ckpt_path={next(checkpoints.glob('best*.ckpt'))}"])
    tested = json.loads((run / "metrics.json").read_text())
    assert tested["epoch"] == best["epoch"] and tested["checkpoint"].endswith("checkpoints/best.ckpt")
    main(["fit", *cli_args(synthetic_root, run, epochs=1)])
    # a rerun into the same folder rewrites best.ckpt and last.ckpt in place: no best-v1.ckpt beside a stale one
    assert sorted(p.name for p in checkpoints.glob("*.ckpt")) == ["best.ckpt", "last.ckpt"]
    assert torch.load(checkpoints / "best.ckpt", weights_only=True)["epoch"] == 0
    assert torch.load(checkpoints / "last.ckpt", weights_only=True)["epoch"] == 0


def test_the_cli_cnn_keeps_its_dropout_default(capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--model", "cxr_lightning.models.BaselineCNN", "--print_config"])
    config = yaml.safe_load(capsys.readouterr().out)
    assert config["model"]["init_args"]["head_dropout"] == 0.4


def test_epochs_without_validation_save_last_and_step_the_plateau_on_fresh_losses(synthetic_root, tmp_path):
    run = tmp_path / "run"
    main(["fit", *cli_args(synthetic_root, run, "--model.scheduler=plateau", "--trainer.check_val_every_n_epoch=2", epochs=3)])
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["epoch"] == 2 and last["global_step"] == 3 * (last["global_step"] // 3)
    scheduler = last["lr_schedulers"][0]
    assert scheduler["last_epoch"] == 1  # stepped once: after the only validation (epoch 1)


def test_reduced_precision_keeps_thresholds_and_predictions_exact(synthetic_root, tmp_path):
    """bf16-true: thresholds stay float32; bf16-mixed: metrics.json is recomputed exactly from test_predictions.csv."""
    true_run = tmp_path / "bf16_true"
    main(["fit", *cli_args(synthetic_root, true_run, "--trainer.precision=bf16-true")])
    state = torch.load(true_run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    tuned = json.loads((true_run / "thresholds.json").read_text())["thresholds"]
    assert state["thresholds"].dtype == torch.float32
    assert state["thresholds"].tolist() == pytest.approx(list(tuned.values()), abs=1e-7)

    mixed = tmp_path / "bf16_mixed"
    main(["fit", *cli_args(synthetic_root, mixed, "--trainer.precision=bf16-mixed", "--test_after_fit=true")])
    metrics = json.loads((mixed / "metrics.json").read_text())
    frame = pd.read_csv(mixed / "test_predictions.csv")
    probs, labels = frame[[f"prob_{n}" for n in LABELS]].to_numpy(), frame[[f"label_{n}" for n in LABELS]].to_numpy()
    assert len(np.unique(probs)) > 0.9 * probs.size  # float32 logits: no bf16 ties
    decisions = (probs >= np.array([metrics["thresholds"][n] for n in LABELS])).astype(int)
    assert metrics["tuned"]["f1_macro"] == pytest.approx(f1_score(labels, decisions, average="macro", zero_division=0), abs=1e-6)


def test_after_fit_the_best_validation_is_not_logged_and_outputs_name_the_weights_epoch(synthetic_root, tmp_path):
    run = tmp_path / "run"
    main(["fit", *cli_args(synthetic_root, run, "--test_after_fit=true", "--checkpoint.save_top_k=0", epochs=2),
          "--trainer.logger=lightning.pytorch.loggers.CSVLogger", f"--trainer.logger.save_dir={run}"])  # fmt: skip
    logged = pd.read_csv(next(run.rglob("metrics.csv")))
    assert logged["val/loss"].notna().sum() == 2  # the two epochs; not the re-validation after fit
    assert logged["test/loss"].notna().sum() == 1
    for name in ("metrics.json", "thresholds.json"):
        record = json.loads((run / name).read_text())
        assert record["epoch"] == 1 and record["checkpoint"] is None  # the in-memory weights of the last epoch


@pytest.mark.slow
def test_ddp_with_many_unreadable_images_neither_fails_nor_hangs(synthetic_root, tmp_path):
    """A rank whose batches are all unreadable still takes part in every reduction; skips are counted once."""
    import shutil

    root = tmp_path / "nih"
    shutil.copytree(synthetic_root, root)
    images = sorted((root / "images").glob("*.png"))
    for path in images[::2]:
        path.write_bytes(b"not a png")
    corrupt = {p.name for p in images[::2]}
    test_names = set((root / "test_list.txt").read_text().split())
    run = tmp_path / "run"
    args = [*cli_args(root, run, "--test_after_fit=true"), "--data.loading.batch_size=2", "--data.loading.eval_batch_size=2",
            "--data.images.on_bad=skip", "--trainer.devices=2", "--trainer.strategy=ddp"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    done = subprocess.run([sys.executable, "-m", "cxr_lightning", "fit", *args], env=env, timeout=300, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["num_images"] == len(test_names - corrupt)
    assert f"[test]: {len(test_names & corrupt)} unreadable images skipped" in done.stderr


def test_evaluations_whose_every_image_is_unreadable_report_nan_metrics(synthetic_root, tmp_path):
    """on_bad_image=skip with no readable image at all: fit, validation and test finish with NaN metrics."""
    import shutil
    import warnings

    root = tmp_path / "nih"
    shutil.copytree(synthetic_root, root)
    for path in (root / "images").glob("*.png"):
        path.write_bytes(b"not a png")
    run = tmp_path / "run"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        main(["fit", *cli_args(root, run, "--test_after_fit=true", "--data.on_bad_image=skip")])
    said = [str(w.message) for w in caught]
    assert any(m.startswith("[val] epoch 0: no readable image to score") for m in said), said
    assert any(m.startswith("[test]: no readable image to score") for m in said), said
    assert json.loads((run / "thresholds.json").read_text())["num_images"] == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["num_images"] == 0
    assert metrics["tuned"]["auroc_macro"] is None and metrics["default"]["f1_macro"] is None  # NaN in JSON
    assert (run / "roc_curves.png").stat().st_size > 0


def test_an_abbreviated_option_is_refused_not_taken_for_the_full_one(capsys):
    """argparse's prefix matching took --trainer.max_epoch for --trainer.max_epochs without a word."""
    with pytest.raises(SystemExit) as refused:
        main(["fit", "--config", "demo.yaml", "--trainer.max_epoch", "1", "--print_config"])
    assert refused.value.code == 2
    assert "unrecognized arguments: --trainer.max_epoch 1" in capsys.readouterr().err
    with pytest.raises(SystemExit) as printed:
        main(["fit", "--config", "demo.yaml", "--trainer.max_epochs", "1", "--print_config"])
    assert printed.value.code in (0, None)
    assert yaml.safe_load(capsys.readouterr().out)["trainer"]["max_epochs"] == 1


@pytest.mark.parametrize(
    "command, abbreviated",
    [
        (["data", "stats"], "--decimal"),  # --decimals
        (["data", "synth", "--out", "x"], "--num-image"),  # --num-images
        (["report"], "--run"),  # --runs
        (["predict-files", "--checkpoint", "c.ckpt", "--images", "a.png", "--out", "p.csv"], "--batch"),  # --batch-size
        (["export", "--checkpoint", "c.ckpt", "--out", "m.onnx"], "--ops"),  # --opset
        (["explain", "--checkpoint", "c.ckpt", "--images", "a.png", "--out", "x"], "--tol"),  # --tolerance
    ],
)
def test_every_command_refuses_abbreviated_options(command, abbreviated, capsys):
    from cxr_lightning.cli.parser import canonical_option

    with pytest.raises(SystemExit) as refused:
        main([*command, abbreviated, "3"])
    assert refused.value.code == 2
    # the refusal shows the option in the one spelling every command uses (--num-image: --num_image)
    assert f"unrecognized arguments: {canonical_option(abbreviated)} 3" in capsys.readouterr().err


def test_a_warning_that_repeats_every_validation_epoch_is_shown_once_per_run(synthetic_root, tmp_path):
    """A label with one class in the validation set gets no AUROC: said once, not after every epoch."""
    import warnings

    root = tmp_path / "nih"
    shutil.copytree(synthetic_root, root)
    csv = root / "Data_Entry_2017_v2020.csv"
    frame = pd.read_csv(csv)
    frame["Finding Labels"] = frame["Finding Labels"].str.replace("Hernia", "Mass")  # no image has Hernia
    frame["Finding Labels"] = frame["Finding Labels"].str.split("|").map(lambda parts: "|".join(dict.fromkeys(parts)))
    frame.to_csv(csv, index=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        main(["fit", *cli_args(root, tmp_path / "run", epochs=3)])
    undefined = [str(w.message) for w in caught if "AUROC is undefined" in str(w.message)]
    assert undefined and "'Hernia'" in undefined[0]
    assert len(undefined) == len(set(undefined))  # three validation epochs, each message once
