"""Wall time and peak memory of ``cxr-lightning report`` on a full-size reproduction (CPU only).

Writes the twelve runs of ``make tables`` (the paper's nine rows and the three imbalance runs) as
run folders of the official test list (25,596 images x 15 labels, NIH's own labels from the packaged
metadata, scores correlated with them) with validation predictions and a ``metrics.json`` that
agrees with its predictions, then runs the report in a fresh process and prints one table: wall
time, peak resident memory, and the report's sections.

    python benchmarks/report_time.py                         # 2,000 resamples
    python benchmarks/report_time.py --bootstrap 500 --keep /tmp/report_bench
"""

from __future__ import annotations

import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from cxr_lightning.cli.parser import CommandParser
from cxr_lightning.data.labels import LABELS
from cxr_lightning.data.metadata import packaged_file, read_image_list, read_metadata
from cxr_lightning.evaluation.markdown import table
from cxr_lightning.evaluation.metrics import best_f1_thresholds, classification_metrics
from cxr_lightning.evaluation.paper_results import ALL_RUNS
from cxr_lightning.evaluation.predictions_file import write_predictions

SIGNAL = 0.6  # how far a positive's score is pushed up: AUROCs near 0.8, like the paper's


def scores(targets: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    noise = rng.random(targets.shape)
    return np.clip(0.15 * noise + SIGNAL * targets * rng.random(targets.shape) + 0.2 * noise**2, 0, 1).astype(np.float32)


def write_run(folder: Path, test_images, test_targets, val_images, val_targets, seed: int) -> None:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    test_probs, val_probs = scores(test_targets, rng), scores(val_targets, rng)
    thresholds = best_f1_thresholds(torch.tensor(val_probs), torch.tensor(val_targets)).numpy()
    write_predictions(folder / "test_predictions.csv", test_images, test_probs, test_targets, LABELS)
    write_predictions(folder / "val_predictions.csv", val_images, val_probs, val_targets, LABELS)
    metrics = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for group, thr in (("default", np.full(len(LABELS), 0.5)), ("tuned", thresholds)):
            result = classification_metrics(torch.tensor(test_probs), torch.tensor(test_targets), torch.tensor(thr), list(LABELS))
            metrics[group] = {k: v for k, v in result.items() if k != "per_label"}
    metrics.update(thresholds=dict(zip(LABELS, thresholds.tolist())), num_images=len(test_images))
    (folder / "metrics.json").write_text(json.dumps(metrics))
    (folder / "config.yaml").write_text(f"seed_everything: {seed}\ndata:\n  data_root: data/nih\n  split:\n    name: paper\n")


def make_runs(root: Path) -> None:
    meta = read_metadata(quiet=True)
    test = sorted(read_image_list(packaged_file("test_list.txt.gz")))
    val = sorted(read_image_list(packaged_file("train_val_list.txt.gz")))[:12_891]
    labels = meta.label_matrix(LABELS)
    test_targets, val_targets = labels[meta.positions(test)].astype(np.int64), labels[meta.positions(val)].astype(np.int64)
    for k, name in enumerate(ALL_RUNS):
        write_run(root / name, test, test_targets, val, val_targets, seed=k)


def main() -> None:
    parser = CommandParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", type=int, default=2000, help="patient-bootstrap resamples (the report's default)")
    parser.add_argument("--keep", type=Path, default=None, help="write the runs and the report here and keep them")
    args = parser.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="report-bench-"))
    runs = root / "runs"
    if not runs.exists():
        make_runs(runs)
    command = [str(Path(sys.executable).parent / "cxr-lightning"), "report", "--runs", str(runs), "--out", str(root / "report.md"),
               "--bootstrap", str(args.bootstrap)]  # fmt: skip
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    text = (root / "report.md").read_text()
    sections = [line[4:] for line in text.splitlines() if line.startswith("### ")]
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}")
    print(table(["runs", "images", "labels", "resamples", "wall s", "peak MiB", "sections"],
                [[str(len(ALL_RUNS)), "25,596", str(len(LABELS)), str(args.bootstrap), f"{wall:.1f}", f"{peak_mib:.0f}", str(len(sections))]]))  # fmt: skip
    print("sections:", "; ".join(sections))
    if args.keep is None:
        shutil.rmtree(root)


if __name__ == "__main__":
    main()
