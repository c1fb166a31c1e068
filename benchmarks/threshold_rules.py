"""The threshold rules compared on a run's own predictions: test macro F1 with thresholds tuned on validation.

For each run folder (its ``val_predictions.csv`` and ``test_predictions.csv``), the thresholds are
tuned on validation by the paper's ``score`` rule and by the ``midpoint`` rule
(:func:`cxr_lightning.evaluation.metrics.best_f1_thresholds`) and the test macro F1 is computed at
each, on the whole validation set and on random validation samples of ``--sample`` images (small
validation sets are where the two rules differ most). Prints one table row per run.

    python benchmarks/threshold_rules.py runs/demo runs/smoke/cnn --sample 200 --repeats 200
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from cxr_lightning.cli.parser import CommandParser
from cxr_lightning.evaluation.markdown import table
from cxr_lightning.evaluation.metrics import best_f1_thresholds, classification_metrics
from cxr_lightning.evaluation.predictions_file import read_predictions


def test_f1(test, thresholds: torch.Tensor) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return classification_metrics(torch.tensor(test.probs), torch.tensor(test.targets), thresholds, list(test.label_names))["f1_macro"]


def compare(run: Path, sample: int, repeats: int, seed: int) -> list[str]:
    val, test = read_predictions(run / "val_predictions.csv"), read_predictions(run / "test_predictions.csv")
    if val.label_names != test.label_names:
        raise SystemExit(f"{run}: validation and test predictions name different labels")
    probs, targets = torch.tensor(val.probs), torch.tensor(val.targets)
    at_half = test_f1(test, torch.full((len(val.label_names),), 0.5, dtype=torch.float64))
    full = {rule: test_f1(test, best_f1_thresholds(probs, targets, rule)) for rule in ("score", "midpoint")}
    rng = np.random.default_rng(seed)
    gains = []
    size = min(sample, len(val.images))
    for _ in range(repeats):
        rows = torch.from_numpy(rng.choice(len(val.images), size=size, replace=False))
        by_rule = {rule: test_f1(test, best_f1_thresholds(probs[rows], targets[rows], rule)) for rule in ("score", "midpoint")}
        gains.append(by_rule["midpoint"] - by_rule["score"])
    gains = np.asarray(gains)
    spread = 1.96 * gains.std(ddof=1) / np.sqrt(len(gains)) if len(gains) > 1 else float("nan")
    return [str(run), f"{len(val.images):,} / {len(test.images):,}", f"{at_half:.4f}", f"{full['score']:.4f}", f"{full['midpoint']:.4f}",
            f"{gains.mean():+.4f} ± {spread:.4f}", f"{(gains > 0).mean():.2f}"]  # fmt: skip


def main() -> None:
    parser = CommandParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders holding val_predictions.csv and test_predictions.csv")
    parser.add_argument("--sample", type=int, default=200, help="validation images per random sample")
    parser.add_argument("--repeats", type=int, default=200, help="random validation samples per run")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rows = [compare(run, args.sample, args.repeats, args.seed) for run in args.runs]
    header = ["run", "val / test images", "test F1 @0.5", "test F1, score rule", "test F1, midpoint rule",
              f"midpoint - score, {args.sample}-image val samples (mean ± 95%)", "share of samples midpoint better"]  # fmt: skip
    print(table(header, rows))


if __name__ == "__main__":
    main()
