"""Reading and validating the NIH ChestX-ray14 metadata CSV and the official image lists.

The package ships the 2020 revision of ``Data_Entry_2017_v2020.csv`` and the official
``train_val_list.txt`` / ``test_list.txt`` (gzipped, under ``cxr_lightning/data/resources``);
they are used whenever a data root has no copies of its own. The 2017 file is accepted too.

Bad values follow one policy, chosen by ``bad_values``:

* ``"missing"`` (default): an age that is non-numeric or outside 0..120 years, a sex other than
  M/F (or male/female) and a view other than PA/AP become missing (NaN / ``""``); every such change
  is counted in :class:`MetadataReport` and printed as a warning. The metadata encoder imputes missing values
  from the training split, so no row is dropped and no label moves.
* ``"error"``: the first bad value raises :class:`MetadataError` naming the file, row and value.

Ages written the DICOM way (``058Y``, ``006M``) are converted to years and counted (the field
parsers are :mod:`cxr_lightning.data.fields`, shared with DICOM tags and inference). Structural
problems are always errors: a missing column, an unknown or empty label, a duplicated image name,
a non-integer patient id.
"""

from __future__ import annotations

import functools
import gzip
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from cxr_lightning.data.fields import MAX_AGE_YEARS, parse_ages, parse_sex, parse_view
from cxr_lightning.data.labels import LABELS, NO_FINDING

BadValuePolicy = Literal["missing", "error"]

METADATA_FILENAMES = ("Data_Entry_2017_v2020.csv", "Data_Entry_2017_v2020.csv.gz", "Data_Entry_2017.csv", "Data_Entry_2017.csv.gz")
TRAIN_VAL_LIST = "train_val_list.txt"
TEST_LIST = "test_list.txt"

#: NIH column -> our column name. The sex column is ``Patient Gender`` in both revisions.
REQUIRED_COLUMNS = {
    "Image Index": "image",
    "Finding Labels": "finding_labels",
    "Patient ID": "patient_id",
    "Patient Age": "age",
    "Patient Gender": "sex",
    "View Position": "view",
}
OPTIONAL_COLUMNS = {"Follow-up #": "follow_up"}
COLUMN_ALIASES = {"Patient Sex": "Patient Gender", "Finding Label": "Finding Labels"}


#: What to do about an unusable metadata CSV (a data root's copy wins over the packaged one).
_REPLACE_HINT = (
    "replace it with NIH's full Data_Entry_2017_v2020.csv, or delete it from the data root to use the copy "
    "shipped with cxr-lightning"
)


class MetadataError(ValueError):
    """A metadata file or image list that cannot be used as it is."""


@dataclass
class MetadataReport:
    """What reading one metadata file changed, so nothing is altered silently."""

    source: str
    rows: int = 0
    ages_from_dicom_strings: int = 0
    ages_non_numeric: int = 0
    ages_out_of_range: int = 0
    sex_unknown: int = 0
    view_unknown: int = 0
    examples: list[str] = field(default_factory=list)

    @property
    def changed(self) -> int:
        return self.ages_non_numeric + self.ages_out_of_range + self.sex_unknown + self.view_unknown

    def lines(self) -> list[str]:
        out = []
        if self.ages_from_dicom_strings:
            out.append(f"{self.ages_from_dicom_strings} ages written like '058Y' converted to years")
        if self.ages_non_numeric:
            out.append(f"{self.ages_non_numeric} non-numeric ages set to missing")
        if self.ages_out_of_range:
            out.append(f"{self.ages_out_of_range} ages outside 0..{MAX_AGE_YEARS} years set to missing")
        if self.sex_unknown:
            out.append(f"{self.sex_unknown} sexes other than M/F set to unknown")
        if self.view_unknown:
            out.append(f"{self.view_unknown} view positions other than PA/AP set to unknown")
        return out


@dataclass
class NIHMetadata:
    """The validated metadata table.

    ``frame`` keeps the CSV's row order and has the columns ``image``, ``finding_labels``,
    ``follow_up``, ``patient_id``, ``age`` (years, NaN = missing), ``sex`` (``M``/``F``/``""``),
    ``view`` (``PA``/``AP``/``""``) and one 0/1 ``uint8`` column per label of :data:`LABELS`.
    """

    frame: pd.DataFrame
    report: MetadataReport

    def __len__(self) -> int:
        return len(self.frame)

    def label_matrix(self, labels: tuple[str, ...] = LABELS) -> np.ndarray:
        """``uint8`` array of shape ``(rows, len(labels))`` in the given label order."""
        return self.frame[list(labels)].to_numpy(dtype=np.uint8)

    def positions(self, images: list[str] | np.ndarray, source: str = "the image list") -> np.ndarray:
        """Row positions of ``images``; an image absent from the CSV is an error naming it."""
        index = pd.Index(self.frame["image"])
        pos = index.get_indexer(images)
        if (pos < 0).any():
            missing = [images[i] for i in np.flatnonzero(pos < 0)[:5]]
            raise MetadataError(
                f"{int((pos < 0).sum())} image(s) of {source} are not in the metadata CSV "
                f"{self.report.source}, e.g. {missing}"
            )
        return pos


