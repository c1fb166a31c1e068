"""Patient-cluster bootstrap, paired bootstrap test, DeLong and Holm (cxr_lightning.evaluation.bootstrap, .delong), and the predictions file."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import norm
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score, roc_auc_score

from cxr_lightning.data.labels import LABELS, NO_FINDING
from cxr_lightning.evaluation.bootstrap import (
    bootstrap_ci,
    draw_cluster_resamples,
    paired_bootstrap_test,
    paired_test_from_intervals,
)
from cxr_lightning.evaluation.delong import _fast_delong, delong_multilabel, delong_test, holm_adjust
from cxr_lightning.evaluation.metrics import classification_metrics
from cxr_lightning.evaluation.predictions_file import patient_ids_from_images, read_predictions

MACRO = ("auroc_macro", "auroc_findings", "f1_macro", "precision_macro", "recall_macro", "exact_match")


def clustered_problem(n_patients=40, per_patient=(1, 6), num_labels=4, seed=0, decimals=1, rare_label=True):
    """Small multi-label predictions grouped in patients; scores rounded to create ties."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(per_patient[0], per_patient[1] + 1, size=n_patients)
    groups = np.repeat(np.arange(n_patients) * 7 + 1000, sizes)  # arbitrary, non-contiguous ids
    n = len(groups)
    patient_effect = rng.normal(size=(n_patients, num_labels))[np.repeat(np.arange(n_patients), sizes)]
    latent = patient_effect + 0.8 * rng.normal(size=(n, num_labels))
    prevalence = np.linspace(0.45, 0.15, num_labels)
    cut = np.array([np.quantile(latent[:, j], 1 - prevalence[j]) for j in range(num_labels)])
    targets = (latent > cut).astype(np.int64)
    if rare_label:  # a label with very few positives: some resamples miss it entirely
        targets[:, -1] = 0
        targets[rng.choice(n, 3, replace=False), -1] = 1
    probs = 1 / (1 + np.exp(-(1.5 * (2 * targets - 1) + rng.normal(size=(n, num_labels)))))
    return np.round(probs, decimals), targets, groups


def slow_replicates(probs, targets, thresholds, groups, n_resamples, seed, findings=None):
    """Reference: concatenate every resample's images explicitly and call sklearn."""
    ids, codes = np.unique(groups, return_inverse=True)
    members = [np.flatnonzero(codes == g) for g in range(len(ids))]
    draws = draw_cluster_resamples(len(ids), n_resamples, seed)
    out = {m: [] for m in MACRO if m != "auroc_findings" or findings is not None}
    out["auroc_per_label"] = []
    for row in draws:
        idx = np.concatenate([members[g] for g in row])
        p, t = probs[idx], targets[idx]
        pred = (p >= thresholds).astype(int)
        out["recall_macro"].append(recall_score(t, pred, average="macro", zero_division=0))
        out["precision_macro"].append(precision_score(t, pred, average="macro", zero_division=0))
        out["f1_macro"].append(f1_score(t, pred, average="macro", zero_division=0))
        out["exact_match"].append(accuracy_score(t, pred))
        aucs = np.array([roc_auc_score(t[:, j], p[:, j]) if 0 < t[:, j].sum() < len(t) else np.nan for j in range(t.shape[1])])
        out["auroc_per_label"].append(aucs)
        out["auroc_macro"].append(np.nanmean(aucs))
        if findings is not None:
            out["auroc_findings"].append(np.nanmean(aucs[findings]))
    return {k: np.array(v) for k, v in out.items()}


# --------------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------------


def test_patient_ids_from_images():
    ids = patient_ids_from_images(["00000013_005.png", "images/00000013_000.png", "/x/y/00030805_000.png"])
    assert ids.tolist() == ["00000013", "00000013", "00030805"]
    with pytest.raises(ValueError, match="not an NIH image name"):
        patient_ids_from_images(["13_005.png"])


