"""One set of field parsers (age, sex, view): the NIH CSV, DICOM tags and inference's metadata CSV read a value alike.

The inputs are the ones on which the readers used to disagree: ``'1_0'`` and Arabic-Indic digits
(Python's float() took them, pandas did not), ``male``/``female`` (only inference took them).
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pytest

from cxr_lightning.data.dicom import load_dicom_grey
from cxr_lightning.data.encoding import MetadataEncoder, metadata_frame
from cxr_lightning.data.fields import parse_age, parse_ages, parse_sex, parse_view
from cxr_lightning.data.metadata import MetadataError, read_metadata
from cxr_lightning.inference.metadata_table import read_metadata_table
from tests.conftest import NIH_HEADER
from tests.test_inference import STORED_12, write_dicom


def nih_csv(path: Path, age: str = "57", sex: str = "M", view: str = "PA") -> Path:
    path.write_text(f"{NIH_HEADER}\na.png,No Finding,0,1,{age},{sex},{view},2682,2749,0.143,0.143\n", encoding="utf-8")
    return path


def read_by_every_reader(tmp_path: Path, age: str = "57", sex: str = "M", view: str = "PA") -> dict[str, tuple]:
    """``reader -> (age, sex, view)`` of one value written for the NIH reader, inference's table and (ASCII only) a DICOM file."""
    nih = read_metadata(nih_csv(tmp_path / "nih.csv", age, sex, view), quiet=True).frame.iloc[0]
    (tmp_path / "ours.csv").write_text(f"image,age,sex,view\na.png,{age},{sex},{view}\n", encoding="utf-8")
    ours = read_metadata_table(tmp_path / "ours.csv").iloc[0]
    read = {"nih": (nih["age"], nih["sex"], nih["view"]), "inference": (ours["age"], ours["sex"], ours["view"])}
    if all(text.isascii() for text in (age, sex, view)):  # a DICOM file's default character set is ASCII
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # pydicom warns about values outside the VR's rules, and keeps them
            path = write_dicom(tmp_path / "a.dcm", STORED_12, PatientAge=age, PatientSex=sex, ViewPosition=view)
        _, tags = load_dicom_grey(path)
        read["dicom"] = (tags["age"], tags["sex"], tags["view"])
    return read


@pytest.mark.parametrize(
    "text, years",
    [
        ("058Y", 58.0), ("006M", 0.5), ("010W", 70 / 365.25), ("003D", 3 / 365.25), ("058y", 58.0), ("52", 52.0),
        ("52.5", 52.5), ("120", 120.0),
        ("1_0", math.nan),  # Python's float() reads 10: the DICOM and inference readers used to
        ("\u0665\u0668", math.nan),  # Arabic-Indic 58: float() reads it, pandas and the DICOM AS repertoire do not
        ("\u0665\u0668Y", math.nan),  # ... nor as an age string (\d used to take these digits)
        ("130Y", math.nan), ("121", math.nan), ("-4", math.nan), ("inf", math.nan), ("abc", math.nan), ("58 years", math.nan),
    ],
)  # fmt: skip
def test_every_reader_reads_an_age_alike(tmp_path, text, years):
    read = read_by_every_reader(tmp_path, age=text)
    assert len(read) == (3 if text.isascii() else 2)
    for reader, (age, _, _) in read.items():
        assert age == pytest.approx(years, nan_ok=True), reader
    assert parse_age(text) == pytest.approx(years, nan_ok=True)


@pytest.mark.parametrize(
    "sex, expected", [("M", "M"), ("f", "F"), ("MALE", "M"), ("female", "F"), (" Male ", "M"), ("O", ""), ("X", ""), ("", "")]
)
def test_every_reader_reads_a_sex_alike(tmp_path, sex, expected):
    # male/female: inference's table took them, the NIH and DICOM readers made them unknown; they are M/F
    for reader, (_, got, _) in read_by_every_reader(tmp_path, sex=sex).items():
        assert got == expected, reader
    assert parse_sex(sex) == expected


@pytest.mark.parametrize("view, expected", [("PA", "PA"), ("ap", "AP"), (" Pa ", "PA"), ("LL", ""), ("LATERAL", ""), ("", "")])
def test_every_reader_reads_a_view_alike(tmp_path, view, expected):
    for reader, (_, _, got) in read_by_every_reader(tmp_path, view=view).items():
        assert got == expected, reader
    assert parse_view(view) == expected


def test_the_nih_reader_counts_what_the_parsers_reject(tmp_path):
    """``bad_values='missing'`` counts each unusable value once and keeps the row; ``'error'`` names the line and value."""
    rows = [("1_0", "male", "PA"), ("058Y", "FEMALE", "LL"), ("130Y", "O", "ap"), ("", "", "")]
    lines = [f"{i}.png,No Finding,0,{i + 1},{age},{sex},{view},1,1,0.1,0.1" for i, (age, sex, view) in enumerate(rows)]
    path = tmp_path / "nih.csv"
    path.write_text(NIH_HEADER + "\n" + "\n".join(lines) + "\n", encoding="utf-8")
    with pytest.warns(UserWarning, match="2 non-numeric ages set to missing"):
        meta = read_metadata(path)
    report = meta.report
    assert (report.ages_from_dicom_strings, report.ages_non_numeric, report.ages_out_of_range) == (2, 2, 1)
    assert (report.sex_unknown, report.view_unknown) == (2, 2)
    assert meta.frame["sex"].tolist() == ["M", "F", "", ""] and meta.frame["view"].tolist() == ["PA", "", "AP", ""]
    np.testing.assert_array_equal(meta.frame["age"].to_numpy(), [np.nan, 58.0, np.nan, np.nan])
    with pytest.raises(MetadataError, match=r"line 4: unknown sex 'O' \(2 such rows"):  # male/female are not unknown
        read_metadata(path, bad_values="error")


def test_parse_ages_says_why_each_age_is_unusable():
    parsed = parse_ages(["058Y", "130Y", "abc", None, 47.5, True, np.int64(5), " 6 m "])
    np.testing.assert_array_equal(parsed.years, [58.0, np.nan, np.nan, np.nan, 47.5, np.nan, 5.0, 0.5])
    assert parsed.from_age_string.tolist() == [True, True, False, False, False, False, False, True]
    assert parsed.non_numeric.tolist() == [False, False, True, True, False, True, False, False]  # a bool is not an age
    assert parsed.out_of_range.tolist() == [False, True, False, False, False, False, False, False]
    assert parse_ages([]).years.shape == (0,)


def test_metadata_rows_with_missing_fields_encode_as_unknown():
    """The one rows -> frame helper of Predictor.encode_metadata and the export sidecar: None/missing is unknown."""
    encoder = MetadataEncoder("onehot", age_mean=50.0, age_std=10.0)
    rows = [{"age": None, "sex": None, "view": "AP"}, {"age": 60, "sex": "F"}, {}]
    frame = metadata_frame(rows)
    assert frame.columns.tolist() == ["age", "sex", "view"] and frame["sex"].tolist() == ["", "F", ""]
    np.testing.assert_array_equal(encoder.encode(frame), [[0, 0, 0, 0, 1], [1, 0, 1, 0, 0], [0, 0, 0, 0, 0]])
