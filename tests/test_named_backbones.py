"""Backbones by name (torchvision, timm, torchxrayvision): build, train, rebuild offline, explain, export; weights from caches."""

from __future__ import annotations

import functools
import sys
import types
import urllib.error
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torchvision
from safetensors.torch import save_file
from torch import nn

from cxr_lightning.checkpoint import load_classifier
from cxr_lightning.data import ChestXrayDataModule
from cxr_lightning.data.transforms import ImageTransform, normalization_stats
from cxr_lightning.explain.gradcam import find_target_layer, gradcam
from cxr_lightning.inference.export import export_model
from cxr_lightning.models import BackboneClassifier
from cxr_lightning.models.backbones import InputFacts, build_backbone, parse_backbone, weights_trained_on_nih
from cxr_lightning.models.backbones.timm_source import TimmBackbone
from cxr_lightning.models.backbones.torchvision_source import TorchvisionBackbone, fix_old_densenet_keys
from cxr_lightning.models.backbones.xrv_source import XrvBackbone
from cxr_lightning.models.weights import WeightsFileError, WeightsNotFoundError
from tests.helpers.checkpoints import train_one_step_and_save

# The dev extra installs timm; without it its tests skip (and the stand-in tests below still run).
try:
    import timm
except ImportError:
    timm = None
needs_timm = pytest.mark.skipif(timm is None, reason="timm is not installed (pip install -e '.[timm]')")

SIZE = 64  # ConvNeXt and DenseNet shrink 32x: 64 px leaves a 2x2 map for Grad-CAM
#: name -> (backbone, options, where Grad-CAM must hook (a function of the backbone's model), patch size)
BACKBONES = {
    "densenet121": ("torchvision/densenet121", None, lambda m: m.features, None),
    "timm_convnext": ("timm/test_convnext", None, lambda m: m.stages[-1], None),
    "timm_vit": ("timm/test_vit", {"img_size": SIZE}, lambda m: m.blocks[-1].norm1, 16),
    "xrv_densenet": ("xrv/densenet121-res224-all", None, lambda m: m.features, None),
}


def each(*names: str) -> list:
    return [pytest.param(name, marks=needs_timm) if name.startswith("timm") else name for name in names or BACKBONES]


def build(name: str, **kwargs) -> BackboneClassifier:
    backbone, options, _, _ = BACKBONES[name]
    return BackboneClassifier(backbone=backbone, weights=None, backbone_options=options, **kwargs)


@pytest.fixture(scope="module")
def checkpoint(synthetic_root, tmp_path_factory):
    """``checkpoint(name)``: (path, trained model) after one training step, its data prepared as the backbone's facts say."""
    tmp = tmp_path_factory.mktemp("named")

    @functools.cache
    def make(name: str) -> tuple[Path, BackboneClassifier]:
        facts = build(name).input_facts
        dm = ChestXrayDataModule(data_root=synthetic_root, split="official", val_fraction=0.25, image_size=SIZE, batch_size=4,
                                 num_workers=0, image_channels=facts.channels, normalization=facts.normalization)  # fmt: skip
        torch.manual_seed(0)
        model = build(name, metadata_dim=dm.metadata_dim, label_names=dm.label_names)
        before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
        path = train_one_step_and_save(model, dm, tmp / f"{name}.ckpt")
        changed = any(not torch.equal(before[k], v) for k, v in model.backbone.state_dict().items() if v.is_floating_point())
        assert changed, f"{name}: one training step changed no backbone weight"
        return path, model.eval()

    return make