def test_read_predictions_roundtrip(tmp_path):
    rng = np.random.default_rng(1)
    images = ["00000001_000.png", "00000001_001.png", "00000002_000.png"]
    probs = rng.random((3, len(LABELS)))
    targets = rng.integers(0, 2, (3, len(LABELS)))
    frame = pd.DataFrame({"image": images})
    for j, name in enumerate(LABELS):
        frame[f"prob_{name}"] = probs[:, j]
    for j, name in enumerate(LABELS):
        frame[f"label_{name}"] = targets[:, j]
    frame.to_csv(tmp_path / "test_predictions.csv", index=False)
    read = read_predictions(tmp_path / "test_predictions.csv")
    assert read.label_names == LABELS
    np.testing.assert_allclose(read.probs, probs)
    np.testing.assert_array_equal(read.targets, targets)
    assert read.patients.tolist() == ["00000001", "00000001", "00000002"]
    sub = read_predictions(tmp_path / "test_predictions.csv", label_names=["Hernia", "Edema"])
    np.testing.assert_allclose(sub.probs, probs[:, [LABELS.index("Hernia"), LABELS.index("Edema")]])


# --------------------------------------------------------------------------------------------------
# Bootstrap
# --------------------------------------------------------------------------------------------------


def test_vectorised_bootstrap_equals_slow_loop_with_same_draws():
    probs, targets, groups = clustered_problem()
    names = ["A", NO_FINDING, "C", "Rare"]
    thresholds = np.array([0.5, 0.4, 0.6, 0.3])
    result = bootstrap_ci(
        probs, targets, thresholds, groups, n_resamples=60, seed=3, label_names=names, chunk_size=7, return_replicates=True
    )
    reps = result["replicates"]
    slow = slow_replicates(probs, targets, thresholds, groups, 60, 3, findings=np.array([0, 2, 3]))
    for key, expected in slow.items():
        np.testing.assert_allclose(reps[key], expected, rtol=0, atol=1e-12, err_msg=key)
    # The rare label really is missing from some resamples and is then left out of the means.
    assert np.isnan(slow["auroc_per_label"][:, -1]).any()
    assert result["per_label"].loc["Rare", "n_valid"] == np.isfinite(slow["auroc_per_label"][:, -1]).sum() < 60
    # The intervals are the percentiles of those replicates.
    for m in ("f1_macro", "auroc_macro", "exact_match"):
        assert result["lower"][m] == pytest.approx(np.quantile(slow[m], 0.025), abs=1e-12)
        assert result["upper"][m] == pytest.approx(np.quantile(slow[m], 0.975), abs=1e-12)


def test_bootstrap_auroc_edge_orders_equal_slow_loop():
    """Labels whose positives all score below, above or level with every negative, and one without negatives."""
    probs, targets, groups = clustered_problem(seed=11, num_labels=4, rare_label=False)
    probs, targets = probs.copy(), targets.copy()
    probs[:, 0] = np.where(targets[:, 0] == 1, 0.1, 0.9)  # every positive below every negative
    probs[:, 1] = np.where(targets[:, 1] == 1, 0.9, 0.1)  # every positive above
    probs[:, 2] = 0.5  # all tied
    targets[:, 3] = 1  # no negative anywhere
    result = bootstrap_ci(probs, targets, 0.5, groups, n_resamples=30, seed=2, label_names=list("ABCD"), return_replicates=True)
    slow = slow_replicates(probs, targets, np.full(4, 0.5), groups, 30, 2, findings=None)
    np.testing.assert_allclose(result["replicates"]["auroc_per_label"], slow["auroc_per_label"], rtol=0, atol=1e-12)
    assert result["per_label"]["auroc"].tolist()[:3] == [0.0, 1.0, 0.5]
    assert np.isnan(result["per_label"].loc["D", "auroc"]) and result["per_label"].loc["D", "n_valid"] == 0


