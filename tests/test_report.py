"""`cxr-lightning report`: the paper's tables with this project's values beside the paper's."""

from __future__ import annotations

import json
import re
import shutil
import warnings

import numpy as np
import pandas as pd
import pytest
import torch

from cxr_lightning.cli import main
from cxr_lightning.data.labels import LABELS
from cxr_lightning.evaluation.delong import delong_test
from cxr_lightning.evaluation.metrics import classification_metrics
from cxr_lightning.evaluation.predictions_file import read_predictions

METRICS = {"recall_macro": 0.41234, "precision_macro": 0.3, "f1_macro": 0.31, "auroc_macro": 0.77777, "auroc_findings": 0.76, "exact_match": 0.2}


def fake_predictions(n=40, seed=0, labels=LABELS, first_patient=0):
    targets = np.random.default_rng(0).random((n, len(labels))) < 0.3
    probs = np.clip(targets * 0.3 + np.random.default_rng(seed).random((n, len(labels))) * 0.7, 0, 1)
    frame = pd.DataFrame({"image": [f"{first_patient + i:08d}_000.png" for i in range(n)]})
    for i, name in enumerate(labels):
        frame[f"prob_{name}"] = probs[:, i]
    for i, name in enumerate(labels):
        frame[f"label_{name}"] = targets[:, i].astype(int)
    return frame


def computed_metrics(frame, thresholds, labels=LABELS):
    probs = torch.tensor(frame[[f"prob_{n}" for n in labels]].to_numpy())
    targets = torch.tensor(frame[[f"label_{n}" for n in labels]].to_numpy())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = classification_metrics(probs, targets, torch.tensor([thresholds[n] for n in labels]), list(labels))
    return {k: v for k, v in result.items() if k != "per_label"}


def fake_run(folder, tuned=None, default=None, seed=0, labels=LABELS, config="data:\n  data_root: data/nih\n"):
    """A run folder whose metrics.json is what `test` would write for its predictions (or the given values)."""
    folder.mkdir(parents=True)
    frame = fake_predictions(seed=seed, labels=labels)
    thresholds = dict.fromkeys(labels, 0.4)
    written = {"tuned": tuned or computed_metrics(frame, thresholds, labels), "default": default or computed_metrics(frame, dict.fromkeys(labels, 0.5), labels),
               "num_images": 40, "thresholds": thresholds}  # fmt: skip
    (folder / "metrics.json").write_text(json.dumps(written))
    (folder / "config.yaml").write_text(config)
    frame.to_csv(folder / "test_predictions.csv", index=False)
    return written


def test_report_fills_cells_with_ours_and_the_papers_and_marks_missing_runs(tmp_path):
    runs = tmp_path / "runs"
    written = fake_run(runs / "resnet_log")
    assert main(["report", "--runs", str(runs)]) == 0
    report = (runs / "report.md").read_text()
    tuned, default = written["tuned"], written["default"]
    # Table 1, log weights: our value, then the paper's in brackets
    recall = f"{tuned['recall_macro']:.4f}"
    assert re.search(rf"\| Recall \(macro\) \| missing \(0\.3875\) \| {recall} \[0\.\d{{3}}, 0\.\d{{3}}\] \(0\.4150\) \| missing \(0\.4266\) \|", report)
    assert re.search(rf"\| AUC \(macro\) \| missing \(0\.6912\) \| {tuned['auroc_macro']:.4f} \[0\.\d{{3}}, 0\.\d{{3}}\] \(0\.7745\) \|", report)
    # Table 6 compares the 0.5 and tuned thresholds of the same run
    assert re.search(rf"\| F1-score \(macro\) \| {default['f1_macro']:.4f} \[.*\] \(0\.2689\) \| {tuned['f1_macro']:.4f} \[.*\] \(0\.3103\) \|", report)
    # Table 4 is computed from the metadata (the run's data root is not found here: the packaged metadata, said so)
    assert "| Hernia | 0.17 (0.17) | 0.12 (0.12) | 0.34 (0.34) |" in report and "is not found from here" in report
    # only the run that exists is listed; the other rows say missing
    assert "| `resnet_log` | done | 40 |" in report and report.count("| `") == report.count("| `resnet_log` |")
    assert "| AUC (macro) | missing (0.6912) |" in report
    # Figure 1: the ResNet's ROC figure is drawn, the other two are reported missing
    assert (runs / "figures" / "roc_resnet_log_conv.png").exists() is False
    fake_run(runs / "resnet_log_conv")
    assert main(["report", "--runs", str(runs), "--out", str(tmp_path / "out" / "report.md")]) == 0
    report = (tmp_path / "out" / "report.md").read_text()
    assert "![ResNet-50, log weights + conv input layers](figures/roc_resnet_log_conv.png)" in report
    assert (tmp_path / "out" / "figures" / "roc_resnet_log_conv.png").stat().st_size > 10_000
    assert "- Baseline CNN (`cnn`): missing" in report


