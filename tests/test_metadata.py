"""Reading the NIH metadata CSV: the packaged 2020 file, the 2017 format and bad input."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from cxr_lightning.data.labels import FINDINGS, LABELS, NO_FINDING, label_names
from cxr_lightning.data.metadata import MetadataError, read_image_list, read_metadata
from tests.conftest import NIH_HEADER

# Positive images per label in the 2020 CSV, counted independently with the csv module.
LABEL_COUNTS_2020 = {
    "Atelectasis": 11559, "Cardiomegaly": 2776, "Consolidation": 4667, "Edema": 2303, "Effusion": 13317,
    "Emphysema": 2516, "Fibrosis": 1686, "Hernia": 227, "Infiltration": 19894, "Mass": 5782,
    "No Finding": 60361, "Nodule": 6331, "Pleural_Thickening": 3385, "Pneumonia": 1431, "Pneumothorax": 5302,
}  # fmt: skip


def write_csv(path: Path, rows: list[str], header: str = NIH_HEADER) -> Path:
    path.write_text(header + "\n" + "\n".join(rows) + "\n")
    return path


def row(image="00000001_000.png", labels="Cardiomegaly", follow="0", patient="1", age="57", sex="M", view="PA"):
    return f"{image},{labels},{follow},{patient},{age},{sex},{view},2682,2749,0.143,0.143"


def test_label_order_is_alphabetical_with_no_finding():
    assert list(LABELS) == sorted(LABELS) and len(LABELS) == 15 and LABELS[10] == NO_FINDING
    assert label_names(False) == FINDINGS and NO_FINDING not in FINDINGS and len(FINDINGS) == 14


def test_packaged_2020_metadata(nih_metadata):
    frame = nih_metadata.frame
    assert len(frame) == 112_120 and frame["patient_id"].nunique() == 30_805
    assert dict(zip(LABELS, nih_metadata.label_matrix().sum(axis=0).tolist())) == LABEL_COUNTS_2020
    assert nih_metadata.report.changed == 0
    assert frame["age"].between(0, 120).all() and set(frame["sex"]) == {"M", "F"} and set(frame["view"]) == {"PA", "AP"}
    first = frame.iloc[1]
    assert first["image"] == "00000001_001.png" and first["Cardiomegaly"] == 1 and first["Emphysema"] == 1 and first["Effusion"] == 0


def test_2017_format_ages_and_unknown_values_are_counted(tmp_path):
    # The 2017 file: ages over 100 and DICOM-style '058Y', a trailing comma on every line.
    rows = [
        row("a.png", age="058Y") + ",",
        row("b.png", age="148", patient="2") + ",",
        row("c.png", age="abc", patient="3") + ",",
        row("d.png", age="-4", patient="4", sex="O") + ",",
        row("e.png", age="006M", patient="5", view="LL") + ",",
        row("f.png", age="61", patient="6", labels="Effusion|Mass") + ",",
    ]
    path = write_csv(tmp_path / "Data_Entry_2017.csv", rows, NIH_HEADER + ",")
    with pytest.warns(UserWarning, match="ages outside 0..120"):
        meta = read_metadata(path)
    report = meta.report
    assert (report.ages_from_dicom_strings, report.ages_non_numeric, report.ages_out_of_range) == (2, 1, 2)
    assert (report.sex_unknown, report.view_unknown) == (1, 1)
    ages = meta.frame["age"].to_numpy()
    assert ages[0] == 58 and ages[4] == pytest.approx(0.5) and ages[5] == 61
    assert np.isnan(ages[1:4]).all()
    assert meta.frame["sex"].tolist()[3] == "" and meta.frame["view"].tolist()[4] == ""
    # labels stay on their own image
    assert meta.frame.set_index("image").loc["f.png", ["Effusion", "Mass", NO_FINDING]].tolist() == [1, 1, 0]


def test_error_policy_names_file_line_and_value(tmp_path):
    path = write_csv(tmp_path / "m.csv", [row("a.png"), row("b.png", age="412", patient="2")])
    with pytest.raises(MetadataError, match=r"m\.csv, line 3: age outside 0\.\.120 years: '412'"):
        read_metadata(path, bad_values="error")


@pytest.mark.parametrize(
    ("rows", "header", "message"),
    [
        ([row()], NIH_HEADER.replace("Patient Age", "Age"), r"missing column\(s\) \['Patient Age'\]"),
        ([row(), row("b.png", labels="Cardiomegaly|Flu")], NIH_HEADER, r"line 3: unknown label 'Flu'"),
        ([row(), row("b.png", labels="")], NIH_HEADER, r"line 3: empty 'Finding Labels'"),
        ([row(), row("b.png"), row("00000001_000.png")], NIH_HEADER, r"appears on lines \[2, 4\]"),
        ([row(patient="x1")], NIH_HEADER, r"line 2: Patient ID 'x1' is not an integer"),
        ([row(labels="No Finding|Mass")], NIH_HEADER, r"line 2: 'No Finding' together with findings"),
    ],
)
def test_structural_errors(tmp_path, rows, header, message):
    with pytest.raises(MetadataError, match=message):
        read_metadata(write_csv(tmp_path / "bad.csv", rows, header))


def test_image_list_rejects_duplicates(tmp_path):
    path = tmp_path / "list.txt"
    path.write_text("a.png\nb.png\n\na.png\n")
    # The file's own line numbers: the blank line counts.
    with pytest.raises(MetadataError, match=r"'a.png' is listed twice \(lines 1 and 4\)"):
        read_image_list(path)
    path.write_text("a.png\n\nb.png\n")
    assert read_image_list(path) == ["a.png", "b.png"]


@pytest.mark.parametrize("gzipped", [False, True])
def test_image_list_with_a_byte_order_mark_reads_its_first_name(tmp_path, gzipped):
    import gzip

    text = "\ufeffa.png\n\nb.png\n"  # as a Windows editor saves it
    path = tmp_path / ("list.txt.gz" if gzipped else "list.txt")
    path.write_bytes(gzip.compress(text.encode("utf-8")) if gzipped else text.encode("utf-8"))
    assert read_image_list(path) == ["a.png", "b.png"]


@pytest.mark.parametrize(
    ("content", "message"),
    [("", r"is empty \(no header, no rows\)"), (NIH_HEADER + "\n", "has a header but no data rows")],
    ids=["zero_bytes", "header_only"],
)
def test_empty_metadata_csv_is_an_error_naming_the_file(tmp_path, content, message):
    path = tmp_path / "Data_Entry_2017_v2020.csv"
    path.write_text(content)
    with pytest.raises(MetadataError, match=rf"{re.escape(str(path))}.*{message}.*delete it from the data root"):
        read_metadata(path)