def test_point_estimates_match_sklearn_and_project_metrics():
    probs, targets, groups = clustered_problem(seed=5, decimals=2)
    names = ["A", NO_FINDING, "C", "Rare"]
    thresholds = np.array([0.5, 0.35, 0.6, 0.3])
    result = bootstrap_ci(probs, targets, thresholds, groups, n_resamples=20, label_names=names)
    est = result["estimate"]
    pred = (probs >= thresholds).astype(int)
    assert est["f1_macro"] == pytest.approx(f1_score(targets, pred, average="macro", zero_division=0), abs=1e-12)
    assert est["recall_macro"] == pytest.approx(recall_score(targets, pred, average="macro", zero_division=0), abs=1e-12)
    assert est["precision_macro"] == pytest.approx(precision_score(targets, pred, average="macro", zero_division=0), abs=1e-12)
    assert est["exact_match"] == pytest.approx(accuracy_score(targets, pred), abs=1e-12)
    aucs = roc_auc_score(targets, probs, average=None)
    np.testing.assert_allclose(result["per_label"]["auroc"].to_numpy(), aucs, atol=1e-12)
    assert est["auroc_macro"] == pytest.approx(aucs.mean(), abs=1e-12)
    # ... and the project's own definitions (cxr_lightning.evaluation.metrics).
    reference = classification_metrics(torch.tensor(probs), torch.tensor(targets), torch.tensor(thresholds), names)
    for m in MACRO:
        assert est[m] == pytest.approx(reference[m], abs=1e-6), m


def test_intervals_contain_point_estimate_and_table():
    probs, targets, groups = clustered_problem(n_patients=80, seed=2, rare_label=False)
    result = bootstrap_ci(probs, targets, 0.5, groups, n_resamples=300, seed=0)
    for m in result["estimate"]:
        assert result["lower"][m] <= result["estimate"][m] <= result["upper"][m], m
        assert result["lower"][m] < result["upper"][m], m
    per_label = result["per_label"]
    assert ((per_label["lower"] <= per_label["auroc"]) & (per_label["auroc"] <= per_label["upper"])).all()
    assert "auroc_findings" not in result["estimate"]  # no "No Finding" among the 4 default names
    assert result["n_resamples"] == 300 and result["seed"] == 0 and result["n_groups"] == 80


def test_bootstrap_is_deterministic_by_seed_and_accepts_torch():
    probs, targets, groups = clustered_problem(seed=4)
    a = bootstrap_ci(probs, targets, 0.5, groups, n_resamples=50, seed=11, return_replicates=True)
    as_torch = (torch.tensor(probs), torch.tensor(targets), torch.tensor(0.5))
    b = bootstrap_ci(*as_torch, groups, n_resamples=50, seed=11, chunk_size=3, return_replicates=True)
    c = bootstrap_ci(probs, targets, 0.5, groups, n_resamples=50, seed=12, return_replicates=True)
    assert a["lower"] == b["lower"] and a["upper"] == b["upper"]
    np.testing.assert_array_equal(a["replicates"]["auroc_per_label"], b["replicates"]["auroc_per_label"])
    assert not np.array_equal(a["replicates"]["f1_macro"], c["replicates"]["f1_macro"])


def test_patient_resampling_is_wider_than_image_resampling_for_clustered_data():
    # 250 patients x 8 images; labels and scores are mostly a property of the patient, so the
    # effective sample size is ~250, not 2,000.
    rng = np.random.default_rng(7)
    n_patients, per, num_labels = 250, 8, 3
    groups = np.repeat(np.arange(n_patients), per)
    patient_label = rng.random((n_patients, num_labels)) < 0.3
    patient_score = rng.normal(size=(n_patients, num_labels)) + 1.0 * patient_label
    targets = patient_label[groups].astype(int)
    flip = rng.random(targets.shape) < 0.05
    targets = np.where(flip, 1 - targets, targets)
    probs = 1 / (1 + np.exp(-(patient_score[groups] + 0.3 * rng.normal(size=targets.shape))))
    by_patient = bootstrap_ci(probs, targets, 0.5, groups, n_resamples=400, seed=0)
    by_image = bootstrap_ci(probs, targets, 0.5, None, n_resamples=400, seed=0)
    assert by_image["resampling"] == "image" and by_patient["resampling"] == "cluster"
    for m in ("auroc_macro", "f1_macro", "recall_macro", "exact_match"):
        width_p = by_patient["upper"][m] - by_patient["lower"][m]
        width_i = by_image["upper"][m] - by_image["lower"][m]
        assert width_p > 1.5 * width_i, (m, width_p, width_i)  # ~2-2.4x here
    # Same point estimates either way: only the resampling unit differs.
    assert by_patient["estimate"] == by_image["estimate"]