@functools.cache
def inputs(channels: int, batch: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return torch.randn(batch, channels, SIZE, SIZE, generator=g), torch.randn(batch, 5, generator=g)


# ----- names, facts, normalisation -----
def test_xrv_normalisation_maps_the_unit_range_to_plus_minus_1024():
    transform = ImageTransform(4, 1, "xrv")
    grey = torch.tensor([0.0, 0.25, 0.5, 1.0]).repeat(4, 1)[None]
    np.testing.assert_allclose(transform(grey)[0, 0].numpy(), [-1024.0, -512.0, 0.0, 1024.0], atol=1e-3)
    assert normalization_stats("xrv", 3) == ([0.5] * 3, [1 / 2048] * 3)


def test_xrv_normalisation_equals_torchxrayvisions_own():
    xrv = pytest.importorskip("torchxrayvision")
    pixels = np.arange(0, 256, 5, dtype=np.uint8).reshape(1, -1)
    ours = ImageTransform(pixels.shape[1], 1, "xrv")(torch.from_numpy(pixels / 255.0).float().repeat(pixels.shape[1], 1)[None])
    np.testing.assert_allclose(ours[0, 0].numpy(), xrv.datasets.normalize(pixels, 255)[0], atol=1e-2)


@pytest.mark.parametrize(
    ("backbone", "options", "expected"),
    [
        ("torchvision/densenet121", None, InputFacts(224, 3, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "imagenet")),
        ("timm/test_vit", {"img_size": 48}, InputFacts(48, 3, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "beit")),
        ("timm/test_efficientnet", None, InputFacts(160, 3, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "imagenet")),
        ("xrv/resnet50-res512-all", None, InputFacts(512, 1, (0.5,), (1 / 2048,), "xrv")),
    ],
)
def test_input_facts_come_from_the_backbone(backbone, options, expected):
    if backbone.startswith("timm/") and timm is None:
        pytest.skip("timm is not installed")
    model = BackboneClassifier(backbone=backbone, weights=None, backbone_options=options)
    facts = model.input_facts
    assert (facts.image_size, facts.channels, facts.normalization) == (expected.image_size, expected.channels, expected.normalization)
    np.testing.assert_allclose(facts.mean + facts.std, expected.mean + expected.std, rtol=1e-6)


@pytest.mark.parametrize(
    ("backbone", "weights", "message"),
    [
        ("densenet121", None, "not '<source>/<name>'"),
        ("keras/densenet121", None, "not '<source>/<name>'"),
        ("torchvision/densenet999", None, "unknown torchvision model 'densenet999'"),
        ("torchvision/densenet121", "IMAGENET9K", "unknown weights 'IMAGENET9K' for torchvision densenet121"),
        ("timm/not_a_timm_model", None, "unknown timm model 'not_a_timm_model'"),
        ("timm/test_convnext", "IMAGENET1K_V1", "timm test_convnext weights are DEFAULT"),
        ("xrv/densenet121-all", None, "unknown torchxrayvision model 'densenet121-all'"),
        ("xrv/densenet121-res224-all", "IMAGENET1K_V1", "torchxrayvision densenet121-res224-all weights are DEFAULT"),
    ],
)
def test_a_bad_name_is_one_line_naming_it(backbone, weights, message):
    if backbone.startswith("timm/") and timm is None:
        pytest.skip("timm is not installed")
    with pytest.raises(ValueError) as err:
        build_backbone(backbone, weights=weights, allow_download=False)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_nih_trained_weights_are_flagged_from_their_names():
    assert weights_trained_on_nih("xrv/densenet121-res224-all", "DEFAULT")
    assert weights_trained_on_nih("xrv/densenet121-res224-nih", "DEFAULT")
    assert weights_trained_on_nih("xrv/densenet121-res224-rsna", "DEFAULT")  # RSNA Pneumonia: NIH images
    assert weights_trained_on_nih("xrv/resnet50-res512-all", "DEFAULT")
    assert not weights_trained_on_nih("xrv/densenet121-res224-chex", "DEFAULT")
    assert not weights_trained_on_nih("xrv/densenet121-res224-all", None)  # random init saw nothing
    assert not weights_trained_on_nih("torchvision/densenet121", "DEFAULT")
    assert BackboneClassifier(backbone="xrv/densenet121-res224-nih", weights=None).trained_on_nih is False
    assert parse_backbone("torchxrayvision/densenet121-res224-nih") == ("xrv", "densenet121-res224-nih")


def test_torchvision_classifiers_are_removed_wherever_they_sit():
    for name, features in [("resnet18", 512), ("efficientnet_b0", 1280), ("convnext_tiny", 768), ("mobilenet_v3_small", 1024)]:
        backbone = TorchvisionBackbone(name, weights=None).eval()
        assert backbone.out_features == features
        assert backbone(torch.randn(1, 3, SIZE, SIZE)).shape == (1, features), name
        assert not any(isinstance(m, nn.Linear) and m.out_features == 1000 for m in backbone.modules()), name


# ----- train, save, rebuild offline, explain, export -----
@pytest.mark.parametrize("name", each())
def test_checkpoint_rebuilds_offline_with_equal_outputs(checkpoint, name, monkeypatch):
    path, trained = checkpoint(name)
    # Nothing may be fetched: any download attempt fails the test.
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda *a, **k: pytest.fail("a download was attempted"))
    raw = torch.load(path, weights_only=True)
    assert raw["hyper_parameters"]["backbone"] == BACKBONES[name][0]
    model, spec = load_classifier(path)
    assert isinstance(model, BackboneClassifier) and model.hparams.weights is None and model.hparams.weights_path is None
    assert (spec.image_channels, spec.normalization) == (trained.input_facts.channels, trained.input_facts.normalization)
    images, metadata = inputs(spec.image_channels)
    metadata = metadata[:, : model.hparams.metadata_dim]
    with torch.no_grad():
        torch.testing.assert_close(model(images, metadata), trained(images, metadata), rtol=0, atol=1e-6)
    torch.testing.assert_close(model.thresholds, trained.thresholds)


