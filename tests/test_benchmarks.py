"""The benchmark scripts read the right configs and do the right arithmetic (their timings are never asserted)."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import pipeline_throughput  # noqa: E402
import reproduction_time  # noqa: E402


def test_row_specs_follow_the_shipped_configs():
    stem = reproduction_time.row_spec("resnet_log_conv", None)
    assert (stem["size"], stem["channels"], stem["batch"], stem["epochs"]) == (1024, 1, 32, 20)
    assert stem["init"] == {"high_res_stem": True}
    frozen = reproduction_time.row_spec("beit_model1", None)
    assert frozen["init"]["freeze_backbone"] is True
    assert (frozen["batch"], frozen["epochs"], frozen["encoding"]) == (60, 9, "code")
    assert reproduction_time.row_spec("cnn", 4)["batch"] == reproduction_time.row_spec("cnn", 4)["eval_batch"] == 4
    with pytest.raises(SystemExit, match="no_such_row"):
        reproduction_time.row_spec("no_such_row", None)


def test_a_row_costs_every_epoch_plus_the_final_validate_and_test():
    sizes = {"train": 1000, "val": 100, "test": 200}
    rates = {"train": 10.0, "eval": 50.0}
    # 2 epochs x (100 s of training + 2 s of validation) + 2 s validate and 4 s test of the best checkpoint
    assert reproduction_time.row_hours({}, rates, sizes, 2) == pytest.approx((2 * 102 + 6) / 3600)


def test_the_projection_uses_the_paper_split():
    assert reproduction_time.split_sizes() == {"train": 73_633, "val": 12_891, "test": 25_596}


def test_rows_are_built_as_they_train():
    stem = reproduction_time.build_model(reproduction_time.row_spec("resnet_log_conv", 2))
    logits = stem(torch.zeros(1, 1, 1024, 1024), torch.zeros(1, stem.hparams.metadata_dim))
    assert logits.shape == (1, 15)
    frozen = reproduction_time.build_model(reproduction_time.row_spec("beit_model1", 2))
    trainable = sum(p.numel() for p in frozen.parameters() if p.requires_grad)
    assert 0 < trainable < 100_000 < sum(p.numel() for p in frozen.parameters())


def _args(**overrides) -> argparse.Namespace:
    base = dict(device="cpu", precision="32", channels_last=False, compile=False, warmup=0, steps=1)
    return argparse.Namespace(**(base | overrides))


@pytest.mark.slow
def test_the_projection_table_adds_up():
    lines = reproduction_time.project(_args(rows=["cnn"], all=False, epochs=None, batch_size=2))
    row = next(line for line in lines if line.startswith("| cnn |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    train_rate, eval_rate, hours = float(cells[5]), float(cells[6]), float(cells[7])
    sizes = reproduction_time.split_sizes()
    assert hours == pytest.approx(reproduction_time.row_hours({}, {"train": train_rate, "eval": eval_rate}, sizes, 20), rel=0.02)
    total = float(re.search(r"epochs as configured: ([\d.]+) h", "\n".join(lines)).group(1))
    assert total == pytest.approx(hours, abs=0.06)


@pytest.mark.slow
def test_the_pipeline_benchmark_trains_through_the_cache(tmp_path: Path):
    args = _args(image_size=32, batch_size=8, workers=0, steps=2, warmup=1)
    root = pipeline_throughput.cached_dataset(tmp_path / "nih", 60, 32)
    assert (root / "images").is_dir() and any((root / "cache" / "32").iterdir())
    rates = pipeline_throughput.pipeline_rates("cnn", root, args)
    assert rates["pipeline"] > 0 and rates["on-device"] > 0
    row = pipeline_throughput.table([{"model": "cnn"} | rates], args)[-1]
    assert row.startswith("| cnn |") and f"{rates['pipeline'] / rates['on-device']:.2f}" in row