def test_bootstrap_input_validation():
    probs, targets, groups = clustered_problem()
    with pytest.raises(ValueError, match="groups"):
        bootstrap_ci(probs, targets, 0.5, groups[:-1], n_resamples=5)
    with pytest.raises(ValueError, match="thresholds"):
        bootstrap_ci(probs, targets, [0.5, 0.5], groups, n_resamples=5)
    with pytest.raises(ValueError, match="0/1"):
        bootstrap_ci(probs, targets * 2, 0.5, groups, n_resamples=5)


# --------------------------------------------------------------------------------------------------
# Paired bootstrap
# --------------------------------------------------------------------------------------------------


def test_paired_bootstrap_uses_the_same_resamples_for_both_models():
    probs, targets, groups = clustered_problem(n_patients=60, seed=8)
    rng = np.random.default_rng(0)
    worse = np.clip(probs + rng.normal(0, 0.25, probs.shape), 0, 1)
    res = paired_bootstrap_test(probs, worse, targets, 0.5, 0.45, groups, n_resamples=200, seed=5, return_replicates=True)
    single_a = bootstrap_ci(probs, targets, 0.5, groups, n_resamples=200, seed=5, return_replicates=True)
    single_b = bootstrap_ci(worse, targets, 0.45, groups, n_resamples=200, seed=5, return_replicates=True)
    for m in ("auroc_macro", "f1_macro", "exact_match"):
        np.testing.assert_array_equal(res["replicates"]["a"][m], single_a["replicates"][m])
        np.testing.assert_array_equal(res["replicates"]["b"][m], single_b["replicates"][m])
        diff = single_a["replicates"][m] - single_b["replicates"][m]
        row = res["metrics"].loc[m]
        assert row["diff"] == pytest.approx(single_a["estimate"][m] - single_b["estimate"][m])
        assert row["lower"] == pytest.approx(np.quantile(diff, 0.025))
        assert row["upper"] == pytest.approx(np.quantile(diff, 0.975))
        expected_p = min(1.0, 2 * min((1 + (diff <= 0).sum()) / 201, (1 + (diff >= 0).sum()) / 201))
        assert row["p_value"] == pytest.approx(expected_p)
    # The noisier model is clearly worse in AUROC.
    auroc = res["metrics"].loc["auroc_macro"]
    assert auroc["lower"] > 0 and auroc["p_value"] < 0.05
    assert res["per_label"].shape[0] == 4


def test_paired_bootstrap_identical_models():
    probs, targets, groups = clustered_problem(seed=9)
    res = paired_bootstrap_test(probs, probs, targets, 0.5, 0.5, groups, n_resamples=100)
    assert (res["metrics"]["diff"] == 0).all()
    assert (res["metrics"]["p_value"] == 1.0).all()
    assert (res["metrics"][["lower", "upper"]].to_numpy() == 0).all()


# --------------------------------------------------------------------------------------------------
# DeLong
# --------------------------------------------------------------------------------------------------