@pytest.mark.parametrize("name", each())
def test_gradcam_uses_the_backbones_own_layer(checkpoint, name):
    path, _ = checkpoint(name)
    model, spec = load_classifier(path)
    layer, patch = find_target_layer(model)
    assert layer is BACKBONES[name][2](model.backbone.model) and patch == BACKBONES[name][3]
    images, metadata = inputs(spec.image_channels)
    metadata = metadata[:, : model.hparams.metadata_dim]
    maps = torch.stack([gradcam(model, images, metadata, label) for label in range(len(model.label_names))])
    assert maps.shape == (len(model.label_names), 2, SIZE, SIZE) and torch.isfinite(maps).all()
    assert maps.min() >= 0 and maps.max() <= 1
    assert (maps.flatten(2).amax(-1) == 1).any(), "every map is empty: the layer's gradient never reaches the logits"


@pytest.mark.parametrize("name", each("densenet121", "timm_vit", "xrv_densenet"))
def test_onnx_export_matches_pytorch(checkpoint, tmp_path, name):
    path, _ = checkpoint(name)
    result = export_model(path, tmp_path / f"{name}.onnx")
    assert result.max_abs_diff is not None and result.max_abs_diff < 1e-4
    model, spec = load_classifier(path)
    images, metadata = inputs(spec.image_channels, batch=3)
    metadata = metadata[:, : model.hparams.metadata_dim]
    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    feeds = {i.name: {"image": images, "metadata": metadata}[i.name].numpy() for i in session.get_inputs()}
    exported = session.run(["probabilities"], feeds)[0]
    with torch.no_grad():
        reference = torch.sigmoid(model(images, metadata)).numpy()
    assert exported.shape == (3, len(model.label_names)) and np.abs(exported - reference).max() < 1e-4


# ----- weights found on disk, offline -----
def test_torchvision_weights_are_read_from_torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    enum = torchvision.models.get_model_weights("mobilenet_v3_small").DEFAULT
    reference = torchvision.models.mobilenet_v3_small(weights=None)
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(reference.state_dict(), cache / Path(enum.url).name)
    backbone = TorchvisionBackbone("mobilenet_v3_small", weights="DEFAULT", allow_download=False)
    for key, value in backbone.model.state_dict().items():
        torch.testing.assert_close(value, reference.state_dict()[key], rtol=0, atol=0)


