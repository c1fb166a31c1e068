"""Subgroup evaluation: groups from the file or the metadata, AUROC per group, TPR/FPR at thresholds and the gaps."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from cxr_lightning.evaluation.prediction_frames import read_predictions_frame
from cxr_lightning.evaluation.predictions_file import label_column, probability_column, write_predictions
from cxr_lightning.evaluation.subgroups import (
    UNKNOWN,
    age_band,
    attach_demographics,
    auroc_markdown_table,
    rates_markdown_table,
    subgroup_auroc,
    subgroup_rates,
)

LABELS = ("Effusion", "No Finding", "Hernia")
THRESHOLDS = {"Effusion": 0.5, "No Finding": 0.5, "Hernia": 0.5}


def _frame(n_patients: int = 120, per_patient: int = 4, seed: int = 0, underdiagnosed_sex: str | None = None) -> pd.DataFrame:
    """Predictions with age, sex and view columns; Hernia has 3 positives, all in women; optionally one sex underdiagnosed."""
    rng = np.random.default_rng(seed)
    patients = np.repeat(np.arange(1, n_patients + 1), per_patient)
    n = len(patients)
    frame = pd.DataFrame({
        "image": [f"{p:08d}_{k:03d}.png" for p, k in zip(patients, np.tile(np.arange(per_patient), n_patients))],
        "sex": np.where(patients % 2 == 0, "F", "M"),
        "age": rng.integers(5, 95, n).astype(float),
        "view": np.where(rng.random(n) < 0.5, "PA", "AP"),
    })  # fmt: skip
    sick = rng.random(n) < 0.4
    frame[label_column("Effusion")] = sick.astype(int)
    frame[label_column("No Finding")] = (~sick).astype(int)
    hernia = np.zeros(n, dtype=int)
    hernia[np.flatnonzero(frame["sex"] == "F")[:3]] = 1
    frame[label_column("Hernia")] = hernia
    frame[probability_column("Effusion")] = np.clip(0.35 * sick + 0.65 * rng.random(n), 0, 1)
    no_finding = np.clip(0.35 * ~sick + 0.65 * rng.random(n), 0, 1)
    if underdiagnosed_sex is not None:  # the group's sick images look healthy to the model
        hidden = sick & (frame["sex"] == underdiagnosed_sex).to_numpy()
        no_finding[hidden] = 0.9
    frame[probability_column("No Finding")] = no_finding
    frame[probability_column("Hernia")] = rng.random(n)
    return frame


def test_age_bands_include_their_lower_bound_and_unknown_ages():
    bands = age_band([0, 19.99, 20, 59.5, 79, 80, 120, np.nan])
    assert bands.tolist() == ["0-19", "0-19", "20-39", "40-59", "60-79", "80+", "80+", UNKNOWN]


def test_subgroup_auroc_per_group_equals_sklearn_on_that_group():
    frame = attach_demographics(_frame())
    result = subgroup_auroc(frame, n_resamples=100)
    table = result.table
    checked = 0
    for row in table[(table["label"] != "macro") & table["auroc"].notna()].itertuples(index=False):
        group = frame[frame[row.attribute] == row.group]
        expected = roc_auc_score(group[label_column(row.label)], group[probability_column(row.label)])
        assert row.auroc == pytest.approx(expected, abs=1e-12), (row.attribute, row.group, row.label)
        assert row.lower <= row.auroc <= row.upper and row.images == len(group)
        assert row.patients == group["patient"].nunique()
        checked += 1
    assert checked >= 2 * (2 + 5 + 2) - 2  # Effusion and No Finding in (nearly) every group
    # macro: the mean over the labels every group of the attribute can score (never Hernia: 3 positives)
    macros = table[table["label"] == "macro"]
    assert len(macros) == 2 + 5 + 2
    for row in macros.itertuples(index=False):
        labels = table[
            (table["attribute"] == row.attribute)
            & (table["group"] == row.group)
            & table["label"].isin(["Effusion", "No Finding"])
        ]
        assert row.auroc == pytest.approx(labels["auroc"].mean(), abs=1e-12) and row.note == "mean over 2 labels"
        assert row.lower < row.auroc < row.upper


def test_a_group_with_few_positives_is_flagged_not_scored():
    result = subgroup_auroc(_frame(), attributes=["sex"], n_resamples=50)
    hernia = result.table[(result.table["label"] == "Hernia")].set_index("group")
    assert hernia.loc["F", "positives"] == 3 and np.isnan(hernia.loc["F", "auroc"])
    assert hernia.loc["F", "note"] == "fewer than 10 positives (3)"
    assert "| sex | F | Hernia | 240 | 60 | 3 | - | fewer than 10 positives (3) |" in auroc_markdown_table(result)
    rates = subgroup_rates(_frame(), THRESHOLDS, attributes=["sex"], n_resamples=50)
    hernia_rates = rates.rates[rates.rates["label"] == "Hernia"].set_index("group")
    assert np.isnan(hernia_rates.loc["F", "tpr"]) and np.isfinite(hernia_rates.loc["F", "fpr"])  # 237 negatives suffice
    hernia_gap = rates.gaps[(rates.gaps["label"] == "Hernia") & (rates.gaps["rate"] == "tpr")].iloc[0]
    assert np.isnan(hernia_gap["gap"]) and hernia_gap["note"] == "fewer than 10 positives in F, M"


def test_rates_per_group_equal_the_hand_counts():
    frame = attach_demographics(_frame(seed=4))
    rates = subgroup_rates(frame, [0.5, 0.4, 0.5], n_resamples=50).rates  # thresholds in label order
    thresholds = dict(zip(LABELS, [0.5, 0.4, 0.5]))
    for row in rates[rates["label"] != "Hernia"].itertuples(index=False):
        group = frame[frame[row.attribute] == row.group]
        predicted = group[probability_column(row.label)] >= thresholds[row.label]
        truth = group[label_column(row.label)] == 1
        if truth.sum() >= 10:
            assert row.tpr == pytest.approx((predicted & truth).sum() / truth.sum())
        if (~truth).sum() >= 10:
            assert row.fpr == pytest.approx((predicted & ~truth).sum() / (~truth).sum())


def test_gap_interval_contains_the_point_gap_and_finds_planted_underdiagnosis():
    result = subgroup_rates(_frame(n_patients=200, underdiagnosed_sex="F"), THRESHOLDS, n_resamples=400)
    gaps = result.gaps.set_index(["attribute", "label", "rate"])
    rates = result.rates.set_index(["attribute", "group", "label"])
    sex = gaps.loc[("sex", "No Finding", "fpr")]
    assert (sex["group_a"], sex["group_b"]) == ("F", "M")
    assert sex["gap"] == pytest.approx(
        rates.loc[("sex", "F", "No Finding"), "fpr"] - rates.loc[("sex", "M", "No Finding"), "fpr"]
    )
    assert sex["lower"] > 0.3  # women's sick images were called healthy: a large FPR gap, its interval far from 0
    finite = result.gaps.dropna(subset=["gap"])
    assert len(finite) >= 8 and ((finite["lower"] <= finite["gap"]) & (finite["gap"] <= finite["upper"])).all()
    age = gaps.loc[("age_band", "No Finding", "fpr")]
    band_fprs = rates.loc["age_band"].xs("No Finding", level="label")["fpr"].dropna()
    assert age["value_a"] == band_fprs.max() and age["value_b"] == band_fprs.min()
    assert "| sex | No Finding | FPR | F - M |" in rates_markdown_table(result)


def test_demographic_columns_of_the_file_are_used_and_the_others_come_from_the_metadata(nih_metadata):
    images = nih_metadata.frame["image"].iloc[:30].tolist() + ["00099999_000.png"]  # the last is in no metadata
    frame = pd.DataFrame({"image": images, "sex": ["female"] * 31, probability_column("Edema"): 0.5, label_column("Edema"): 0})
    joined = attach_demographics(frame, nih_metadata)
    assert (joined["sex"] == "F").all()  # the file's column wins (parsed: "female" -> F)
    expected = nih_metadata.frame.set_index("image").loc[images[:30]]
    np.testing.assert_array_equal(joined["age"].to_numpy()[:30], expected["age"].to_numpy())
    assert joined["view"].tolist()[:30] == expected["view"].tolist()
    assert joined["view"].iloc[-1] == UNKNOWN and joined["age_band"].iloc[-1] == UNKNOWN


def test_a_predictions_file_keeps_its_age_sex_view_columns(tmp_path):
    frame = _frame(n_patients=5)
    path = tmp_path / "test_predictions.csv"
    probs = frame[[probability_column(n) for n in LABELS]].to_numpy()
    write_predictions(path, frame["image"].tolist(), probs, frame[[label_column(n) for n in LABELS]].to_numpy(), LABELS)
    csv = pd.read_csv(path)
    csv["age"], csv["sex"], csv["view"] = "058Y", "M", "pa"
    csv.to_csv(path, index=False)
    joined = attach_demographics(read_predictions_frame(path))
    assert (joined["age"] == 58).all() and (joined["view"] == "PA").all() and (joined["age_band"] == "40-59").all()


def test_a_threshold_missing_for_a_label_is_an_error_naming_it():
    with pytest.raises(KeyError, match="Hernia"):
        subgroup_rates(_frame(n_patients=10), {"Effusion": 0.5, "No Finding": 0.5}, n_resamples=10)