def packaged_file(name: str) -> Path:
    """Path of a data file shipped inside the package (``cxr_lightning/data/resources``)."""
    path = Path(str(resources.files("cxr_lightning.data") / "resources" / name))
    if not path.is_file():
        raise FileNotFoundError(f"packaged data file {name} is missing from {path.parent}; reinstall cxr-lightning")
    return path


def find_metadata_csv(root: str | Path | None) -> Path:
    """The metadata CSV in ``root`` if it has one (either revision, gzipped or not), else the packaged one."""
    if root is not None:
        for name in METADATA_FILENAMES:
            if (Path(root) / name).is_file():
                return Path(root) / name
    return packaged_file("Data_Entry_2017_v2020.csv.gz")


def find_image_list(root: str | Path | None, name: str) -> Path:
    """``root/name`` if present, else the packaged official list of that name."""
    if root is not None:
        for candidate in (name, name + ".gz"):
            if (Path(root) / candidate).is_file():
                return Path(root) / candidate
    return packaged_file(name + ".gz")


def _open_text(path: Path):
    # utf-8-sig: a list saved by a Windows editor starts with a byte-order mark, which would
    # otherwise stick to the first image name and make it unknown.
    return gzip.open(path, "rt", encoding="utf-8-sig") if path.suffix == ".gz" else open(path, encoding="utf-8-sig")


def read_image_list(path: str | Path) -> list[str]:
    """Image names of an official list file (one per line, blank lines ignored; errors cite the file's own line numbers)."""
    path = Path(path)
    try:
        with _open_text(path) as handle:
            lines = [line.strip() for line in handle]
    except (OSError, EOFError, UnicodeDecodeError) as err:
        raise MetadataError(f"cannot read image list {path}: {err}") from err
    names: list[str] = []
    seen: dict[str, int] = {}
    for line_number, name in enumerate(lines, start=1):
        if not name:
            continue
        if name in seen:
            raise MetadataError(f"{path}: image {name!r} is listed twice (lines {seen[name]} and {line_number}); remove one")
        seen[name] = line_number
        names.append(name)
    return names


def _row(i: int) -> int:
    """CSV line number of data row ``i`` (line 1 is the header)."""
    return int(i) + 2


def _bad(policy: BadValuePolicy, report: MetadataReport, mask: np.ndarray, values: pd.Series, what: str) -> int:
    count = int(mask.sum())
    if count:
        first = int(np.flatnonzero(mask)[0])
        message = f"{report.source}, line {_row(first)}: {what} {values.iloc[first]!r}"
        if policy == "error":
            raise MetadataError(f"{message} ({count} such rows; use bad_values='missing' to treat them as missing)")
        report.examples.append(message)
    return count


def _parse_ages(raw: pd.Series, policy: BadValuePolicy, report: MetadataReport) -> np.ndarray:
    parsed = parse_ages(raw)
    report.ages_from_dicom_strings = int(parsed.from_age_string.sum())
    report.ages_non_numeric = _bad(policy, report, parsed.non_numeric, raw, "non-numeric age")
    report.ages_out_of_range = _bad(policy, report, parsed.out_of_range, raw, "age outside 0..120 years:")
    return parsed.years


def _parse_category(raw: pd.Series, parse: Callable[[object], str], policy, report, what: str) -> tuple[np.ndarray, int]:
    values = np.array([parse(value) for value in raw], dtype=object)
    unknown = values == ""  # an empty cell is counted too
    return values, _bad(policy, report, unknown, raw, f"unknown {what}")