def test_missing_torchvision_weights_are_one_line_with_the_fetch_command(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(WeightsNotFoundError) as err:
        TorchvisionBackbone("mobilenet_v3_small", weights="DEFAULT", allow_download=False)
    message = str(err.value)
    file_name = Path(torchvision.models.MobileNet_V3_Small_Weights.DEFAULT.url).name
    assert "\n" not in message and file_name in message and str(tmp_path / "hub" / "checkpoints") in message
    assert "get_model('mobilenet_v3_small', weights='IMAGENET1K_V1')" in message


def test_a_failed_download_is_one_line_naming_the_url(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(url, *args, **kwargs):
        raise urllib.error.URLError("Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(WeightsNotFoundError) as err:
        TorchvisionBackbone("mobilenet_v3_small", weights="DEFAULT")
    message = str(err.value)
    assert "\n" not in message and "downloading https://" in message and "name resolution" in message


def test_weights_of_another_model_are_refused_in_one_line(tmp_path):
    path = tmp_path / "small.pth"
    torch.save(torchvision.models.mobilenet_v3_small(weights=None).state_dict(), path)
    with pytest.raises(RuntimeError) as err:
        TorchvisionBackbone("mobilenet_v3_large", weights=None, weights_path=path)
    assert "\n" not in str(err.value) and "does not fit" in str(err.value) and str(path) in str(err.value)


def test_a_weights_file_that_pickles_code_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": torchvision.models.mobilenet_v3_small(weights=None).state_dict(), "hook": types.SimpleNamespace()}, path)
    with pytest.raises(WeightsFileError, match="pickled Python objects"):
        TorchvisionBackbone("mobilenet_v3_small", weights=None, weights_path=path)


def test_old_densenet_key_names_are_mapped():
    old = {"features.denseblock1.denselayer1.norm.1.weight": torch.ones(1), "features.conv0.weight": torch.zeros(1)}
    assert set(fix_old_densenet_keys(old)) == {"features.denseblock1.denselayer1.norm1.weight", "features.conv0.weight"}


def _hf_snapshot(cache: Path, repo: str, file_name: str) -> Path:
    folder = cache / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text("0123abcd")
    snapshot = folder / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    return snapshot / file_name


@pytest.fixture
def hf_cache(tmp_path, monkeypatch) -> Path:
    from huggingface_hub import constants

    cache = tmp_path / "hf" / "hub"
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))  # read once at import: set it too
    return cache


@needs_timm
def test_timm_weights_are_read_from_the_hugging_face_cache(hf_cache):
    reference = timm.create_model("test_convnext", pretrained=False)  # with its 1000-class head
    torch.nn.init.normal_(reference.stem[0].weight)
    repo = reference.pretrained_cfg["hf_hub_id"]
    save_file(reference.state_dict(), str(_hf_snapshot(hf_cache, repo, "model.safetensors")))
    backbone = TimmBackbone("test_convnext", weights="DEFAULT", allow_download=False)
    for key, value in backbone.model.state_dict().items():
        torch.testing.assert_close(value, reference.state_dict()[key], rtol=0, atol=0)


@needs_timm
def test_a_damaged_safetensors_file_in_the_cache_is_one_line(hf_cache):
    repo = timm.create_model("test_convnext", pretrained=False).pretrained_cfg["hf_hub_id"]
    damaged = _hf_snapshot(hf_cache, repo, "model.safetensors")
    damaged.write_bytes(b"\x10\x00\x00\x00not a safetensors header")
    with pytest.raises(WeightsFileError) as err:
        TimmBackbone("test_convnext", weights="DEFAULT", allow_download=False)
    assert "\n" not in str(err.value) and str(damaged) in str(err.value)


@needs_timm
def test_missing_timm_weights_offline_are_one_line_with_the_fetch_command(hf_cache, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsNotFoundError) as err:
        TimmBackbone("test_convnext", weights="DEFAULT")
    message = str(err.value)
    assert "\n" not in message and str(hf_cache / "models--timm--test_convnext.r160_in1k") in message
    assert "hf download timm/test_convnext.r160_in1k model.safetensors" in message


def test_without_timm_a_timm_backbone_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm now raises ImportError
    with pytest.raises(ImportError, match=r"pip install -e '\.\[timm\]'"):
        build_backbone("timm/convnext_tiny", weights=None)


def _xrv_state_dict(name: str) -> dict[str, torch.Tensor]:
    """torchxrayvision's layout: our architecture plus its 18-way classifier and operating points."""
    state = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in XrvBackbone(name, weights=None).model.state_dict().items()}
    return {**state, "classifier.weight": torch.randn(18, 1024), "classifier.bias": torch.randn(18), "op_threshs": torch.rand(18)}


