"""Shared fixtures: the packaged NIH metadata, the real sample images and a tiny NIH-layout root."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest

from cxr_lightning.data.metadata import NIHMetadata, packaged_file, read_metadata

TESTS = Path(__file__).parent
NIH_SAMPLE = TESTS / "data" / "nih_sample"
NIH_HEADER = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
    "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]"
)


@pytest.fixture(scope="session")
def nih_metadata() -> NIHMetadata:
    """The packaged 2020 metadata (112,120 rows)."""
    return read_metadata()


@pytest.fixture(scope="session")
def nih_lists() -> tuple[Path, Path]:
    return packaged_file("train_val_list.txt.gz"), packaged_file("test_list.txt.gz")


@pytest.fixture
def real_sample_root(tmp_path: Path, nih_metadata: NIHMetadata) -> Path:
    """A data root with the five committed real NIH images and their rows of the real CSV."""
    root = tmp_path / "nih"
    shutil.copytree(NIH_SAMPLE / "images", root / "images", ignore=shutil.ignore_patterns("MD5SUMS"))
    names = sorted(p.name for p in (root / "images").glob("*.png"))
    raw = pd.read_csv(packaged_file("Data_Entry_2017_v2020.csv.gz"), dtype=str)
    raw[raw["Image Index"].isin(names)].to_csv(root / "Data_Entry_2017_v2020.csv", index=False)
    return root


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic dataset in the NIH layout, made once per test session."""
    from cxr_lightning.data.synthetic import generate_synthetic_dataset

    root = tmp_path_factory.mktemp("synthetic") / "nih"
    generate_synthetic_dataset(root, num_images=160, image_size=32, seed=3, progress=False)
    return root
