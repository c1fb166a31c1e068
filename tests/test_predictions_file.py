"""The predictions file (test_predictions.csv, val_predictions.csv): what the writer writes, the reader reads back."""

from __future__ import annotations

import numpy as np
import torch

from cxr_lightning.data.labels import LABELS
from cxr_lightning.evaluation.predictions_file import read_predictions, write_predictions


def test_written_file_has_the_documented_columns_and_number_format(tmp_path):
    path = tmp_path / "test_predictions.csv"
    probs = torch.tensor([[0.1, 1 / 3], [1.0, 0.0]], dtype=torch.float32)
    write_predictions(path, ["00000001_000.png", "00000002_003.png"], probs, torch.tensor([[1, 0], [0, 1]]), ["Mass", "Hernia"])
    # 9 significant digits: the float32 value itself, not a rounding that could cross a threshold.
    assert path.read_text() == (
        "image,prob_Mass,prob_Hernia,label_Mass,label_Hernia\n"
        "00000001_000.png,0.100000001,0.333333343,1,0\n"
        "00000002_003.png,1,0,0,1\n"
    )


def test_what_the_writer_writes_the_reader_reads_back_exactly(tmp_path):
    generator = torch.Generator().manual_seed(0)
    probs = torch.rand(50, len(LABELS), generator=generator)  # float32, as the model's sigmoid outputs
    probs[0, :3] = torch.tensor([0.0, 1.0, 0.5])
    probs[1, 0] = torch.finfo(torch.float32).tiny  # extreme magnitudes keep their exact float32 value too
    probs[2, 0] = float(np.nextafter(np.float32(1), np.float32(0)))
    targets = (torch.rand(50, len(LABELS), generator=generator) < 0.3).long()
    images = [f"{i // 3:08d}_{i % 3:03d}.png" for i in range(50)]
    path = tmp_path / "val_predictions.csv"
    write_predictions(path, images, probs, targets, LABELS)

    read = read_predictions(path)
    assert read.label_names == LABELS
    assert read.images.tolist() == images
    assert read.patients.tolist() == [f"{i // 3:08d}" for i in range(50)]
    np.testing.assert_array_equal(read.probs.astype(np.float32), probs.numpy())
    np.testing.assert_array_equal(read.targets, targets.numpy())
    # Written from numpy instead of torch: the same bytes.
    again = tmp_path / "from_numpy.csv"
    write_predictions(again, images, probs.numpy(), targets.numpy(), LABELS)
    assert again.read_bytes() == path.read_bytes()


def test_a_write_that_fails_midway_leaves_the_previous_file_whole(tmp_path, monkeypatch):
    import errno

    import pandas as pd
    import pytest

    from cxr_lightning.output_files import OutputFileError

    path = tmp_path / "val_predictions.csv"
    write_predictions(path, ["00000001_000.png"], torch.tensor([[0.25]]), torch.tensor([[1]]), ["Mass"])
    before = path.read_text()

    def full_disk(self, target, *args, **kwargs):
        open(target, "w").write("image,prob_")  # half a file, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device", str(target))

    monkeypatch.setattr(pd.DataFrame, "to_csv", full_disk)
    with pytest.raises(OutputFileError, match="disk full writing"):
        write_predictions(path, ["00000002_000.png"], torch.tensor([[0.75]]), torch.tensor([[0]]), ["Mass"])
    assert path.read_text() == before and [p.name for p in tmp_path.iterdir()] == [path.name]
