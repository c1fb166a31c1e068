"""Radiologists' labels: the packaged sets, the NIH mapping, AUROC against both references, readers' points, figures."""

from __future__ import annotations

import fnmatch
import gzip
import hashlib
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from cxr_lightning.data.labels import FINDINGS, LABELS, NO_FINDING
from cxr_lightning.data.metadata import find_image_list, read_image_list
from cxr_lightning.evaluation.expert import (
    ExpertLabelsError,
    ExpertLabelSet,
    all_findings,
    four_findings,
    map_finding,
    plot_expert_roc_curves,
    reader_operating_points,
    score_against_experts,
)
from cxr_lightning.evaluation.expert.readers import markdown_table as readers_markdown
from cxr_lightning.evaluation.expert.scoring import markdown_table as scores_markdown
from cxr_lightning.evaluation.expert.sets import packaged_expert_folder
from cxr_lightning.evaluation.predictions_file import PredictionsFileError, label_column, probability_column

REPO = Path(__file__).parents[1]


def _predictions(images, seed: int = 0, informative: pd.DataFrame | None = None) -> pd.DataFrame:
    """A 15-label predictions frame for ``images``: random scores and NIH labels; Pneumothorax scores follow ``informative``."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"image": list(images)})
    for name in LABELS:
        frame[probability_column(name)] = rng.random(len(frame))
    for name in LABELS:
        frame[label_column(name)] = (rng.random(len(frame)) < 0.2).astype(int)
    if informative is not None:
        truth = informative.set_index("image").loc[frame["image"], "Pneumothorax"].to_numpy()
        frame[probability_column("Pneumothorax")] = 0.3 * truth + 0.7 * rng.random(len(frame))
    return frame


@pytest.fixture(scope="module")
def majkowska_test() -> ExpertLabelSet:
    return four_findings("test")


# --- the packaged files -------------------------------------------------------------------------------------------


def test_packaged_sets_have_the_counts_and_checksums_of_their_readme(majkowska_test):
    validation, nabulsi = four_findings("validation"), all_findings()
    assert (len(majkowska_test.labels), len(validation.labels), len(nabulsi.labels)) == (1962, 2414, 810)
    assert len(majkowska_test.readers) + len(validation.readers) == 13081  # individual_readers.csv holds both parts
    assert len(nabulsi.readers) == 4050 and nabulsi.readers["reader"].nunique() == 5
    assert set(majkowska_test.labels["image"]) <= set(read_image_list(find_image_list(None, "test_list.txt")))
    assert set(nabulsi.labels["image"]) <= set(majkowska_test.labels["image"])
    assert int(majkowska_test.labels["Pneumothorax"].sum()) == 195 and int(nabulsi.labels["Abnormal"].sum()) == 578
    readme = (packaged_expert_folder() / "README.md").read_text()
    assert "Majkowska" in readme and "Nabulsi" in readme and "NIH Clinical Center" in readme
    sums = dict(re.findall(r"^\| (\S+\.csv) \| ([0-9a-f]{32}) \|$", readme, flags=re.MULTILINE))
    assert len(sums) == 5
    for name, md5 in sums.items():
        with gzip.open(packaged_expert_folder() / f"{name}.gz", "rb") as handle:
            assert hashlib.md5(handle.read()).hexdigest() == md5, name


def test_every_expert_file_is_in_a_listed_package_and_matched_by_its_package_data():
    # An editable install finds the files whatever pyproject says; a wheel ships only listed packages' matching files.
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    files = [p for p in (packaged_expert_folder()).rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    assert len(files) == 6
    for path in files:
        package = ".".join(path.parent.relative_to(REPO).parts)
        assert package in config["packages"], package
        assert any(fnmatch.fnmatch(path.name, pattern) for pattern in config["package-data"].get(package, [])), path
    assert "cxr_lightning.evaluation.expert" in config["packages"]


def test_a_bad_value_in_a_labels_file_is_an_error_naming_file_line_and_column(tmp_path):
    shutil.copytree(packaged_expert_folder(), tmp_path / "expert")
    path = tmp_path / "expert" / "four_findings" / "test_labels.csv.gz"
    raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    raw.loc[4, "Pneumothorax"] = "MAYBE"
    raw.to_csv(path, index=False, compression="gzip")
    with pytest.raises(ExpertLabelsError, match=r"test_labels\.csv\.gz, line 6, column 'Pneumothorax': 'MAYBE'"):
        four_findings("test", folder=tmp_path / "expert")
    (tmp_path / "expert" / "all_findings" / "test_labels.csv.gz").unlink()
    with pytest.raises(ExpertLabelsError, match="is missing"):
        all_findings(folder=tmp_path / "expert")


# --- the mapping -------------------------------------------------------------------------------------------------------


def test_nodule_or_mass_is_scored_as_the_larger_probability_and_either_label():
    frame = pd.DataFrame({
        probability_column("Nodule"): [0.1, 0.7, 0.3], probability_column("Mass"): [0.4, 0.2, 0.3],
        label_column("Nodule"): [0, 1, 0], label_column("Mass"): [1, 0, 0],
    })  # fmt: skip
    mapped = map_finding(frame, "Nodule or mass")
    assert mapped.source == "max(Nodule, Mass)"
    np.testing.assert_array_equal(mapped.probs, [0.4, 0.7, 0.3])
    np.testing.assert_array_equal(mapped.nih, [1, 1, 0])
    lacking = map_finding(frame.drop(columns=[probability_column("Mass")]), "Nodule or mass")
    assert lacking.probs is None and "prob_Mass" in lacking.reason  # never silently Nodule alone
    assert map_finding(frame, "Fracture").reason == "NIH has no such label"


def test_abnormal_is_one_minus_no_finding_or_the_largest_finding_without_it():
    rng = np.random.default_rng(1)
    frame = pd.DataFrame({probability_column(n): rng.random(4) for n in LABELS})
    for n in LABELS:
        frame[label_column(n)] = [0, 0, 0, 0]
    frame[label_column("Edema")] = [1, 0, 0, 0]
    frame[label_column(NO_FINDING)] = [0, 1, 1, 1]
    with_no_finding = map_finding(frame, "Abnormal")
    np.testing.assert_allclose(with_no_finding.probs, 1 - frame[probability_column(NO_FINDING)])
    np.testing.assert_array_equal(with_no_finding.nih, [1, 0, 0, 0])
    without = map_finding(frame.drop(columns=[probability_column(NO_FINDING), label_column(NO_FINDING)]), "Abnormal")
    np.testing.assert_allclose(without.probs, frame[[probability_column(n) for n in FINDINGS]].max(axis=1))
    np.testing.assert_array_equal(without.nih, [1, 0, 0, 0])
    assert map_finding(frame, "Pleural Thickening").source == "Pleural_Thickening"


# --- AUROC against both references -----------------------------------------------------------------------------------


def test_auroc_against_radiologists_and_nih_equals_sklearn_on_the_same_images(majkowska_test):
    predictions = _predictions(majkowska_test.labels["image"], informative=majkowska_test.labels)
    scores = score_against_experts(predictions, majkowska_test, n_resamples=200)
    table = scores.table.set_index("finding")
    shared = majkowska_test.labels.merge(predictions, on="image")
    for finding, nih in [("Pneumothorax", ["Pneumothorax"]), ("Nodule or mass", ["Nodule", "Mass"])]:
        score = shared[[probability_column(n) for n in nih]].max(axis=1)
        nih_label = shared[[label_column(n) for n in nih]].max(axis=1)
        assert table.at[finding, "expert_auroc"] == pytest.approx(roc_auc_score(shared[finding], score), abs=1e-12)
        assert table.at[finding, "nih_auroc"] == pytest.approx(roc_auc_score(nih_label, score), abs=1e-12)
        assert table.at[finding, "expert_lower"] < table.at[finding, "expert_auroc"] < table.at[finding, "expert_upper"]
        assert table.at[finding, "expert_positives"] == shared[finding].sum()
    assert table.at["Pneumothorax", "expert_auroc"] > 0.8  # the scores were built from the radiologists' labels
    assert np.isnan(table.at["Fracture", "expert_auroc"]) and table.at["Fracture", "note"] == "NIH has no such label"
    assert scores.missing_images == ()


def test_a_run_lacking_expert_images_is_scored_on_the_rest_and_the_missing_are_counted(majkowska_test):
    dropped = majkowska_test.labels["image"].iloc[[0, 5, 17]].tolist()
    keep = [name for name in majkowska_test.labels["image"] if name not in dropped]
    extra = pd.DataFrame({"image": ["00099999_000.png"]})  # an image outside the set is ignored, not counted
    predictions = pd.concat([_predictions(keep), _predictions(extra["image"], seed=3)], ignore_index=True)
    scores = score_against_experts(predictions, majkowska_test, n_resamples=50)
    assert sorted(scores.missing_images) == sorted(dropped)
    assert (scores.table["images"] == 1959).all()
    text = scores_markdown(scores)
    assert "1959 of its 1962 images are in the run (3 missing" in text
    assert "| Fracture | none | 1959 | - | - | NIH has no such label |" in text


def test_a_finding_with_few_expert_positives_gets_no_auroc_only_its_count():
    nabulsi = all_findings()
    scores = score_against_experts(_predictions(nabulsi.labels["image"]), nabulsi, n_resamples=50)
    pneumonia = scores.table.set_index("finding").loc["Pneumonia"]
    assert pneumonia["expert_positives"] == 2 and np.isnan(pneumonia["expert_auroc"])
    assert pneumonia["note"] == "radiologists: fewer than 10 positives (2)"
    assert np.isfinite(pneumonia["nih_auroc"])  # the random NIH labels have enough positives
    assert "| Pneumonia | Pneumonia | 810 | - (2 pos.) |" in scores_markdown(scores)


# --- readers -------------------------------------------------------------------------------------------------------------


def _toy_set(reads: list[tuple[str, str, str]]) -> ExpertLabelSet:
    images = sorted({image for image, _, _ in reads})
    labels = pd.DataFrame({"image": images, "patient_id": "1", "Pneumothorax": 0})
    readers = pd.DataFrame(reads, columns=["image", "reader", "Pneumothorax"])
    return ExpertLabelSet("toy", "", ("Pneumothorax",), labels, readers)


#: Six images read by A, B and C (image 6 twice by C, differently).
_TOY_READS = [
    ("1.png", "A", "YES"), ("1.png", "B", "YES"), ("1.png", "C", "YES"),
    ("2.png", "A", "YES"), ("2.png", "B", "NO"), ("2.png", "C", "NO"),
    ("3.png", "A", "NO"), ("3.png", "B", "YES"), ("3.png", "C", "NO"),
    ("4.png", "A", "NO"), ("4.png", "B", "NO"), ("4.png", "C", "NO"),
    ("5.png", "A", "HEDGE"), ("5.png", "B", "YES"), ("5.png", "C", "YES"),
    ("6.png", "A", "YES"), ("6.png", "B", "YES"), ("6.png", "C", "YES"), ("6.png", "C", "NO"),
]  # fmt: skip


def test_each_reader_is_scored_against_the_majority_of_the_others_by_hand():
    points = reader_operating_points(_toy_set(_TOY_READS)).set_index("reader")
    # A: references (B, C majority) 1: YES, 2: NO, 3: tie, 4: NO, 5: own HEDGE left out, 6: B YES + C hedge -> YES.
    #    A says YES on 1, 2, 6 -> tp 2 (1, 6), fp 1 (2), tn 1 (4).
    assert points.loc["A", ["tp", "fn", "tn", "fp", "ties", "hedged"]].tolist() == [2, 0, 1, 1, 1, 1]
    assert points.loc["A", "sensitivity"] == 1.0 and points.loc["A", "specificity"] == 0.5
    # B: references (A, C) 1 YES, 2 tie, 3 NO, 4 NO, 5 C YES (A hedged) -> YES, 6 A YES (C hedged) -> YES.
    assert points.loc["B", ["tp", "fn", "tn", "fp", "ties"]].tolist() == [3, 0, 1, 1, 1]
    # C: references (A, B) 1 YES, 2 tie, 3 tie, 4 NO, 5 B YES; image 6: C's YES and NO count as a hedge.
    assert points.loc["C", ["tp", "fn", "tn", "fp", "ties", "hedged", "conflicting_duplicates"]].tolist() == [2, 0, 1, 0, 2, 1, 1]
    assert points.loc["C", "images"] == 3 and points.loc["C", "positives"] == 2


def test_counting_hedges_as_no_moves_the_points_as_computed_by_hand():
    points = reader_operating_points(_toy_set(_TOY_READS), hedge="no").set_index("reader")
    # A's hedge on 5 is a NO against B+C's YES: a false negative; on 6, C's conflicting reads are now a NO: B YES vs C NO ties.
    assert points.loc["A", ["tp", "fn", "tn", "fp", "ties", "hedged"]].tolist() == [1, 1, 1, 1, 2, 0]
    # C: 5 is now A NO vs B YES, a tie; C's own NO on 6 against A+B YES is a false negative.
    assert points.loc["C", ["tp", "fn", "tn", "fp", "ties"]].tolist() == [1, 1, 1, 0, 3]
    assert "| Pneumothorax | A | 4 | 2 | 0.500 | 0.500 | 2 | 0 |" in readers_markdown(points.reset_index())
    with pytest.raises(ValueError, match="hedge must be one of"):
        reader_operating_points(_toy_set(_TOY_READS), hedge="maybe")


def test_packaged_readers_points_are_computed_for_every_reader(majkowska_test):
    points = reader_operating_points(majkowska_test, findings=["Pneumothorax"])
    assert points["reader"].nunique() == majkowska_test.readers["reader"].nunique()
    # With hedges excluded, every image a reader read is scored, a tie among the others, or the reader's hedge.
    read = majkowska_test.readers.groupby("reader")["image"].nunique()
    assert (points["images"] + points["ties"] + points["hedged"]).tolist() == read.loc[points["reader"]].tolist()
    has_positives = points["positives"] > 0  # one reader read 12 images, none positive by the others
    assert points["sensitivity"].isna().tolist() == (~has_positives).tolist()
    np.testing.assert_allclose(points["sensitivity"][has_positives], (points["tp"] / points["positives"])[has_positives])
    assert points["conflicting_duplicates"].sum() == 0  # the four duplicated pairs agree on Pneumothorax
    airspace = reader_operating_points(majkowska_test, findings=["Airspace opacity"])
    assert airspace["conflicting_duplicates"].sum() == 4  # 00030573_013 (two readers), 00030636_018, 00030709_002


# --- figures ----------------------------------------------------------------------------------------------------------------


def test_roc_figures_are_written_one_per_scored_finding(tmp_path, majkowska_test):
    predictions = _predictions(majkowska_test.labels["image"], informative=majkowska_test.labels)
    scores = score_against_experts(predictions, majkowska_test, n_resamples=20)
    points = reader_operating_points(majkowska_test, images=predictions["image"])
    files = plot_expert_roc_curves(scores, tmp_path / "figures", points)
    assert sorted(p.name for p in files) == sorted(
        f"expert_roc_four_findings_test_{n}.png" for n in ("pneumothorax", "nodule_or_mass", "airspace_opacity")
    )
    for path in files:
        data = path.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_a_predictions_frame_with_a_bad_value_or_a_repeated_image_is_refused_with_its_place(majkowska_test):
    predictions = _predictions(majkowska_test.labels["image"].iloc[:50])
    bad = predictions.copy()
    bad.loc[7, probability_column("Mass")] = 1.5
    with pytest.raises(PredictionsFileError, match=r"line 9 \(data row 8\), column prob_Mass: 1.5 is not a probability"):
        score_against_experts(bad, majkowska_test, n_resamples=10)
    repeated = pd.concat([predictions, predictions.iloc[[3]]], ignore_index=True)
    with pytest.raises(PredictionsFileError, match=f"image '{predictions['image'].iloc[3]}' has 2 rows"):
        score_against_experts(repeated, majkowska_test, n_resamples=10)