def direct_delong(scores, positive):
    """O(m n) DeLong: structural components from the full kernel psi(x_i, y_j)."""
    pos, neg = scores[:, positive], scores[:, ~positive]
    psi = (pos[:, :, None] > neg[:, None, :]) + 0.5 * (pos[:, :, None] == neg[:, None, :])  # (k, m, n)
    aucs = psi.mean(axis=(1, 2))
    v10, v01 = psi.mean(axis=2), psi.mean(axis=1)
    m, n = pos.shape[1], neg.shape[1]
    s10 = (v10 - aucs[:, None]) @ (v10 - aucs[:, None]).T / (m - 1)
    s01 = (v01 - aucs[:, None]) @ (v01 - aucs[:, None]).T / (n - 1)
    return aucs, s10 / m + s01 / n


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fast_delong_equals_direct_quadratic_computation(seed):
    rng = np.random.default_rng(seed)
    y = rng.random(150) < 0.3
    a = np.round(rng.normal(size=150) + y, 1)  # ties within and across classes
    b = np.round(0.5 * rng.normal(size=150) + 0.7 * y + 0.3 * a, 1)
    aucs, cov, _, _ = _fast_delong(np.stack([a, b]), y)
    ref_aucs, ref_cov = direct_delong(np.stack([a, b]), y)
    np.testing.assert_allclose(aucs, ref_aucs, atol=1e-14)
    np.testing.assert_allclose(cov, ref_cov, atol=1e-15)
    np.testing.assert_allclose(aucs, [roc_auc_score(y, a), roc_auc_score(y, b)], atol=1e-14)
    res = delong_test(a, b, y.astype(int))
    se = math.sqrt(ref_cov[0, 0] + ref_cov[1, 1] - 2 * ref_cov[0, 1])
    assert res.se == pytest.approx(se, rel=1e-12)
    assert res.z == pytest.approx((ref_aucs[0] - ref_aucs[1]) / se, rel=1e-12)
    assert res.p_value == pytest.approx(2 * norm.sf(abs(res.z)), rel=1e-12)
    assert res.ci_low == pytest.approx(res.diff - norm.ppf(0.975) * se)


# pROC's aSAH example (Turck et al. 2010; 41 "Poor" outcomes, 72 "Good"). The raw data set ships
# with R's pROC only as binary .rda, so it is rebuilt here from pROC's own test fixtures
# (github.com/xrobin/pROC, tests/testthat/helper-deLongPlacementsCpp-expected.R): the DeLong
# placements of every case (X: fraction of controls below it, ties 1/2) and control (Y: fraction
# of cases above it), in data order. Stored as exact integers 2*72*X and 2*41*Y.
ASAH_CASES = {
    "ndka": [
        116, 90, 98, 110, 6, 40, 74, 134, 140, 134, 134, 58, 104, 124, 24, 36, 102, 2, 144, 124, 62, 74, 80, 102, 128,
        93, 124, 36, 142, 109, 6, 49, 124, 6, 48, 134, 76, 104, 138, 74, 110
    ],
    "wfns": [
        117, 94, 128, 140, 140, 140, 140, 94, 140, 94, 37, 94, 140, 128, 128, 94, 140, 140, 140, 94, 140, 94, 140, 94,
        128, 140, 128, 128, 37, 128, 128, 94, 94, 140, 140, 94, 94, 140, 140, 140, 140
    ],
    "s100b": [
        81, 63, 103, 78, 130, 144, 140, 26, 123, 50, 26, 128, 126, 139, 144, 118, 144, 144, 144, 26, 144, 120, 0, 50,
        116, 144, 118, 144, 38, 118, 81, 63, 74, 116, 144, 88, 144, 121, 144, 144, 130
    ],
}
ASAH_CONTROLS = {
    "ndka": [
        82, 68, 72, 58, 74, 33, 74, 26, 42, 26, 28, 6, 66, 74, 48, 74, 74, 2, 46, 62, 62, 26, 80, 72, 74, 63, 44, 72,
        34, 8, 72, 74, 48, 66, 72, 44, 16, 18, 60, 50, 4, 74, 28, 62, 58, 58, 34, 80, 28, 48, 66, 58, 26, 58, 50, 72,
        62, 58, 16, 68, 48, 45, 8, 52, 48, 66, 16, 60, 38, 18, 74, 42
    ],
    "wfns": [
        80, 80, 80, 80, 18, 80, 66, 66, 80, 66, 66, 80, 80, 80, 66, 80, 66, 80, 80, 53, 44, 80, 44, 80, 18, 18, 80,
        80, 66, 44, 80, 80, 66, 66, 80, 66, 80, 66, 66, 80, 80, 80, 80, 66, 80, 66, 80, 80, 53, 66, 44, 66, 80, 44,
        80, 80, 18, 44, 66, 66, 80, 80, 80, 53, 80, 66, 66, 44, 44, 80, 80, 80
    ],
    "s100b": [
        58, 55, 66, 80, 28, 52, 66, 66, 80, 73, 80, 70, 63, 77, 52, 77, 63, 58, 52, 80, 53, 55, 36, 70, 24, 28, 53,
        77, 32, 28, 63, 73, 70, 73, 80, 58, 66, 55, 54, 80, 80, 70, 80, 70, 73, 53, 70, 73, 37, 63, 42, 77, 66, 39,
        77, 80, 48, 34, 66, 54, 73, 55, 66, 77, 80, 52, 54, 28, 52, 54, 24, 27
    ],
}


