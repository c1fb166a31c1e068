"""Wall time of the significance tools on an NIH-test-set-sized problem (CPU only).

Synthetic predictions of 25,596 images x 15 labels (NIH-like prevalences) grouped like the real
NIH test set: by default the patient structure of the packaged official ``test_list.txt`` (2,797
patients, 9.2 images each on average, median 2, up to 184); with ``--synthetic_patients`` ~2,800
synthetic patients of ~9 images. Labels and scores are correlated within patients. Times:

* ``bootstrap_ci``: patient-cluster bootstrap, all macro metrics + per-label AUROC intervals;
* ``paired_bootstrap_test``: two models on the same resamples;
* ``delong_multilabel``: paired DeLong for all 15 labels (+ Holm);
* ``delong_test``: one label.

    python benchmarks/bootstrap_delong.py                 # 2,000 resamples, best of 3 runs
    python benchmarks/bootstrap_delong.py --resamples 500 --repeat 1 --synthetic_patients
"""

from __future__ import annotations

import argparse
import gzip
import os
import platform
import time

import numpy as np

from cxr_lightning.cli.parser import CommandParser
from cxr_lightning.data.labels import LABELS, NO_FINDING
from cxr_lightning.data.metadata import packaged_file
from cxr_lightning.evaluation.bootstrap import bootstrap_ci, paired_bootstrap_test
from cxr_lightning.evaluation.delong import delong_multilabel, delong_test
from cxr_lightning.evaluation.predictions_file import patient_ids_from_images

# Rough NIH label frequencies (findings; No Finding = images without any).
PREVALENCE = {
    "Atelectasis": 0.10, "Cardiomegaly": 0.025, "Consolidation": 0.042, "Edema": 0.021, "Effusion": 0.12,
    "Emphysema": 0.022, "Fibrosis": 0.015, "Hernia": 0.002, "Infiltration": 0.18, "Mass": 0.05,
    "Nodule": 0.056, "Pleural_Thickening": 0.03, "Pneumonia": 0.013, "Pneumothorax": 0.047,
}  # fmt: skip
SIGNAL = 0.62


def synthetic_images(n_images: int, n_patients: int, rng: np.random.Generator) -> np.ndarray:
    """NIH-style names for ``n_patients`` patients, >= 1 image each, the rest spread with a heavy tail."""
    share = rng.lognormal(0.0, 1.0, n_patients)
    sizes = 1 + rng.multinomial(n_images - n_patients, share / share.sum())
    groups = np.repeat(np.arange(n_patients), sizes)
    return np.array([f"{g:08d}_{i:03d}.png" for g, i in zip(groups, _follow_up_numbers(sizes))])


def nih_test_images() -> np.ndarray:
    """The 25,596 image names of the official NIH test split (packaged ``test_list.txt.gz``)."""
    with gzip.open(packaged_file("test_list.txt.gz"), "rt") as handle:
        return np.array([line.strip() for line in handle if line.strip()])


def synthetic_predictions(images: np.ndarray, seed: int):
    rng = np.random.default_rng(seed)
    _, groups = np.unique(patient_ids_from_images(images), return_inverse=True)
    n_images, n_patients, num_labels = len(images), int(groups.max()) + 1, len(LABELS)
    latent = 0.8 * rng.normal(size=(n_patients, num_labels))[groups] + 0.6 * rng.normal(size=(n_images, num_labels))
    targets = np.zeros((n_images, num_labels), dtype=np.int64)
    for j, name in enumerate(LABELS):
        if name != NO_FINDING:
            targets[:, j] = latent[:, j] > np.quantile(latent[:, j], 1 - PREVALENCE[name])
    nf = LABELS.index(NO_FINDING)
    targets[:, nf] = targets.sum(axis=1) == 0
    # Scores: label signal + a per-patient offset (correlated errors within patients) + noise;
    # model B is noisier (macro AUROC ~0.78 for A and ~0.76 for B, like the paper's models).
    signal = SIGNAL * (2 * targets - 1) + 0.5 * rng.normal(size=(n_patients, num_labels))[groups] - 1.5
    probs_a = 1 / (1 + np.exp(-(signal + rng.normal(size=signal.shape))))
    probs_b = 1 / (1 + np.exp(-(signal + 1.1 * rng.normal(size=signal.shape))))
    return probs_a.astype(np.float32), probs_b.astype(np.float32), targets