def _one_hot_labels(finding_labels: pd.Series, source: str) -> pd.DataFrame:
    text = finding_labels.fillna("").astype(str).reset_index(drop=True)  # row positions, whatever the index
    empty = (text.str.strip() == "").to_numpy()
    if empty.any():
        first = int(np.flatnonzero(empty)[0])
        raise MetadataError(f"{source}, line {_row(first)}: empty 'Finding Labels' ({int(empty.sum())} rows)")
    parts = text.str.split("|").explode().str.strip()
    unknown = ~parts.isin(LABELS)
    if unknown.any():
        row = int(parts.index[unknown.to_numpy()][0])
        raise MetadataError(
            f"{source}, line {_row(row)}: unknown label {parts[unknown].iloc[0]!r} in "
            f"{text.iloc[row]!r}; known labels: {', '.join(LABELS)}"
        )
    # Scatter (row, label) pairs into a matrix: pandas' crosstab does the same through a Python-level
    # groupby, 2 s for the 112,120 NIH rows.
    matrix = np.zeros((len(text), len(LABELS)), dtype=np.uint8)
    matrix[parts.index.to_numpy(), pd.Index(LABELS).get_indexer(parts.to_numpy())] = 1
    onehot = pd.DataFrame(matrix, columns=list(LABELS))
    contradictory = (onehot[NO_FINDING] == 1) & (onehot.drop(columns=NO_FINDING).sum(axis=1) > 0)
    if contradictory.any():
        row = int(np.flatnonzero(contradictory.to_numpy())[0])
        raise MetadataError(f"{source}, line {_row(row)}: 'No Finding' together with findings in {text.iloc[row]!r}")
    onehot.index = finding_labels.index
    return onehot


@functools.lru_cache(maxsize=1)
def packaged_metadata() -> NIHMetadata:
    """The packaged NIH metadata, read once per process and shared: treat it as read-only (copy before changing it)."""
    return read_metadata(quiet=True)


def read_metadata(path: str | Path | None = None, bad_values: BadValuePolicy = "missing", quiet: bool = False) -> NIHMetadata:
    """Read and validate a NIH metadata CSV (``None``: the packaged 2020 revision)."""
    path = Path(path) if path is not None else packaged_file("Data_Entry_2017_v2020.csv.gz")
    source = str(path)
    try:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
    except pd.errors.EmptyDataError as err:
        raise MetadataError(f"metadata CSV {source} is empty (no header, no rows); {_REPLACE_HINT}") from err
    except (OSError, EOFError, pd.errors.ParserError, UnicodeDecodeError) as err:  # EOFError: a truncated .gz
        raise MetadataError(f"cannot read metadata CSV {source}: {err}") from err
    raw = raw.rename(columns={c: COLUMN_ALIASES.get(c.strip(), c.strip()) for c in raw.columns})
    missing = [c for c in REQUIRED_COLUMNS if c not in raw.columns]
    if missing:
        raise MetadataError(
            f"{source}: missing column(s) {missing}; found {list(raw.columns)}. "
            "Expected the NIH header 'Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,"
            "Patient Gender,View Position,...'"
        )
    if raw.empty:
        raise MetadataError(f"metadata CSV {source} has a header but no data rows; {_REPLACE_HINT}")
    report = MetadataReport(source=source, rows=len(raw))

    images = raw["Image Index"].fillna("").astype(str).str.strip()
    if (images == "").any():
        raise MetadataError(f"{source}, line {_row(np.flatnonzero(images == '')[0])}: empty 'Image Index'")
    duplicated = images.duplicated(keep=False)
    if duplicated.any():
        name = images[duplicated].iloc[0]
        lines = [_row(i) for i in np.flatnonzero(images == name)]
        raise MetadataError(f"{source}: image {name!r} appears on lines {lines} ({int(images.duplicated().sum())} duplicates)")

    patients = pd.to_numeric(raw["Patient ID"], errors="coerce")
    bad_patient = patients.isna() | (patients != patients.round())
    if bad_patient.any():
        first = int(np.flatnonzero(bad_patient.to_numpy())[0])
        raise MetadataError(f"{source}, line {_row(first)}: Patient ID {raw['Patient ID'].iloc[first]!r} is not an integer")

    follow_up = pd.to_numeric(raw.get("Follow-up #", pd.Series(0, index=raw.index)), errors="coerce").fillna(-1)
    sex, report.sex_unknown = _parse_category(raw["Patient Gender"], parse_sex, bad_values, report, "sex")
    view, report.view_unknown = _parse_category(raw["View Position"], parse_view, bad_values, report, "view position")
    frame = pd.DataFrame(
        {
            "image": images.to_numpy(),
            "finding_labels": raw["Finding Labels"].fillna("").astype(str).to_numpy(),
            "follow_up": follow_up.astype(np.int64).to_numpy(),
            "patient_id": patients.astype(np.int64).to_numpy(),
            "age": _parse_ages(raw["Patient Age"], bad_values, report),
            "sex": sex,
            "view": view,
        }
    )
    frame = pd.concat([frame, _one_hot_labels(raw["Finding Labels"], source)], axis=1)
    if report.changed and not quiet:
        warnings.warn(f"{source}: " + "; ".join(report.lines()) + f" (first: {report.examples[0]})", stacklevel=2)
    return NIHMetadata(frame=frame, report=report)
