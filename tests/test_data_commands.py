"""`cxr-lightning data ...` run in-process: stats (Table 4), split files and synthetic data."""

from __future__ import annotations

import pandas as pd

from cxr_lightning.cli import main
from cxr_lightning.data.labels import LABELS


def test_stats_prints_table_4_as_markdown(capsys):
    assert main(["data", "stats", "--split", "paper"]) == 0
    out = capsys.readouterr().out
    assert "| Hernia | 0.17 | 0.12 | 0.34 |" in out
    assert "| No Finding | 58.48 | 57.74 | 38.53 |" in out
    assert "| images | 73,633 | 12,891 | 25,596 |" in out and "| patients | 23,806 | 4,202 | 2,797 |" in out


def test_stats_csv_and_findings_only(tmp_path):
    out = tmp_path / "table4.csv"
    assert main(["data", "stats", "--split", "paper", "--format", "csv", "--findings-only", "--out", str(out)]) == 0
    table = pd.read_csv(out, index_col="label", dtype={"Training": str})
    assert "No Finding" not in table.index and len(table) == 14 + 3
    assert table.loc["Pneumothorax", "Testing"] == 10.41 and table.loc["images", "Training"] == "73633"


def test_split_writes_the_three_lists(tmp_path):
    assert main(["data", "split", "--split", "paper", "--out", str(tmp_path)]) == 0
    sizes = {part: len((tmp_path / f"{part}.txt").read_text().split()) for part in ("train", "val", "test")}
    assert sizes == {"train": 73_633, "val": 12_891, "test": 25_596}
    assert (tmp_path / "val.txt").read_text().splitlines()[0].endswith(".png")


def test_synth_then_stats_on_the_synthetic_root(tmp_path, capsys):
    root = tmp_path / "synthetic"
    assert main(["data", "synth", "--out", str(root), "--num-images", "120", "--image-size", "32", "--seed", "1"]) == 0
    assert len(list((root / "images").glob("*.png"))) == 120
    summary = capsys.readouterr().out
    assert f"{root}: 120 synthetic 32x32 images" in summary and "SyntheticSummary(" not in summary
    written = pd.read_csv(root / "Data_Entry_2017_v2020.csv")["Finding Labels"].str.split("|").explode().value_counts()
    printed = {parts[0]: int(parts[1].replace(",", "")) for parts in (line.rsplit(maxsplit=2) for line in summary.splitlines()[2:-1])}
    assert list(printed) == list(LABELS)
    assert printed == {label: int(written.get(label, 0)) for label in LABELS}
    assert main(["data", "stats", "--split", "patient", "--fractions", "0.6", "0.2", "0.2", "--seed", "0", "--root", str(root)]) == 0
    out = capsys.readouterr().out
    counts = [int(c.replace(",", "")) for c in out.split("| images |")[1].split("\n")[0].strip(" |").split("|")]
    assert sum(counts) == 120


def test_the_printed_training_command_trains_on_the_synthetic_data_in_its_own_folder(tmp_path, capsys, monkeypatch):
    import shlex

    monkeypatch.chdir(tmp_path)
    assert main(["data", "synth", "--out", "synthetic", "--num-images", "120", "--image-size", "32", "--seed", "2"]) == 0
    command = capsys.readouterr().out.splitlines()[-1].removeprefix("train with: ")
    args = shlex.split(command)
    assert args[:2] == ["cxr-lightning", "fit"] and "--trainer.default_root_dir=runs/synthetic" in args and "--data.images.size=32" in args
    main(args[1:] + ["--trainer.max_epochs=1", "--data.num_workers=0", "--trainer.logger=false"])
    assert (tmp_path / "runs" / "synthetic" / "metrics.json").is_file() and not (tmp_path / "runs" / "demo").exists()
