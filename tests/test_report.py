"""`cxr-lightning report`: the paper's tables with this project's values beside the paper's."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pandas as pd

from cxr_lightning.cli import main
from cxr_lightning.data.labels import LABELS
from cxr_lightning.evaluation.delong import delong_test
from cxr_lightning.evaluation.paper_results import ALL_RUNS
from cxr_lightning.evaluation.predictions_file import read_predictions

METRICS = {"recall_macro": 0.41234, "precision_macro": 0.3, "f1_macro": 0.31, "auroc_macro": 0.77777, "auroc_findings": 0.76, "exact_match": 0.2}


def fake_run(folder, tuned, default, seed=0):
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps({"tuned": tuned, "default": default, "num_images": 40, "thresholds": dict.fromkeys(LABELS, 0.4)}))
    (folder / "config.yaml").write_text("data:\n  data_root: data/nih\n")
    labels = np.random.default_rng(0).random((40, 15)) < 0.3
    probs = np.clip(labels * 0.3 + np.random.default_rng(seed).random((40, 15)) * 0.7, 0, 1)
    frame = pd.DataFrame({"image": [f"{i:08d}_000.png" for i in range(40)]})
    for i, name in enumerate(LABELS):
        frame[f"prob_{name}"] = probs[:, i]
    for i, name in enumerate(LABELS):
        frame[f"label_{name}"] = labels[:, i].astype(int)
    frame.to_csv(folder / "test_predictions.csv", index=False)


def test_report_fills_cells_with_ours_and_the_papers_and_marks_missing_runs(tmp_path):
    runs = tmp_path / "runs"
    fake_run(runs / "resnet_log", tuned=METRICS, default={**METRICS, "f1_macro": 0.25})
    assert main(["report", "--runs", str(runs)]) == 0
    report = (runs / "report.md").read_text()
    # Table 1, log weights: our value, then the paper's in brackets
    assert re.search(r"\| Recall \(macro\) \| missing \(0\.3875\) \| 0\.4123 \[0\.\d{3}, 0\.\d{3}\] \(0\.4150\) \| missing \(0\.4266\) \|", report)
    assert re.search(r"\| AUC \(macro\) \| missing \(0\.6912\) \| 0\.7778 \[0\.\d{3}, 0\.\d{3}\] \(0\.7745\) \|", report)
    # Table 6 compares the 0.5 and tuned thresholds of the same run
    assert re.search(r"\| F1-score \(macro\) \| 0\.2500 \[.*\] \(0\.2689\) \| 0\.3100 \[.*\] \(0\.3103\) \|", report)
    # Table 4 is computed from the metadata, not copied
    assert "| Hernia | 0.17 (0.17) | 0.12 (0.12) | 0.34 (0.34) |" in report
    assert report.count("| done |") == 1 and report.count("| missing | - | - |") == len(ALL_RUNS) - 1
    # Figure 1: the ResNet's ROC figure is drawn, the other two are reported missing
    assert (runs / "figures" / "roc_resnet_log_conv.png").exists() is False
    fake_run(runs / "resnet_log_conv", tuned=METRICS, default=METRICS)
    assert main(["report", "--runs", str(runs), "--out", str(tmp_path / "out" / "report.md")]) == 0
    report = (tmp_path / "out" / "report.md").read_text()
    assert "![ResNet-50, log weights + conv input layers](figures/roc_resnet_log_conv.png)" in report
    assert (tmp_path / "out" / "figures" / "roc_resnet_log_conv.png").stat().st_size > 10_000
    assert "- Baseline CNN (`cnn`): missing" in report


def test_pairwise_tests_and_calibration_use_the_runs_predictions(tmp_path):
    runs = tmp_path / "runs"
    for seed, name in enumerate(("cnn", "resnet_log_conv", "beit_model4")):
        fake_run(runs / name, tuned=METRICS, default=METRICS, seed=seed)
    shutil.copy(runs / "cnn" / "test_predictions.csv", runs / "cnn" / "val_predictions.csv")
    assert main(["report", "--runs", str(runs), "--bootstrap", "200"]) == 0
    report = (runs / "report.md").read_text()
    a, b = read_predictions(runs / "cnn" / "test_predictions.csv"), read_predictions(runs / "resnet_log_conv" / "test_predictions.csv")
    expected = delong_test(a.probs[:, 4], b.probs[:, 4], a.targets[:, 4])
    section = report.split("#### DeLong per label: Baseline (CNN) - ResNet")[1]
    assert f"| Effusion | {expected.auc_a:.4f} | {expected.auc_b:.4f} | {expected.diff:+.4f} |" in section
    assert "| Baseline (CNN) - ResNet | " in report and "p=" in report
    assert (runs / "figures" / "reliability_cnn.png").is_file()
    calibration = report.split("### Calibration")[1]
    assert "no val_predictions.csv" in calibration.split("(`resnet_log_conv`)")[1].split("\n")[0]
    assert "no val_predictions.csv" not in calibration.split("(`cnn`)")[1].split("\n")[0]


def test_runs_that_skipped_different_images_are_compared_on_the_images_they_share(tmp_path):
    runs = tmp_path / "runs"
    for seed, name in enumerate(("cnn", "resnet_log_conv", "beit_model4")):
        fake_run(runs / name, tuned=METRICS, default=METRICS, seed=seed)
    beit = runs / "beit_model4" / "test_predictions.csv"
    pd.read_csv(beit).drop(index=[0, 7]).to_csv(beit, index=False)  # two images skipped as unreadable
    assert main(["report", "--runs", str(runs), "--bootstrap", "100"]) == 0
    report = (runs / "report.md").read_text()
    assert "| Baseline (CNN) - BEiT (Vision Transformer) (on the 38 test images both runs predicted (40 and 38)) | " in report
    assert "| Baseline (CNN) - ResNet | " in report  # the full pair is untouched
    a, b = read_predictions(runs / "cnn" / "test_predictions.csv"), read_predictions(beit)
    keep = np.isin(a.images, b.images)
    expected = delong_test(a.probs[keep, 4], b.probs[:, 4], a.targets[keep, 4])
    section = report.split("#### DeLong per label: Baseline (CNN) - BEiT")[1].split("####")[0]
    assert f"| Effusion | {expected.auc_a:.4f} | {expected.auc_b:.4f} | {expected.diff:+.4f} |" in section