def test_pairwise_tests_and_calibration_use_the_runs_predictions(tmp_path):
    runs = tmp_path / "runs"
    for seed, name in enumerate(("cnn", "resnet_log_conv", "beit_model4")):
        fake_run(runs / name, seed=seed)
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
        fake_run(runs / name, seed=seed)
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


# ----- any run folder, seeds, external predictions, checks against metrics.json -----


def test_every_run_folder_is_listed_with_its_settings_and_gets_a_per_finding_table(tmp_path):
    runs = tmp_path / "runs"
    fake_run(runs / "my_densenet", config="model:\n  class_path: cxr_lightning.models.BackboneClassifier\n  init_args:\n"
             "    backbone: torchvision/densenet121\nseed_everything: 3\ndata:\n  data_root: data/nih\n  images:\n    size: 224\n")  # fmt: skip
    assert main(["report", "--runs", str(runs), "--bootstrap", "50"]) == 0
    report = (runs / "report.md").read_text()
    assert re.search(r"\| `my_densenet` \| done \| 40 \| 40 images, \d+ of them in the official test list \| "
                     r"BackboneClassifier, torchvision/densenet121, 224 px, seed 3 \|", report)
    section = report.split("#### `my_densenet`: ")[1].split("####")[0]
    predictions = read_predictions(runs / "my_densenet" / "test_predictions.csv")
    expected = classification_metrics(torch.tensor(predictions.probs), torch.tensor(predictions.targets), 0.4, list(LABELS))["per_label"]
    effusion = expected["Effusion"]
    assert re.search(rf"\| Effusion \| {effusion['positives']} \| {effusion['auroc']:.4f} \[0\.\d{{3}}, [01]\.\d{{3}}\] \| {effusion['f1']:.4f} \| "
                     rf"{effusion['precision']:.4f} \| {effusion['recall']:.4f} \| 0\.400 \|", section)  # fmt: skip
    assert "**macro (15 labels)**" in section and "over the 15 (the 14 findings and No Finding, as in the paper) labels" in report


def test_a_metrics_file_that_disagrees_with_its_predictions_is_reported_not_printed(tmp_path, capsys):
    runs = tmp_path / "runs"
    written = fake_run(runs / "resnet_log", tuned=METRICS)  # metrics.json claims values its predictions do not give
    assert main(["report", "--runs", str(runs), "--bootstrap", "50"]) == 0
    report = (runs / "report.md").read_text()
    recomputed = computed_metrics(pd.read_csv(runs / "resnet_log" / "test_predictions.csv"), dict.fromkeys(LABELS, 0.4))
    assert f"says tuned.auroc_macro = 0.77777, but its test_predictions.csv gives {recomputed['auroc_macro']:.6f}" in report
    assert f"| AUC (macro) | missing (0.6912) | {recomputed['auroc_macro']:.4f} [" in report and "0.7778" not in report
    assert written["default"]["auroc_macro"] == recomputed["auroc_macro"]  # the default group agrees: no note for it
    assert "says default." not in report


def test_a_row_trained_with_seeds_shows_mean_and_sd_and_its_tests_use_every_seed(tmp_path):
    runs = tmp_path / "runs"
    values = []
    for k in range(3):
        values.append(fake_run(runs / "resnet_log_conv" / f"seed{k}", seed=k)["tuned"]["f1_macro"])
    fake_run(runs / "cnn", seed=7)
    assert main(["report", "--runs", str(runs), "--bootstrap", "50"]) == 0
    report = (runs / "report.md").read_text()
    mean, sd = np.mean(values), np.std(values, ddof=1)
    assert f"| F1-score (macro) | missing (0.2236) | missing (0.3103) | {mean:.4f} ± {sd:.4f} (3 seeds) (0.3253) |" in report
    for k in range(3):
        assert f"| `resnet_log_conv/seed{k}` | done | 40 |" in report and f"#### `resnet_log_conv/seed{k}`: " in report
    assert "| Baseline (CNN) - ResNet, means over 1 and 3 seeds | " in report


def test_seed_averaging_of_identical_seeds_changes_nothing():
    from cxr_lightning.evaluation.bootstrap import paired_bootstrap_test, seed_averaged_paired_test

    frame_a, frame_b = fake_predictions(seed=1), fake_predictions(seed=2)
    probs_a, probs_b = frame_a.filter(like="prob_").to_numpy(), frame_b.filter(like="prob_").to_numpy()
    targets = frame_a.filter(like="label_").to_numpy()
    patients = np.arange(40) // 3
    single = paired_bootstrap_test(probs_a, probs_b, targets, 0.4, 0.5, patients, n_resamples=200, seed=3, label_names=LABELS)
    twice = seed_averaged_paired_test([probs_a, probs_a], [probs_b], targets, [0.4, 0.4], [0.5], patients, n_resamples=200, seed=3,
                                      label_names=LABELS)  # fmt: skip
    pd.testing.assert_frame_equal(single["metrics"], twice["metrics"])
    assert twice["seeds"] == (2, 1)
    # a different second seed moves the mean: the test uses it
    other = seed_averaged_paired_test([probs_a, probs_b], [probs_b], targets, [0.4, 0.4], [0.5], patients, n_resamples=200, seed=3,
                                      label_names=LABELS)  # fmt: skip
    assert other["metrics"].loc["auroc_macro", "a"] == pytest.approx((single["metrics"].loc["auroc_macro", "a"] + single["metrics"].loc["auroc_macro", "b"]) / 2)