def _follow_up_numbers(sizes: np.ndarray) -> np.ndarray:
    return np.concatenate([np.arange(s) for s in sizes])


def best_time(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = CommandParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--synthetic_patients", action="store_true", help="synthetic grouping instead of the NIH test list")
    parser.add_argument("--images", type=int, default=25_596, help="with --synthetic_patients")
    parser.add_argument("--patients", type=int, default=2_800, help="with --synthetic_patients")
    parser.add_argument("--resamples", type=int, default=2_000)
    parser.add_argument("--repeat", type=int, default=3, help="runs per row; the fastest is reported")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    if args.synthetic_patients:
        images = synthetic_images(args.images, args.patients, np.random.default_rng(args.seed + 1))
        grouping = "synthetic patients"
    else:
        images = nih_test_images()
        grouping = "patients of the NIH test list"
    probs_a, probs_b, targets = synthetic_predictions(images, args.seed)
    patients = patient_ids_from_images(images)
    thresholds = np.full(len(LABELS), 0.5)
    n, num_labels = targets.shape
    sizes = np.unique(patients, return_counts=True)[1]

    rows = []
    rows.append(("patient_ids_from_images", f"{n}", "-", best_time(lambda: patient_ids_from_images(images), args.repeat)))
    result = {}

    def boot():
        result["ci"] = bootstrap_ci(probs_a, targets, thresholds, patients, n_resamples=args.resamples, seed=args.seed)

    rows.append(("bootstrap_ci (patient cluster)", f"{n} x {num_labels}", f"{args.resamples}", best_time(boot, args.repeat)))

    def paired():
        result["paired"] = paired_bootstrap_test(
            probs_a, probs_b, targets, thresholds, thresholds, patients, n_resamples=args.resamples, seed=args.seed
        )

    rows.append(("paired_bootstrap_test (2 models)", f"{n} x {num_labels}", f"{args.resamples}", best_time(paired, args.repeat)))

    def delong_all():
        result["delong"] = delong_multilabel(probs_a, probs_b, targets, LABELS, holm=True)

    rows.append(("delong_multilabel (all labels, Holm)", f"{n} x {num_labels}", "-", best_time(delong_all, args.repeat)))
    j = LABELS.index("Effusion")
    one = best_time(lambda: delong_test(probs_a[:, j], probs_b[:, j], targets[:, j]), args.repeat)
    rows.append(("delong_test (one label)", f"{n}", "-", one))

    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, numpy {np.__version__}")
    print(
        f"# synthetic predictions: {n} images x {num_labels} labels; {len(sizes)} {grouping} "
        f"(images/patient: mean {sizes.mean():.1f}, median {np.median(sizes):.0f}, max {sizes.max()}); best of {args.repeat}"
    )
    print()
    print(f"| {'task':<38} | {'shape':>11} | {'resamples':>9} | {'seconds':>8} |")
    print(f"|{'-' * 40}|{'-' * 13}|{'-' * 11}|{'-' * 10}|")
    for task, shape, resamples, seconds in rows:
        print(f"| {task:<38} | {shape:>11} | {resamples:>9} | {seconds:>8.3f} |")

    ci = result["ci"]
    print()
    est, lo, hi = (ci[k]["auroc_macro"] for k in ("estimate", "lower", "upper"))
    print(f"macro AUROC model A: {est:.4f} [{lo:.4f}, {hi:.4f}] (patient bootstrap, {args.resamples} resamples)")
    row = result["paired"]["metrics"].loc["auroc_macro"]
    print(f"macro AUROC A - B: {row['diff']:+.4f} [{row['lower']:+.4f}, {row['upper']:+.4f}], bootstrap p = {row['p_value']:.4f}")


if __name__ == "__main__":
    main()