def scores_from_placements(cases2: list[int], controls2: list[int]) -> np.ndarray:
    """Ordinal scores (cases first) with exactly the given DeLong placements.

    Controls with equal Y form one level (no case lies between them, so merging them changes no
    comparison); levels are ordered by decreasing Y (= increasing value). A case whose count of
    controls below, 72*X, equals a cumulative level size C_k sits strictly between levels k and
    k+1; otherwise 72*X = C_{k-1} + size_k / 2 and it ties with level k.
    """
    cy = np.asarray(controls2)
    levels, sizes = np.unique(-cy, return_counts=True)
    control_scores = np.searchsorted(levels, -cy).astype(float)
    cum2 = 2 * np.concatenate([[0], np.cumsum(sizes)])  # 2 * C_{k-1}, k = 0..levels
    case_scores = []
    for c in cases2:
        between = np.flatnonzero(cum2 == c)
        if between.size:
            case_scores.append(between[0] - 0.5)
        else:
            (tie,) = np.flatnonzero(cum2[:-1] + sizes == c)
            case_scores.append(float(tie))
    return np.concatenate([case_scores, control_scores])


@pytest.fixture(scope="module")
def asah():
    outcome = np.r_[np.ones(41, int), np.zeros(72, int)]
    scores = {k: scores_from_placements(ASAH_CASES[k], ASAH_CONTROLS[k]) for k in ASAH_CASES}
    for k, s in scores.items():  # the rebuilt scores reproduce pROC's placements exactly
        _, _, v10, v01 = _fast_delong(s[None, :], outcome.astype(bool))
        np.testing.assert_allclose(v10[0] * 72 * 2, ASAH_CASES[k], atol=1e-9)
        np.testing.assert_allclose(v01[0] * 41 * 2, ASAH_CONTROLS[k], atol=1e-9)
    return outcome, scores


# pROC tests/testthat/test-roc.test.R, "roc.test statistic and p are as expected with defaults":
# roc.test(r.wfns, r.s100b), roc.test(r.wfns, r.ndka), roc.test(r.ndka, r.s100b).
PROC_ROC_TEST = [
    ("wfns", "s100b", 2.20898359144091, 0.0271757822291882, 0.0104061769564846, 0.174214419249478),
    ("wfns", "ndka", 2.79777591868904, 0.00514557970691098, 0.0634011709339876, 0.3600405634833566),
    ("ndka", "s100b", -1.39077002573558, 0.164295175223054, -0.2876917446341914, 0.0488706064228094),
]
# AUCs of the same fixtures (the placements' theta): wfns, s100b, ndka.
PROC_AUC = {"wfns": 0.823678861788618, "s100b": 0.731368563685637, "ndka": 0.611957994579946}


