"""``cxr-lightning export``: ONNX and TorchScript give PyTorch's probabilities; the sidecar says how to prepare inputs."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import onnx  # noqa: E402,F401 - the dev extra installs the exporters: a missing one is a failure, not a skip
import onnxruntime as ort  # noqa: E402
import pandas as pd
import pytest
import torch

from cxr_lightning.checkpoint import load_classifier
from cxr_lightning.data import ChestXrayDataModule
from cxr_lightning.data.transforms import normalization_stats
from cxr_lightning.inference.export import export_model, sidecar_path
from cxr_lightning.inference.export_command import main as export_main
from cxr_lightning.models import BaselineCNN, BEiTClassifier, ResNet50Classifier
from cxr_lightning.models.beit import tiny_beit_config
from tests.helpers.checkpoints import train_one_step_and_save

#: model -> (image size, normalisation, metadata encoding, constructor)
MODELS = {
    "cnn": (32, "imagenet", "onehot", lambda **kw: BaselineCNN(channels=(8, 8, 16, 16, 16), **kw)),
    "resnet": (64, "imagenet", "code", lambda **kw: ResNet50Classifier(weights=None, **kw)),
    "beit": (32, "beit", "cnn", lambda **kw: BEiTClassifier(pretrained=None, config=tiny_beit_config(image_size=32), metadata_hidden=(8,), **kw)),
}


@pytest.fixture(scope="module")
def checkpoints(synthetic_root, tmp_path_factory) -> dict[str, Path]:
    """One checkpoint per model, saved by a Trainer after one step on the synthetic data."""
    tmp = tmp_path_factory.mktemp("export")
    paths = {}
    for name, (size, normalization, encoding, build) in MODELS.items():
        dm = ChestXrayDataModule(data_root=synthetic_root, split="official", val_fraction=0.25, image_size=size, batch_size=4,
                                 num_workers=0, normalization=normalization, metadata_encoding=encoding)  # fmt: skip
        model = build(metadata_dim=dm.metadata_dim, label_names=dm.label_names)
        model.thresholds.copy_(torch.linspace(0.1, 0.9, len(dm.label_names)))
        paths[name] = train_one_step_and_save(model, dm, tmp / f"{name}.ckpt")
    return paths


@functools.cache
def loaded(checkpoint: Path):
    return load_classifier(checkpoint)


def pytorch_probs(checkpoint: Path, images: torch.Tensor, metadata: torch.Tensor) -> np.ndarray:
    model, _ = loaded(checkpoint)
    with torch.no_grad():
        return torch.sigmoid(model(images, metadata)).numpy()


def random_inputs(checkpoint: Path, batch: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    _, spec = loaded(checkpoint)
    g = torch.Generator().manual_seed(1)
    images = torch.randn(batch, spec.image_channels, spec.image_size, spec.image_size, generator=g)
    frame = pd.DataFrame({"age": [30.0, float("nan"), 80.0][:batch], "sex": ["M", "F", ""][:batch], "view": ["PA", "", "AP"][:batch]})
    return images, torch.from_numpy(spec.metadata_encoder.encode(frame))


@pytest.mark.parametrize("name", list(MODELS))
def test_onnx_matches_pytorch(checkpoints, tmp_path, name):
    out = tmp_path / f"{name}.onnx"
    result = export_model(checkpoints[name], out, format="onnx")
    assert result.opset == 17 and result.max_abs_diff is not None and result.max_abs_diff < 1e-4
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["image", "metadata"]
    assert session.get_inputs()[0].shape[0] == "batch"  # dynamic batch axis
    images, metadata = random_inputs(checkpoints[name])  # batch 3, export traced batch 2
    probs = session.run(["probabilities"], {"image": images.numpy(), "metadata": metadata.numpy()})[0]
    reference = pytorch_probs(checkpoints[name], images, metadata)
    assert probs.shape == reference.shape == (3, 15)
    assert np.abs(probs - reference).max() < 1e-4
    one = session.run(["probabilities"], {"image": images[:1].numpy(), "metadata": metadata[:1].numpy()})[0]
    assert np.abs(one - reference[:1]).max() < 1e-4


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
@pytest.mark.parametrize("name", list(MODELS))
def test_torchscript_matches_pytorch(checkpoints, tmp_path, name):
    out = tmp_path / f"{name}.pt"
    result = export_model(checkpoints[name], out, format="torchscript")
    assert result.max_abs_diff is not None and result.max_abs_diff < 1e-4
    scripted = torch.jit.load(str(out))
    images, metadata = random_inputs(checkpoints[name])
    with torch.no_grad():
        probs = scripted(images, metadata).numpy()
    assert np.abs(probs - pytorch_probs(checkpoints[name], images, metadata)).max() < 1e-4


def test_sidecar_has_what_a_deployer_needs(checkpoints, tmp_path):
    out = tmp_path / "beit.onnx"
    export_model(checkpoints["beit"], out)
    sidecar = json.loads(sidecar_path(out).read_text())
    model, spec = loaded(checkpoints["beit"])
    assert sidecar["label_names"] == spec.label_names
    np.testing.assert_allclose(sidecar["thresholds"], model.thresholds.numpy(), rtol=0, atol=1e-7)
    assert sidecar["image_size"] == 32 and sidecar["image_channels"] == 3
    mean, std = normalization_stats("beit", 3)
    assert sidecar["normalization"] == {"name": "beit", "mean": mean, "std": std}
    encoder = sidecar["metadata_encoder"]
    assert encoder["scheme"] == "cnn" and encoder["age_mean"] == spec.metadata_encoder.age_mean
    assert encoder["feature_names"] == list(spec.metadata_encoder.feature_names) == list(encoder["features"])
    for example in encoder["example"]:
        row = example["input"]
        frame = pd.DataFrame({"age": [np.nan if row["age"] is None else row["age"]], "sex": [row["sex"]], "view": [row["view"]]})
        np.testing.assert_allclose(example["encoded"], spec.metadata_encoder.encode(frame)[0], rtol=0, atol=1e-7)
    assert sidecar["inputs"]["image"]["shape"] == ["batch", 3, 32, 32] and sidecar["inputs"]["metadata"]["shape"] == ["batch", 3]
    assert sidecar["outputs"]["probabilities"]["shape"] == ["batch", 15]
    assert sidecar["opset"] == 17 and sidecar["verification"]["max_abs_diff"] < 1e-4


def test_onnx_opset_18_with_the_torch_export_exporter(checkpoints, tmp_path):
    out = tmp_path / "cnn18.onnx"
    result = export_model(checkpoints["cnn"], out, opset=18)
    assert result.opset == 18 and result.max_abs_diff < 1e-4
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    images, metadata = random_inputs(checkpoints["cnn"])
    probs = session.run(["probabilities"], {"image": images.numpy(), "metadata": metadata.numpy()})[0]
    assert np.abs(probs - pytorch_probs(checkpoints["cnn"], images, metadata)).max() < 1e-4


def test_export_command_with_another_image_size(checkpoints, tmp_path, capsys):
    out = tmp_path / "deploy" / "cnn.onnx"
    assert export_main(["--checkpoint", str(checkpoints["cnn"]), "--format", "onnx", "--out", str(out), "--image-size", "48"]) == 0
    assert "max |exported - PyTorch|" in capsys.readouterr().out
    sidecar = json.loads(sidecar_path(out).read_text())
    assert sidecar["image_size"] == 48 and sidecar["training_image_size"] == 32
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape[1:] == [3, 48, 48]


def test_unknown_format_is_refused(checkpoints, tmp_path):
    with pytest.raises(ValueError, match="onnx or torchscript"):
        export_model(checkpoints["cnn"], tmp_path / "m.bin", format="tflite")
