"""Splits on the real NIH metadata: the paper's counts and Table 4, and no patient in two parts."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.model_selection import train_test_split

from cxr_lightning.data.labels import FINDINGS, LABELS
from cxr_lightning.data.metadata import MetadataError, NIHMetadata, read_image_list
from cxr_lightning.data.split_statistics import prevalence_table
from cxr_lightning.data.splits import PARTS, make_split, official_split
from cxr_lightning.evaluation.paper_results import TABLE_4 as PAPER_TABLE_4


def assert_no_leakage(meta: NIHMetadata, split) -> None:
    patients = meta.frame["patient_id"].to_numpy()
    sets = [set(patients[split.part(p)].tolist()) for p in PARTS]
    assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])
    rows = np.concatenate([split.part(p) for p in PARTS])
    assert len(rows) == len(np.unique(rows))


@pytest.fixture(scope="module")
def paper(nih_metadata, nih_lists):
    return make_split("paper", nih_metadata, *nih_lists)


def test_paper_split_counts(paper):
    assert (len(paper.train), len(paper.val), len(paper.test)) == (73_633, 12_891, 25_596)


def test_paper_split_equals_sklearn_train_test_split(nih_metadata, nih_lists, paper):
    frame = nih_metadata.frame
    train_val = set(read_image_list(nih_lists[0]))
    patients = frame[frame["image"].isin(train_val)]["patient_id"].unique()
    train_patients, val_patients = train_test_split(patients, test_size=0.15, random_state=100)
    patient_of = frame["patient_id"].to_numpy()
    assert set(patient_of[paper.train].tolist()) == set(train_patients.tolist())
    assert set(patient_of[paper.val].tolist()) == set(val_patients.tolist())
    assert set(frame["image"].to_numpy()[paper.test]) == set(read_image_list(nih_lists[1]))


def test_paper_split_reproduces_table_4(nih_metadata, paper):
    table = prevalence_table(nih_metadata, paper)
    for label, expected in PAPER_TABLE_4.items():
        assert tuple(round(v, 2) for v in table.loc[label]) == expected, label
    assert [round(v, 2) for v in table.loc["% of images"]] == [65.67, 11.50, 22.83]
    assert table.loc["patients"].tolist() == [23_806, 4_202, 2_797]


@pytest.mark.parametrize("kind", ["paper", "official", "patient", "patient_stratified"])
def test_no_patient_in_two_parts_on_real_metadata(nih_metadata, nih_lists, kind):
    if kind == "official":
        split = make_split("official", nih_metadata, *nih_lists, val_fraction=0.2, seed=7)
    elif kind.startswith("patient"):
        split = make_split("patient", nih_metadata, seed=5, stratify=kind.endswith("stratified"))
    else:
        split = make_split("paper", nih_metadata, *nih_lists)
    assert_no_leakage(nih_metadata, split)
    assert sum(len(split.part(p)) for p in PARTS) == 112_120


def test_official_split_fraction_and_seed(nih_metadata, nih_lists):
    a = make_split("official", nih_metadata, *nih_lists, val_fraction=0.2, seed=7)
    b = make_split("official", nih_metadata, *nih_lists, val_fraction=0.2, seed=7)
    c = make_split("official", nih_metadata, *nih_lists, val_fraction=0.2, seed=8)
    assert np.array_equal(a.val, b.val) and not np.array_equal(a.val, c.val)
    val_patients = nih_metadata.frame["patient_id"].to_numpy()[a.val]
    assert np.unique(val_patients).size == int(np.ceil(0.2 * 28_008))  # 28,008 train_val patients
    assert len(a.test) == 25_596


def test_stratified_patient_split_puts_every_finding_in_every_part(nih_metadata):
    split = make_split("patient", nih_metadata, fractions=(0.8, 0.1, 0.1), seed=0, stratify=True)
    table = prevalence_table(nih_metadata, split)
    overall = 100 * nih_metadata.label_matrix().mean(axis=0)
    for label, prevalence in zip(LABELS, overall):
        assert (table.loc[label] > 0).all(), label
        # each part's prevalence within 25% (relative) of the whole data set's
        assert np.allclose(table.loc[label].to_numpy(dtype=float), prevalence, rtol=0.25), label
    patients = table.loc["patients"].to_numpy(dtype=float)
    assert np.allclose(patients / patients.sum(), (0.8, 0.1, 0.1), atol=0.01)
    assert "Hernia" in FINDINGS


def test_patient_in_both_official_lists_is_an_error(nih_metadata, nih_lists):
    train_val, test = read_image_list(nih_lists[0]), read_image_list(nih_lists[1])
    patient_of = nih_metadata.frame.set_index("image")["patient_id"]
    patient = patient_of[test[0]]
    moved = [name for name in test if patient_of[name] == patient][:1]  # one image of a test patient
    with pytest.raises(MetadataError, match=rf"1 patient\(s\) have images in both train_val_list and test_list, e.g. \[{patient}\]"):
        official_split(nih_metadata, train_val + moved, [t for t in test if t not in moved])


def test_listed_image_absent_from_csv_is_an_error(nih_metadata, nih_lists, tmp_path):
    bogus = tmp_path / "test_list.txt"
    bogus.write_text("\n".join(read_image_list(nih_lists[1])[:10] + ["99999999_000.png"]) + "\n")
    with pytest.raises(MetadataError, match=r"1 image\(s\) of test_list are not in the metadata CSV.*99999999_000.png"):
        make_split("paper", nih_metadata, nih_lists[0], bogus)


def test_empty_part_is_an_error(nih_metadata):
    small = NIHMetadata(nih_metadata.frame.iloc[:4].reset_index(drop=True), nih_metadata.report)  # 2 patients
    with pytest.raises(MetadataError, match="the test part came out empty"):
        make_split("patient", small, fractions=(0.5, 0.5, 0.0))