@pytest.mark.parametrize("first,second,z,p,lo,hi", PROC_ROC_TEST)
def test_delong_matches_proc_roc_test_on_asah(asah, first, second, z, p, lo, hi):
    outcome, scores = asah
    res = delong_test(scores[first], scores[second], outcome)
    assert res.auc_a == pytest.approx(PROC_AUC[first], abs=1e-12)
    assert res.auc_b == pytest.approx(PROC_AUC[second], abs=1e-12)
    assert res.z == pytest.approx(z, rel=1e-10)
    assert res.p_value == pytest.approx(p, rel=1e-10)
    assert res.ci_low == pytest.approx(lo, rel=1e-10)
    assert res.ci_high == pytest.approx(hi, rel=1e-10)
    # Reversing the models flips the sign and keeps the p-value (pROC's test does the same).
    rev = delong_test(scores[second], scores[first], outcome)
    assert rev.z == pytest.approx(-z, rel=1e-10) and rev.p_value == pytest.approx(p, rel=1e-10)


def test_delong_identical_predictions_and_bad_inputs():
    rng = np.random.default_rng(3)
    y = (rng.random(300) < 0.4).astype(int)
    s = rng.normal(size=300) + y
    same = delong_test(s, s, y)
    assert same.diff == 0 and same.z == 0 and same.p_value == 1.0
    with pytest.raises(ValueError, match="single class"):
        delong_test(s, s, np.zeros(300, int))
    with_nan = s.copy()
    with_nan[5] = np.nan
    with pytest.raises(ValueError, match="scores 1 contain NaN"):
        delong_test(with_nan, s, y)
    with pytest.raises(ValueError, match="0/1"):
        delong_test(s, s, y * 2)


def test_delong_multilabel_rows_and_holm():
    rng = np.random.default_rng(4)
    n = 400
    targets = (rng.random((n, 3)) < [0.3, 0.2, 0.0]).astype(int)  # third label: no positives
    a = rng.normal(size=(n, 3)) + 1.2 * targets
    b = rng.normal(size=(n, 3)) + 0.6 * targets
    frame = delong_multilabel(a, b, targets, ["x", "y", "z"], holm=True)
    assert list(frame.index) == ["x", "y", "z"]
    for j, name in enumerate(["x", "y"]):
        single = delong_test(a[:, j], b[:, j], targets[:, j])
        assert frame.loc[name, "z"] == pytest.approx(single.z)
        assert frame.loc[name, "auc_a"] == pytest.approx(roc_auc_score(targets[:, j], a[:, j]))
    assert np.isnan(frame.loc["z", "p_value"]) and np.isnan(frame.loc["z", "p_holm"])
    np.testing.assert_allclose(frame["p_holm"].to_numpy()[:2], holm_adjust(frame["p_value"].to_numpy()[:2]))
    assert "p_holm" not in delong_multilabel(a, b, targets, ["x", "y", "z"]).columns


def test_holm_hand_example():
    # m = 4: sorted 0.01, 0.02, 0.03, 0.04 -> x4, x3, x2, x1 = 0.04, 0.06, 0.06, 0.04
    # -> running max 0.04, 0.06, 0.06, 0.06; returned in input order.
    np.testing.assert_allclose(holm_adjust([0.03, 0.01, 0.04, 0.02]), [0.06, 0.04, 0.06, 0.06])
    # Capped at 1 and monotone in the sorted order.
    np.testing.assert_allclose(holm_adjust([0.5, 0.4]), [0.8, 0.8])
    np.testing.assert_allclose(holm_adjust([0.9, 0.2, 0.6]), [1.0, 0.6, 1.0])


def test_holm_with_nan_matches_pingouin_docstring_example():
    # pingouin.multicomp docstring (raphaelvallat/pingouin, pingouin/multicomp.py):
    # pvals = [.50, .003, nan, .054, .0003], method="holm" -> [0.5, 0.009, nan, 0.108, 0.0012]
    out = holm_adjust([0.50, 0.003, np.nan, 0.054, 0.0003])
    np.testing.assert_allclose(out, [0.5, 0.009, np.nan, 0.108, 0.0012], rtol=1e-12)