def _official_test_names(n):
    from cxr_lightning.data.metadata import packaged_file, read_image_list

    return sorted(read_image_list(packaged_file("test_list.txt.gz")))[:n]


def test_external_predictions_join_nih_labels_and_are_compared_on_the_shared_images(tmp_path):
    from cxr_lightning.data.metadata import read_metadata

    runs = tmp_path / "runs"
    names = _official_test_names(60)
    ours = fake_predictions(n=60)
    ours["image"] = names
    meta = read_metadata(quiet=True)
    truth = meta.label_matrix(LABELS)[meta.positions(names)]
    for i, label in enumerate(LABELS):
        ours[f"label_{label}"] = truth[:, i].astype(int)
    for row in ("cnn", "resnet_log_conv", "beit_model4"):
        (runs / row).mkdir(parents=True)
        ours.to_csv(runs / row / "test_predictions.csv", index=False)
    external = pd.DataFrame({"Image Index": names[10:]})  # 50 of our 60 images, 14 labels, no label_ columns
    for label in LABELS[:-1] if LABELS[-1] != "No Finding" else [n for n in LABELS if n != "No Finding"]:
        external[f"prob_{label}"] = np.random.default_rng(4).random(50)
    external.to_csv(tmp_path / "published.csv", index=False)
    assert main(["report", "--runs", str(runs), "--bootstrap", "50", "--external", f"chexnet={tmp_path / 'published.csv'}"]) == 0
    report = (runs / "report.md").read_text()
    assert "| `chexnet` | done | 50 | 50 of the 25,596 official test images | external predictions (" in report
    assert "| `chexnet` - Baseline (CNN) | 50 images, 14 labels |" in report
    assert "over the 14 or 15" in report
    # its labels came from NIH's metadata, by image name
    section = report.split("#### `chexnet`: external predictions")[1].split("####")[0]
    effusion = int(truth[10:, LABELS.index("Effusion")].sum())
    assert re.search(rf"\| Effusion \| {effusion} \| ", section) and "0.5 (no tuned thresholds)" in section


def test_an_external_file_that_is_not_predictions_is_one_line_naming_it(tmp_path, capsys):
    (tmp_path / "runs").mkdir()
    bad = tmp_path / "bad.csv"
    pd.DataFrame({"image": ["00000001_000.png"], "prob_Pneumonitis": [0.3]}).to_csv(bad, index=False)
    assert main(["report", "--runs", str(tmp_path / "runs"), "--external", str(bad)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{bad}: columns ['prob_Pneumonitis'] are not NIH labels" in err


def test_the_synthetic_banner_shows_only_for_synthetic_runs(tmp_path):
    runs = tmp_path / "runs"
    fake_run(runs / "cnn")
    assert main(["report", "--runs", str(runs), "--bootstrap", "20"]) == 0
    assert "these numbers test the plumbing" not in (runs / "report.md").read_text()
    fake_run(runs / "demo", config="data:\n  data_root: data/demo\n  synthetic:\n    num_images: 2000\n")
    assert main(["report", "--runs", str(runs), "--bootstrap", "20"]) == 0
    assert "> **Synthetic data.**" in (runs / "report.md").read_text()


def test_the_tested_images_are_named_against_the_official_test_list():
    from cxr_lightning.evaluation.runs import describe_tested_images

    everything = np.array(_official_test_names(30_000))
    assert describe_tested_images(everything) == "the official test list (25,596 of 25,596)"
    assert describe_tested_images(everything[:-6]) == "25,590 of the 25,596 official test images"
    assert describe_tested_images(np.array(["99999999_000.png", *everything[:2]])) == "3 images, 2 of them in the official test list"


def test_delong_interval_of_a_difference_stays_within_minus_one_and_one():
    targets = np.array([0, 1, 0, 1, 1, 0])
    a = np.array([0.1, 0.9, 0.2, 0.8, 0.7, 0.3])  # AUROC 1
    b = a[::-1].copy()  # AUROC near 0
    result = delong_test(a, b, targets)
    assert -1.0 <= result.ci_low <= result.diff <= result.ci_high <= 1.0
    assert result.ci_high == 1.0 or result.diff + 1.96 * result.se <= 1.0
