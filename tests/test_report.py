"""`cxr-lightning report`: the paper's tables with this project's values beside the paper's."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from cxr_lightning.cli import main
from cxr_lightning.data.labels import LABELS
from cxr_lightning.paper_results import ALL_RUNS

METRICS = {"recall_macro": 0.41234, "precision_macro": 0.3, "f1_macro": 0.31, "auroc_macro": 0.77777, "auroc_findings": 0.76, "exact_match": 0.2}


def fake_run(folder, tuned, default):
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps({"tuned": tuned, "default": default, "num_images": 40, "thresholds": {}}))
    (folder / "config.yaml").write_text("data:\n  data_root: data/nih\n")
    rng = np.random.default_rng(0)
    labels = rng.random((40, 15)) < 0.3
    probs = np.clip(labels * 0.3 + rng.random((40, 15)) * 0.7, 0, 1)
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
    assert "| Recall (macro) | missing (0.3875) | 0.4123 (0.4150) | missing (0.4266) |" in report
    assert "| AUC (macro) | missing (0.6912) | 0.7778 (0.7745) | missing (0.7800) |" in report
    # Table 6 compares the 0.5 and tuned thresholds of the same run
    assert "| F1-score (macro) | 0.2500 (0.2689) | 0.3100 (0.3103) |" in report
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