def test_holm_equals_statsmodels_definition():
    # statsmodels.stats.multitest.multipletests(method="holm"): sort ascending, multiply by
    # m, m-1, ..., 1, running maximum, cap at 1, unsort (statsmodels is not a dependency here).
    rng = np.random.default_rng(0)
    for _ in range(20):
        p = rng.random(rng.integers(1, 16)) ** 3
        order = np.argsort(p)
        adjusted = np.minimum(np.maximum.accumulate(p[order] * np.arange(len(p), 0, -1)), 1.0)
        expected = np.empty_like(p)
        expected[order] = adjusted
        np.testing.assert_allclose(holm_adjust(p), expected)


def test_intervals_at_several_thresholds_in_one_pass_equal_separate_calls():
    from cxr_lightning.evaluation.bootstrap import bootstrap_ci_at_thresholds

    rng = np.random.default_rng(3)
    targets = (rng.random((300, 4)) < 0.3).astype(int)
    probs = np.clip(targets * 0.3 + rng.random((300, 4)) * 0.7, 0, 1)
    groups = rng.integers(0, 60, 300)
    names = ["a", "b", "c", "d"]
    both = bootstrap_ci_at_thresholds(probs, targets, [0.5, [0.3, 0.4, 0.5, 0.6]], groups, n_resamples=150, seed=2, label_names=names)
    for result, thresholds in zip(both, [0.5, [0.3, 0.4, 0.5, 0.6]]):
        alone = bootstrap_ci(probs, targets, thresholds, groups, n_resamples=150, seed=2, label_names=names)
        assert result["estimate"] == alone["estimate"] and result["lower"] == alone["lower"] and result["upper"] == alone["upper"]
        pd.testing.assert_frame_equal(result["per_label"], alone["per_label"])
    assert both[0]["estimate"]["f1_macro"] != both[1]["estimate"]["f1_macro"]  # the thresholds were used


def test_paired_test_from_intervals_equals_the_paired_test_on_any_image_order():
    """The report's paired tests reuse each run's interval replicates: the same numbers as resampling again."""
    probs, targets, groups = clustered_problem(seed=4, decimals=2)
    names = ["A", NO_FINDING, "C", "Rare"]
    rng = np.random.default_rng(0)
    other = np.clip(probs + rng.normal(0, 0.1, probs.shape), 0, 1)
    thr_a, thr_b = np.full(4, 0.5), np.array([0.4, 0.5, 0.6, 0.3])
    order = rng.permutation(len(probs))  # model B's file lists the images in another order
    interval_a = bootstrap_ci(probs, targets, thr_a, groups, n_resamples=80, seed=5, label_names=names, return_replicates=True)
    interval_b = bootstrap_ci(other[order], targets[order], thr_b, groups[order], n_resamples=80, seed=5, label_names=names,
                              return_replicates=True)  # fmt: skip
    reused = paired_test_from_intervals([interval_a], [interval_b])
    direct = paired_bootstrap_test(probs, other, targets, thr_a, thr_b, groups, n_resamples=80, seed=5, label_names=names)
    pd.testing.assert_frame_equal(reused["metrics"], direct["metrics"], check_exact=True)
    pd.testing.assert_frame_equal(reused["per_label"], direct["per_label"], check_exact=True)
    assert reused["n_groups"] == direct["n_groups"] and reused["seeds"] == (1, 1)
    # Results of other resamples are refused, not compared.
    elsewhere = bootstrap_ci(other, targets, thr_b, groups, n_resamples=80, seed=6, label_names=names, return_replicates=True)
    with pytest.raises(ValueError, match="seed"):
        paired_test_from_intervals([interval_a], [elsewhere])
    with pytest.raises(ValueError, match="replicates"):
        paired_test_from_intervals([interval_a], [bootstrap_ci(other, targets, thr_b, groups, n_resamples=80, seed=5, label_names=names)])
