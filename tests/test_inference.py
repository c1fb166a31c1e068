"""DICOM decoding and ``predict-files``: pixels as displayed, metadata from CSV/DICOM/defaults, skipped files."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid  # noqa: E402

from cxr_lightning.checkpoint import load_classifier  # noqa: E402
from cxr_lightning.data import ChestXrayDataModule  # noqa: E402
from cxr_lightning.data.dicom import is_dicom_file, load_dicom_grey  # noqa: E402
from cxr_lightning.data.fields import parse_age as parse_dicom_age  # noqa: E402
from cxr_lightning.data.images import ImageDecodeError, load_grey  # noqa: E402
from cxr_lightning.inference.inputs import resolve_inputs  # noqa: E402
from cxr_lightning.inference.metadata_table import read_metadata_table  # noqa: E402
from cxr_lightning.inference.predict_command import main as predict_main  # noqa: E402
from cxr_lightning.inference.predictor import Predictor  # noqa: E402
from cxr_lightning.models import BaselineCNN  # noqa: E402
from tests.helpers.checkpoints import train_one_step_and_save


def write_dicom(path: Path, pixels: np.ndarray, photometric: str = "MONOCHROME2", bits_stored: int = 12, raw: bytes | None = None,
                **attributes) -> Path:  # fmt: skip
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.set_pixel_data(pixels, photometric, bits_stored)
    if raw is not None:
        ds.PixelData = raw
    for name, value in attributes.items():
        setattr(ds, name, value)
    ds.save_as(path, enforce_file_format=True)
    return path


STORED_12 = np.array([[0, 512, 1012], [1511, 2000, 4095]], dtype=np.uint16)


def as_float32(values: np.ndarray) -> np.ndarray:
    return np.asarray(values, dtype=np.float64).astype(np.float32)[None]


# ----------------------------------------------------------------------------------------------
# DICOM pixels
# ----------------------------------------------------------------------------------------------


def test_twelve_bits_in_sixteen_without_window_use_the_stored_range(tmp_path):
    # junk in the 4 unused high bits must be ignored (BitsStored 12)
    path = write_dicom(tmp_path / "a.dcm", STORED_12, raw=(STORED_12 | 0xF000).astype("<u2").tobytes())
    grey, tags = load_dicom_grey(path)
    expected = (STORED_12.astype(np.float64) - 0) / 4095
    assert grey.dtype == torch.float32 and grey.shape == (1, 2, 3)
    assert np.array_equal(grey.numpy(), as_float32(expected))
    assert tags["bits_stored"] == 12 and not tags["windowed"] and tags["original_size"] == (3, 2)


def test_without_window_the_bit_depth_not_the_image_range_is_shown(tmp_path):
    # two images of one scanner map alike, whatever their own minimum and maximum
    stored = np.array([[100, 300], [500, 900]], dtype=np.uint16)
    grey, _ = load_dicom_grey(write_dicom(tmp_path / "a.dcm", stored))
    assert np.array_equal(grey.numpy(), as_float32(stored / 4095.0))


def test_monochrome1_is_inverted(tmp_path):
    grey, tags = load_dicom_grey(write_dicom(tmp_path / "m1.dcm", STORED_12, photometric="MONOCHROME1"))
    assert tags["photometric"] == "MONOCHROME1"
    assert np.array_equal(grey.numpy(), as_float32(1.0 - STORED_12 / 4095.0))


def test_rescale_and_linear_window(tmp_path):
    # Modality LUT: x = 2 * stored - 1024; VOI: LINEAR window centre 1000, width 2001 (PS3.3 C.11.2.1.2.1):
    # displayed = clip((x - (c - 0.5)) / (w - 1) + 0.5, 0, 1) of the display range.
    path = write_dicom(tmp_path / "w.dcm", STORED_12, RescaleSlope=2, RescaleIntercept=-1024, WindowCenter=1000, WindowWidth=2001)
    grey, tags = load_dicom_grey(path)
    x = 2.0 * STORED_12 - 1024.0
    expected = np.clip((x - 999.5) / 2000.0 + 0.5, 0.0, 1.0)
    assert tags["windowed"]
    assert expected[0, 0] == 0.0 and expected[1, 2] == 1.0  # below / above the window
    np.testing.assert_allclose(grey.numpy(), as_float32(expected), rtol=0, atol=1e-7)
    assert grey[0, 0, 1].item() == pytest.approx(0.5 / 2000, abs=1e-9)  # x = 0


def test_window_on_monochrome1_then_inverted(tmp_path):
    path = write_dicom(tmp_path / "w1.dcm", STORED_12, photometric="MONOCHROME1", WindowCenter=2048, WindowWidth=1025)
    grey, _ = load_dicom_grey(path)
    expected = 1.0 - np.clip((STORED_12 - 2047.5) / 1024.0 + 0.5, 0.0, 1.0)
    np.testing.assert_allclose(grey.numpy(), as_float32(expected), rtol=0, atol=1e-7)
    assert grey[0, 0, 0].item() == 1.0 and grey[0, 1, 2].item() == 0.0


def test_eight_bit_and_sixteen_bit(tmp_path):
    eight = np.array([[0, 128], [200, 255]], dtype=np.uint8)
    grey, _ = load_dicom_grey(write_dicom(tmp_path / "e.dcm", eight, bits_stored=8))
    assert np.array_equal(grey.numpy(), as_float32(eight / 255.0))
    sixteen = np.array([[0, 40000], [65535, 1]], dtype=np.uint16)
    grey, _ = load_dicom_grey(write_dicom(tmp_path / "s.dcm", sixteen, bits_stored=16, WindowCenter=32768, WindowWidth=65536))
    expected = np.clip((sixteen - 32767.5) / 65535.0 + 0.5, 0.0, 1.0)
    np.testing.assert_allclose(grey.numpy(), as_float32(expected), rtol=0, atol=1e-7)


def test_tags_and_ages():
    assert parse_dicom_age("058Y") == 58.0
    assert parse_dicom_age("006M") == 0.5
    assert parse_dicom_age("014D") == pytest.approx(14 / 365.25)
    assert parse_dicom_age("52") == 52.0 and parse_dicom_age(47.5) == 47.5
    for bad in ("", "abc", None, "130Y", "-4"):
        assert math.isnan(parse_dicom_age(bad))


def test_dicom_tags_are_read(tmp_path):
    path = write_dicom(tmp_path / "t.dcm", STORED_12, PatientAge="058Y", PatientSex="F", ViewPosition="AP")
    _, tags = load_dicom_grey(path)
    assert tags["age"] == 58.0 and tags["sex"] == "F" and tags["view"] == "AP"
    lateral = write_dicom(tmp_path / "l.dcm", STORED_12, PatientSex="O", ViewPosition="LL")
    _, tags = load_dicom_grey(lateral)
    assert math.isnan(tags["age"]) and tags["sex"] == "" and tags["view"] == ""


def test_bad_dicom_errors_name_the_file(tmp_path):
    bad = tmp_path / "broken.dcm"
    bad.write_bytes(b"\0" * 128 + b"DICM" + b"garbage")
    with pytest.raises(ImageDecodeError, match="broken.dcm"):
        load_dicom_grey(bad)
    empty = tmp_path / "empty.dcm"
    empty.write_bytes(b"")
    with pytest.raises(ImageDecodeError, match="empty.dcm"):
        load_dicom_grey(empty)
    with pytest.raises(ImageDecodeError, match="missing.dcm"):
        load_dicom_grey(tmp_path / "missing.dcm")


def test_dicom_is_recognised_by_magic_without_suffix(tmp_path):
    path = write_dicom(tmp_path / "scan", STORED_12)
    png = tmp_path / "x.png"
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(png)
    assert is_dicom_file(path) and not is_dicom_file(png)


# ----------------------------------------------------------------------------------------------
# predict-files
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cnn_checkpoint(synthetic_root, tmp_path_factory) -> Path:
    """A 1-step BaselineCNN checkpoint with tuned-looking thresholds: label 0 always on, label 1 always off."""
    tmp = tmp_path_factory.mktemp("predict")
    dm = ChestXrayDataModule(data_root=synthetic_root, split="official", val_fraction=0.25, image_size=32, batch_size=4, num_workers=0)
    model = BaselineCNN(channels=(8, 8, 16, 16, 16), metadata_dim=dm.metadata_dim, label_names=dm.label_names)
    model.thresholds.fill_(0.5)
    model.thresholds[0], model.thresholds[1] = 0.0, 1.0
    return train_one_step_and_save(model, dm, tmp / "cnn.ckpt")


def reference_probs(checkpoint: Path, grey: torch.Tensor, age: float, sex: str, view: str) -> np.ndarray:
    """What the checkpoint predicts, computed without the Predictor."""
    model, spec = load_classifier(checkpoint)
    image = spec.transform()(grey)[None]
    metadata = torch.from_numpy(spec.metadata_encoder.encode(pd.DataFrame({"age": [age], "sex": [sex], "view": [view]})))
    with torch.no_grad():
        return torch.sigmoid(model(image, metadata))[0].numpy()


def test_predict_files_sources_skips_and_thresholds(cnn_checkpoint, synthetic_root, tmp_path):
    images = sorted((synthetic_root / "images").glob("*.png"))[:5]
    folder = tmp_path / "scans"
    folder.mkdir()
    for p in images:
        (folder / p.name).write_bytes(p.read_bytes())
    (folder / "corrupt.png").write_bytes(b"not a png")
    dicom_pixels = (np.asarray(Image.open(images[0]), dtype=np.uint16) * 16).astype(np.uint16)
    write_dicom(folder / "from_dicom.dcm", dicom_pixels, PatientAge="071Y", PatientSex="M", ViewPosition="AP")
    # NIH header names; one row for the first two PNGs, one for the DICOM with an unknown age
    nih = pd.DataFrame({"Image Index": [images[0].name, images[1].name, "from_dicom.dcm"], "Finding Labels": ["No Finding"] * 3,
                        "Patient Age": ["61", "040Y", ""], "Patient Gender": ["F", "M", ""], "View Position": ["PA", "AP", ""]})  # fmt: skip
    nih.to_csv(tmp_path / "meta.csv", index=False)

    predictor = Predictor(cnn_checkpoint, batch_size=3)
    out = tmp_path / "out" / "preds.csv"
    frame = predictor.predict_files([folder, tmp_path / "nowhere.png"], metadata_csv=tmp_path / "meta.csv", out_csv=out, progress=False)

    assert len(frame) == 6  # 5 PNGs + 1 DICOM; the corrupt and the missing file are skipped
    labels = predictor.label_names
    assert list(frame.columns) == ["image", "path", "metadata_source", "age", "sex", "view"] + [f"prob_{n}" for n in labels] + [f"pred_{n}" for n in labels]
    skipped = {Path(s["path"]).name: s["reason"] for s in frame.attrs["skipped"]}
    assert set(skipped) == {"corrupt.png", "nowhere.png"}
    assert "cannot decode" in skipped["corrupt.png"] and "not found" in skipped["nowhere.png"]
    written = pd.read_csv(out)
    assert len(written) == 6 and set(pd.read_csv(out.with_name("preds.skipped.csv"))["path"].map(lambda p: Path(p).name)) == set(skipped)

    rows = frame.set_index("image")
    assert rows.loc[images[0].name, "metadata_source"] == "csv" and rows.loc[images[1].name, "age"] == 40.0
    assert rows.loc[images[2].name, "metadata_source"] == "default"
    # the DICOM's CSV row has no value at all: its tags are used
    assert rows.loc["from_dicom.dcm", "metadata_source"] == "dicom" and rows.loc["from_dicom.dcm", "age"] == 71.0

    probs = rows[[f"prob_{n}" for n in labels]]
    expected = {
        images[0].name: reference_probs(cnn_checkpoint, load_grey(images[0]), 61, "F", "PA"),
        images[1].name: reference_probs(cnn_checkpoint, load_grey(images[1]), 40, "M", "AP"),
        images[2].name: reference_probs(cnn_checkpoint, load_grey(images[2]), math.nan, "", ""),  # training mean age
        "from_dicom.dcm": reference_probs(cnn_checkpoint, load_dicom_grey(folder / "from_dicom.dcm")[0], 71, "M", "AP"),
    }
    for name, reference in expected.items():
        np.testing.assert_allclose(probs.loc[name].to_numpy(dtype=np.float64), reference, rtol=0, atol=1e-6)
    preds = rows[[f"pred_{n}" for n in labels]].to_numpy()
    thresholds = load_classifier(cnn_checkpoint)[0].thresholds.numpy()
    assert np.array_equal(preds, (probs.to_numpy() >= thresholds).astype(int))
    assert preds[:, 0].all() and not preds[:, 1].any()  # thresholds 0 and 1


def test_inputs_globs_and_list_files(synthetic_root, tmp_path):
    images = synthetic_root / "images"
    names = sorted(p.name for p in images.glob("*.png"))
    listing = tmp_path / "list.txt"
    listing.write_text(f"# a comment\n{images / names[0]}\n\n{images / names[1]}\n")
    paths, problems = resolve_inputs([listing, str(images / f"{names[1][:8]}*.png"), str(tmp_path / "none*.png")])
    assert paths[0].name == names[0] and paths[1].name == names[1]
    assert len(paths) == len(set(paths)) and all(p.name.startswith((names[0][:8], names[1][:8])) for p in paths)
    assert problems == [{"path": str(tmp_path / "none*.png"), "reason": "no image file matches this pattern"}]


def test_metadata_table_accepts_our_columns_and_dicom_ages(tmp_path):
    (tmp_path / "m.csv").write_text("image,age,sex,view\na.png,058Y,female,pa\nb.png,,X,LL\n")
    table = read_metadata_table(tmp_path / "m.csv")
    assert table.loc[0, ["age", "sex", "view"]].tolist() == [58.0, "F", "PA"]
    assert math.isnan(table.loc[1, "age"]) and table.loc[1, "sex"] == "" and table.loc[1, "view"] == ""


def test_a_frame_is_cleaned_like_a_csv(tmp_path):
    frame = pd.DataFrame({"Image Index": ["a.png", "b.png"], "Patient Age": [55, "058Y"], "Patient Gender": ["f", "M"], "View Position": ["pa", None]})
    (tmp_path / "m.csv").write_text(frame.to_csv(index=False))
    from_frame, from_csv = read_metadata_table(frame), read_metadata_table(tmp_path / "m.csv")
    pd.testing.assert_frame_equal(from_frame, from_csv)
    assert from_frame.loc[0, ["age", "sex", "view"]].tolist() == [55.0, "F", "PA"] and from_frame.loc[1, "view"] == ""


def test_metadata_rows_match_by_path_and_same_named_files_are_not_confused(cnn_checkpoint, synthetic_root, tmp_path, capsys):
    source = sorted((synthetic_root / "images").glob("*.png"))[0]
    for folder in ("a", "b", "c"):
        (tmp_path / "scans" / folder).mkdir(parents=True)
        (tmp_path / "scans" / folder / "scan.png").write_bytes(source.read_bytes())
    # a/ and b/ by path; c/scan.png matches no path and its name is shared by two rows: ambiguous
    meta = pd.DataFrame({"image": ["a/scan.png", "b/scan.png"], "age": [20, 80], "sex": ["M", "F"], "view": ["PA", "AP"]})
    frame = Predictor(cnn_checkpoint).predict_files(tmp_path / "scans", metadata_csv=meta, progress=False)
    rows = frame.set_index(frame["path"].map(lambda p: Path(p).parent.name))
    assert rows.loc["a", ["age", "sex", "view"]].tolist() == [20.0, "M", "PA"]
    assert rows.loc["b", ["age", "sex", "view"]].tolist() == [80.0, "F", "AP"]
    assert rows.loc["c", "metadata_source"] == "default"
    assert "1 image(s) match several rows" in capsys.readouterr().err


def test_one_file_reached_twice_is_predicted_once(synthetic_root, tmp_path):
    images = synthetic_root / "images"
    name = sorted(p.name for p in images.glob("*.png"))[0]
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "list.txt").write_text(f"{Path('..') / 'link' / name}\n")
    (tmp_path / "link").symlink_to(images)
    paths, problems = resolve_inputs([tmp_path / "lists" / "list.txt", images / name, str(tmp_path / "link" / name)])
    assert problems == [] and len(paths) == 1


def test_predict_files_command(cnn_checkpoint, synthetic_root, tmp_path, capsys):
    out = tmp_path / "p.csv"
    code = predict_main(["--checkpoint", str(cnn_checkpoint), "--images", str(synthetic_root / "images"),
                         "--metadata", str(synthetic_root / "Data_Entry_2017_v2020.csv"), "--out", str(out), "--no-progress"])  # fmt: skip
    assert code == 0
    frame = pd.read_csv(out)
    assert len(frame) == 160 and (frame["metadata_source"] == "csv").all()
    assert frame.filter(like="prob_").to_numpy().min() > 0 and frame.filter(like="prob_").to_numpy().max() < 1
    assert "wrote 160 predictions" in capsys.readouterr().err


def test_predict_is_the_split_command_and_predict_files_the_file_command(capsys):
    from cxr_lightning.cli import main as cli

    with pytest.raises(SystemExit) as exit_info:
        cli(["predict", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--ckpt_path" in out and "--trainer" in out and "--images" not in out  # LightningCLI's, on the configured data
    assert cli(["predict", "--checkpoint", "model.ckpt", "--images", "scans/"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cxr-lightning predict-files --ckpt_path CKPT --images" in err


def test_predict_array_and_predict_file_from_python(cnn_checkpoint, synthetic_root):
    image_path = sorted((synthetic_root / "images").glob("*.png"))[0]
    pixels = np.asarray(Image.open(image_path).convert("L"))
    predictor = Predictor.from_checkpoint(cnn_checkpoint)
    result = predictor.predict_array(pixels, age=63, sex="F", view="PA")
    grey = torch.from_numpy(pixels.astype(np.float32) / 255.0)[None]
    expected = reference_probs(cnn_checkpoint, grey, 63, "F", "PA")
    assert list(result.index) == predictor.model.label_names == predictor.label_names
    np.testing.assert_allclose(result["probability"].to_numpy(), expected, rtol=0, atol=1e-6)
    assert result["decision"].iloc[0] == 1 and result["decision"].iloc[1] == 0  # thresholds 0.0 and 1.0
    assert (result["decision"] == (result["probability"] >= result["threshold"])).all()
    # the same image as a file, and as floats in [0, 1], give the same probabilities
    np.testing.assert_allclose(predictor.predict_file(image_path, age=63, sex="F", view="PA")["probability"], expected, atol=1e-6)
    np.testing.assert_allclose(predictor.predict_array(pixels / 255.0, age=63, sex="F", view="PA")["probability"], expected, atol=1e-6)
    # unknown metadata uses the documented defaults, not an error
    assert predictor.predict_array(pixels)["probability"].between(0, 1).all()
    with pytest.raises(ValueError, match=r"shape \(2, 3, 4\)"):
        predictor.predict_array(np.zeros((2, 3, 4), np.uint8))
    with pytest.raises(ValueError, match="finite values in \\[0, 1\\]"):
        predictor.predict_array(pixels.astype(np.float32))