@pytest.fixture
def fake_xrv(tmp_path, monkeypatch) -> types.SimpleNamespace:
    """A stand-in torchxrayvision: its weights catalog and folder, nothing else (the real one need not be installed)."""
    folder = tmp_path / "xrv_models"
    url = "https://example.invalid/v1/nih-pc-chex-densenet121-best.pt"
    module = types.SimpleNamespace(models=types.SimpleNamespace(model_urls={"densenet121-res224-all": {"weights_url": url}}),
                                   utils=types.SimpleNamespace(get_cache_dir=lambda: str(folder)))  # fmt: skip
    monkeypatch.setitem(sys.modules, "torchxrayvision", module)
    module.folder, module.release = folder, folder / Path(url).name
    return module


def test_xrv_weights_are_read_from_its_folder_without_the_package(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setitem(sys.modules, "torchxrayvision", None)  # not installed
    folder = tmp_path / ".torchxrayvision" / "models_data"
    folder.mkdir(parents=True)
    state = _xrv_state_dict("densenet121-res224-nih")
    torch.save(state, folder / "densenet121-res224-nih.state_dict.pt")
    backbone = XrvBackbone("densenet121-res224-nih", allow_download=False)
    assert backbone.trained_on_nih
    for key, value in backbone.model.state_dict().items():
        torch.testing.assert_close(value, state[key], rtol=0, atol=0)


def test_xrv_release_file_that_pickles_a_model_is_refused_with_the_conversion_command(fake_xrv):
    fake_xrv.folder.mkdir(parents=True)
    torch.save(nn.Linear(2, 2), fake_xrv.release)  # what torchxrayvision's DenseNet release files are: a pickled module
    with pytest.raises(WeightsFileError) as err:
        XrvBackbone("densenet121-res224-all", allow_download=False)
    message = str(err.value)
    assert "\n" not in message and str(fake_xrv.release) in message
    assert "torch.save(xrv.models.get_model('densenet121-res224-all').state_dict()" in message
    assert str(fake_xrv.folder / "densenet121-res224-all.state_dict.pt") in message


def test_xrv_release_file_holding_a_state_dict_loads(fake_xrv):
    fake_xrv.folder.mkdir(parents=True)
    state = _xrv_state_dict("densenet121-res224-all")
    torch.save(state, fake_xrv.release)
    backbone = XrvBackbone("densenet121-res224-all", allow_download=False)
    torch.testing.assert_close(backbone.model.features.conv0.weight, state["features.conv0.weight"], rtol=0, atol=0)


def test_missing_xrv_weights_are_one_line_naming_both_places(fake_xrv):
    with pytest.raises(WeightsNotFoundError) as err:
        XrvBackbone("densenet121-res224-all", allow_download=False)
    message = str(err.value)
    assert "\n" not in message and str(fake_xrv.release) in message
    assert str(fake_xrv.folder / "densenet121-res224-all.state_dict.pt") in message and "get_model('densenet121-res224-all')" in message


def test_xrv_architecture_is_torchxrayvisions_own():
    xrv = pytest.importorskip("torchxrayvision")
    theirs = xrv.models.DenseNet(weights=None).eval()
    ours = XrvBackbone("densenet121-res224-all", weights=None).eval()
    ours.load_weights(theirs.state_dict(), "torchxrayvision DenseNet")  # strict but for classifier / op_threshs
    images = torch.randn(2, 1, 64, 64) * 1024
    with torch.no_grad():
        torch.testing.assert_close(ours(images), theirs.features2(images), rtol=1e-5, atol=1e-4)


# ----- the optimiser CheXNet's reproduction needs -----
@needs_timm
def test_sgd_with_momentum_weight_decay_and_plateau_is_expressible():
    model = BackboneClassifier(backbone="timm/test_convnext", weights=None, optimizer="sgd", lr=0.01, momentum=0.9,
                               weight_decay=1e-4, scheduler="plateau", plateau_factor=0.1, plateau_patience=0)  # fmt: skip
    config = model.configure_optimizers()
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    assert isinstance(optimizer, torch.optim.SGD)
    assert optimizer.defaults["lr"] == 0.01 and optimizer.defaults["momentum"] == 0.9 and optimizer.defaults["weight_decay"] == 1e-4
    assert isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau) and scheduler.factor == 0.1 and scheduler.patience == 0
    assert config["lr_scheduler"]["monitor"] == "val/loss"
    with pytest.raises(ValueError, match="unknown optimizer 'lion'"):
        BackboneClassifier(backbone="timm/test_convnext", weights=None, optimizer="lion").configure_optimizers()
