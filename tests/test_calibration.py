"""Calibration metrics, reliability diagrams and temperature scaling (cxr_lightning.evaluation.calibration)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.special import expit
from sklearn.metrics import brier_score_loss

from cxr_lightning.evaluation.calibration import (
    apply_temperature,
    brier_score,
    calibration_table,
    expected_calibration_error,
    fit_temperature,
    reliability_curve,
    reliability_diagram,
)


def calibrated(n=200_000, num_labels=3, seed=0):
    rng = np.random.default_rng(seed)
    probs = rng.random((n, num_labels))
    targets = (rng.random((n, num_labels)) < probs).astype(int)
    return probs, targets


def test_ece_of_calibrated_data_is_near_zero_and_of_overconfident_data_is_not():
    probs, targets = calibrated()
    ece = expected_calibration_error(probs, targets, n_bins=15)
    assert ece.shape == (3,)
    assert (ece < 0.005).all(), ece
    # Over-confident: the same outcomes, probabilities pushed towards 0/1 (logits doubled).
    overconfident = expit(2 * np.log(probs / (1 - probs)))
    ece_over = expected_calibration_error(overconfident, targets, n_bins=15)
    assert (ece_over > 0.05).all(), ece_over


def test_ece_hand_example_and_bin_edges():
    # 2 bins: [0, .5) holds 0.2, 0.4 (mean .3, 1 positive of 2 -> gap .2); [.5, 1] holds 0.5 and
    # 1.0 (a probability of exactly 1 falls in the last bin; mean .75, 2 positives -> gap .25).
    probs = np.array([0.2, 0.4, 0.5, 1.0])
    targets = np.array([1, 0, 1, 1])
    ece = expected_calibration_error(probs, targets, n_bins=2)
    assert ece[0] == pytest.approx(0.5 * 0.2 + 0.5 * 0.25)
    curve = reliability_curve(probs, targets, n_bins=2)
    np.testing.assert_array_equal(curve["count"][0], [2, 2])
    np.testing.assert_allclose(curve["mean_prob"][0], [0.3, 0.75])
    np.testing.assert_allclose(curve["frac_pos"][0], [0.5, 1.0])


def test_brier_equals_sklearn():
    rng = np.random.default_rng(1)
    probs = rng.random((500, 4))
    targets = (rng.random((500, 4)) < 0.3).astype(int)
    expected = [brier_score_loss(targets[:, j], probs[:, j]) for j in range(4)]
    np.testing.assert_allclose(brier_score(probs, targets), expected, rtol=1e-12)
    np.testing.assert_allclose(brier_score(torch.tensor(probs), torch.tensor(targets)), expected, rtol=1e-6)


def test_calibration_table_has_macro_row():
    probs, targets = calibrated(n=2000, num_labels=2)
    table = calibration_table(probs, targets, ["a", "b"], n_bins=10)
    assert list(table.index) == ["a", "b", "macro"]
    assert table.loc["macro", "ece"] == pytest.approx(table.loc[["a", "b"], "ece"].mean())
    assert table.loc["macro", "positives"] == targets.sum()


@pytest.mark.parametrize("true_t", [2.0, 0.5])
def test_fit_temperature_recovers_a_known_temperature(true_t):
    rng = np.random.default_rng(2)
    z = rng.normal(0, 2.5, size=(20_000, 5))  # calibrated logits
    targets = (rng.random(z.shape) < expit(z)).astype(int)
    observed = true_t * z  # mis-calibrated by a factor T: sigmoid(observed / T) is calibrated
    t_logits = fit_temperature(observed, targets, kind="logits")
    assert t_logits == pytest.approx(true_t, rel=0.05)
    t_probs = fit_temperature(expit(observed), targets)  # "auto" sees probabilities
    assert t_probs == pytest.approx(true_t, rel=0.05)
    # Scaling helps: ECE after temperature scaling is much lower, AUROC-relevant order unchanged.
    before = expected_calibration_error(expit(observed), targets).mean()
    scaled = apply_temperature(expit(observed), t_probs)
    after = expected_calibration_error(scaled, targets).mean()
    assert after < 0.5 * before
    order = np.argsort(observed[:, 0])
    assert np.all(np.diff(scaled[order, 0]) >= 0)


def test_apply_temperature_identity_and_direction():
    p = np.array([0.01, 0.2, 0.5, 0.9, 0.999])
    np.testing.assert_allclose(apply_temperature(p, 1.0), p, rtol=1e-9)
    softer = apply_temperature(p, 2.0)
    assert np.all(np.abs(softer - 0.5) <= np.abs(p - 0.5))
    assert softer[2] == pytest.approx(0.5)
    with pytest.raises(ValueError):
        apply_temperature(p, 0.0)


def test_reliability_diagram_writes_png(tmp_path):
    probs, targets = calibrated(n=3000, num_labels=7)
    path = tmp_path / "sub" / "reliability.png"
    out = reliability_diagram(probs, targets, [f"L{j}" for j in range(7)], path, n_bins=10, ncols=4)
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_plots_leave_the_matplotlib_backend_alone(tmp_path):
    """Drawing must not switch the user's backend (old plots.py called matplotlib.use("Agg"))."""
    import matplotlib
    from PIL import Image

    from cxr_lightning.evaluation.plots import plot_roc_curves

    before = matplotlib.get_backend()
    matplotlib.use("svg")  # a non-interactive backend that works headless and is not Agg
    try:
        probs, targets = calibrated(n=500, num_labels=4)
        roc = plot_roc_curves(probs, targets, ["a", "b", "c", "d"], tmp_path / "roc.png")
        reliability = reliability_diagram(probs, targets, ["a", "b", "c", "d"], tmp_path / "reliability.png")
        nothing = plot_roc_curves(np.zeros((0, 4)), np.zeros((0, 4)), ["a", "b", "c", "d"], tmp_path / "empty.png")
        assert matplotlib.get_backend() == "svg"
    finally:
        matplotlib.use(before)
    for path in (roc, reliability, nothing):
        with Image.open(path) as image:
            assert image.format == "PNG" and image.width > 0 and image.height > 0


def test_ece_keeps_a_probability_of_one_in_the_closed_last_bin_and_agrees_with_the_curve():
    # 2 bins: 0.6 (positive) and 1.0 (negative) share the last bin [.5, 1]: mean .8, 1 positive of 2
    # -> ECE .3. torchmetrics alone would give 1.0 a bin of its own ([1, 1]) and report .2 + .5 = .7.
    ece = expected_calibration_error(np.array([0.6, 1.0]), np.array([1, 0]), n_bins=2)
    assert ece[0] == pytest.approx(0.3, abs=1e-12)
    # Values on the bin edges (and at 0 and 1): the ECE and the reliability curve bin them alike.
    rng = np.random.default_rng(3)
    for n_bins in (2, 5, 10, 15, 20):
        probs = rng.integers(0, n_bins + 1, size=(400, 3)) / n_bins
        targets = (rng.random((400, 3)) < 0.5).astype(int)
        curve = reliability_curve(probs, targets, n_bins)
        gap = np.abs(np.nan_to_num(curve["frac_pos"]) - np.nan_to_num(curve["mean_prob"]))
        from_curve = (curve["count"] * gap).sum(axis=1) / curve["count"].sum(axis=1)
        np.testing.assert_allclose(expected_calibration_error(probs, targets, n_bins), from_curve, atol=1e-12)
