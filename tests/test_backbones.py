"""Image backbones: shapes, parameter counts and offline weight loading (no network is ever used)."""

from __future__ import annotations

import urllib.error
from pathlib import Path

import pytest
import torch
from torch import nn
from torchvision.models import ResNet50_Weights, resnet50

from cxr_lightning.models.beit import BeitBackbone, tiny_beit_config
from cxr_lightning.models.cnn import CNNBackbone
from cxr_lightning.models.resnet import HighResStem, ResNet50Backbone, resolve_resnet50_weights
from cxr_lightning.models.weights import WeightsNotFoundError

V2_FILE = "resnet50-11ad3fa6.pth"  # basename of ResNet50_Weights.IMAGENET1K_V2.url


def n_params(module: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


@pytest.fixture(autouse=True)
def _no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any torchvision download fails at once (as offline); HF stays offline too."""

    def refuse(url: str, *args, **kwargs):
        raise urllib.error.URLError(f"network disabled in tests ({url})")

    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture
def hub_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty torch hub dir in place of ~/.cache/torch/hub."""
    hub = tmp_path / "torch_hub"
    hub.mkdir()
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    return hub


@pytest.fixture(scope="module")
def random_resnet_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    """A random ImageNet-layout (1000-class) ResNet-50 state dict saved to disk, with running stats changed."""
    torch.manual_seed(0)
    model = resnet50(weights=None)
    with torch.no_grad():
        model.bn1.running_mean.uniform_(-1, 1)
        model.layer4[2].bn3.running_var.uniform_(0.5, 2)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    path = tmp_path_factory.mktemp("weights") / "resnet50_random.pth"
    torch.save(state, path)
    return path, state


def assert_body_equals(backbone: ResNet50Backbone, state: dict[str, torch.Tensor]) -> None:
    loaded = backbone.resnet.state_dict()
    expected = {k: v for k, v in state.items() if not k.startswith("fc.")}
    assert set(loaded) == set(expected)
    for k, v in expected.items():
        assert torch.equal(loaded[k], v), k


# ----------------------------------------------------------------------------- CNN


def test_cnn_shapes_blocks_and_param_count() -> None:
    model = CNNBackbone().eval()
    assert model.out_features == 512 and model.in_channels == 3
    with torch.no_grad():
        assert model(torch.randn(2, 3, 64, 64)).shape == (2, 512)
        assert model(torch.randn(1, 3, 224, 224)).shape == (1, 512)

    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [32, 64, 128, 256, 512]
    assert [c.in_channels for c in convs] == [3, 32, 64, 128, 256]
    assert all(c.kernel_size == (3, 3) and c.padding == (1, 1) for c in convs)
    assert len([m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]) == 5
    assert len([m for m in model.modules() if isinstance(m, nn.MaxPool2d)]) == 4
    assert not any(isinstance(m, nn.Dropout) for m in model.modules())

    chans = [3, 32, 64, 128, 256, 512]
    expected = sum(9 * a * b + 2 * b for a, b in zip(chans, chans[1:]))  # bias-free conv + BN weight/bias
    print(f"CNNBackbone parameters: {n_params(model):,}")
    assert n_params(model) == expected == 1_569_568


def test_cnn_grey_input() -> None:
    model = CNNBackbone(in_channels=1, channels=(8, 16)).eval()
    assert model(torch.randn(2, 1, 20, 20)).shape == (2, 16)
    assert model.out_features == 16


# ----------------------------------------------------------------------------- ResNet-50


def test_high_res_stem_arithmetic_and_shape() -> None:
    assert HighResStem.output_size(1024) == 244  # (1024-5)//2+1=510, (510-7)//2+1=252, 252-9+1=244
    assert HighResStem.output_size(256) == 52
    stem = HighResStem().eval()
    assert (stem.scale, stem.shift) == (0.226, 0.449)  # the paper code's x * 0.226 + 0.449, unchanged
    with torch.no_grad():
        assert stem(torch.rand(1, 1, 1024, 1024)).shape == (1, 3, 244, 244)
        out = stem(torch.rand(2, 1, 100, 100))
    assert out.shape == (2, 3, HighResStem.output_size(100), HighResStem.output_size(100))
    convs = [stem.conv1, stem.conv2, stem.conv3]
    assert [(c.in_channels, c.out_channels, c.kernel_size[0], c.stride[0], c.padding[0]) for c in convs] == [
        (1, 32, 5, 2, 0),
        (32, 16, 7, 2, 0),
        (16, 3, 9, 1, 0),
    ]
    assert n_params(stem) == 29_929


def test_resnet_random_init_shapes() -> None:
    model = ResNet50Backbone(weights=None).eval()
    assert model.out_features == 2048 and model.in_channels == 3
    assert isinstance(model.resnet.fc, nn.Identity)
    with torch.no_grad():
        assert model(torch.randn(2, 3, 64, 64)).shape == (2, 2048)
    print(f"ResNet50Backbone parameters: {n_params(model):,}")
    assert n_params(model) == 23_508_032


def test_resnet_high_res_stem_grey_input() -> None:
    model = ResNet50Backbone(weights=None, high_res_stem=True).eval()
    assert model.in_channels == 1
    with torch.no_grad():
        assert model(torch.rand(1, 1, 256, 256)).shape == (1, 2048)
    assert n_params(model) == 23_508_032 + 29_929


def test_resnet_unknown_weights_name() -> None:
    with pytest.raises(ValueError, match="IMAGENET1K_V2"):
        ResNet50Backbone(weights="IMAGENET21K")


def test_resnet_weights_path(random_resnet_file, tmp_path: Path, hub_dir: Path) -> None:
    path, state = random_resnet_file
    model = ResNet50Backbone(weights="IMAGENET1K_V1", weights_path=path)
    assert_body_equals(model, state)

    # random init + weights_path: weights loaded
    model = ResNet50Backbone(weights=None, weights_path=str(path))
    assert_body_equals(model, state)


def test_resnet_weights_path_other_fc_and_lightning_checkpoint(random_resnet_file, tmp_path: Path) -> None:
    _, state = random_resnet_file
    other_fc = dict(state)
    other_fc["fc.weight"] = torch.randn(14, 2048)
    other_fc["fc.bias"] = torch.randn(14)
    p14 = tmp_path / "resnet50_14classes.pth"
    torch.save(other_fc, p14)
    assert_body_equals(ResNet50Backbone(weights=None, weights_path=p14), state)

    # a full (Lightning-style) checkpoint: weights under "state_dict", keys prefixed, extra non-tensor items
    ckpt = {
        "epoch": 3,
        "hyper_parameters": {"lr": 1e-4},
        "state_dict": {f"model.backbone.resnet.{k}": v for k, v in other_fc.items()} | {"head.weight": torch.zeros(2)},
    }
    pckpt = tmp_path / "last.ckpt"
    torch.save(ckpt, pckpt)
    assert_body_equals(ResNet50Backbone(weights=None, weights_path=pckpt), state)


def test_resnet_weights_path_missing(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "resnet50.pth"
    with pytest.raises(WeightsNotFoundError, match="resnet50.pth") as info:
        ResNet50Backbone(weights="IMAGENET1K_V2", weights_path=missing)
    assert str(missing) in str(info.value)
    assert isinstance(info.value, FileNotFoundError)


def test_resnet_wrong_state_dict(tmp_path: Path) -> None:
    p = tmp_path / "cnn.pth"
    torch.save(CNNBackbone().state_dict(), p)
    with pytest.raises(RuntimeError, match="not a torchvision ResNet-50"):
        ResNet50Backbone(weights=None, weights_path=p)


def test_resnet_loads_from_torchvision_cache_offline(random_resnet_file, hub_dir: Path) -> None:
    path, state = random_resnet_file
    assert Path(ResNet50_Weights.IMAGENET1K_V2.url).name == V2_FILE
    checkpoints = hub_dir / "checkpoints"
    checkpoints.mkdir()
    (checkpoints / V2_FILE).write_bytes(path.read_bytes())

    model = ResNet50Backbone()  # default IMAGENET1K_V2; download would raise (see _no_network)
    assert_body_equals(model, state)

    assert resolve_resnet50_weights("DEFAULT") is ResNet50_Weights.IMAGENET1K_V2
    assert_body_equals(ResNet50Backbone(weights="DEFAULT"), state)  # found as the V2 file in the cache


def test_resnet_missing_from_empty_cache(hub_dir: Path) -> None:
    with pytest.raises(WeightsNotFoundError) as info:
        ResNet50Backbone(weights="IMAGENET1K_V2")
    msg = str(info.value)
    assert V2_FILE in msg
    assert str(hub_dir / "checkpoints" / V2_FILE) in msg  # where it looked
    assert ResNet50_Weights.IMAGENET1K_V2.url in msg
    assert "resnet50(weights=ResNet50_Weights.IMAGENET1K_V2)" in msg  # how to fetch
    assert "weights_path" in msg
    assert "network disabled in tests" in msg  # the download was tried and its failure reported
    assert isinstance(info.value.__cause__, urllib.error.URLError)

    with pytest.raises(WeightsNotFoundError, match="allow_download=False"):
        ResNet50Backbone(weights="IMAGENET1K_V1", allow_download=False)


# ----------------------------------------------------------------------------- BEiT


def test_beit_tiny_shapes_and_interpolation() -> None:
    model = BeitBackbone(config=tiny_beit_config()).eval()
    assert model.out_features == 32 and model.in_channels == 3
    with torch.no_grad():
        x = torch.randn(2, 3, 32, 32)
        out = model(x)
        assert out.shape == (2, 32)
        # mean over all tokens, CLS included (the paper code's pooling)
        hidden = model.model(pixel_values=x).last_hidden_state
        assert hidden.shape == (2, 1 + 16, 32)
        assert torch.allclose(out, hidden.mean(dim=1))
        # other input sizes: position encodings interpolated automatically
        assert model(torch.randn(2, 3, 48, 64)).shape == (2, 32)
    assert model.model.pooler is None  # add_pooling_layer=False
    print(f"tiny BeitBackbone parameters: {n_params(model):,}")

    model = BeitBackbone(config=tiny_beit_config(use_absolute_position_embeddings=True), image_size=48).eval()
    assert model.model.config.image_size == 48
    with torch.no_grad():
        assert model(torch.randn(1, 3, 48, 48)).shape == (1, 32)
        assert model(torch.randn(1, 3, 32, 32)).shape == (1, 32)


def test_beit_save_and_load_directory(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = BeitBackbone(config=tiny_beit_config(use_relative_position_bias=True)).eval()
    model.model.save_pretrained(tmp_path / "tiny_beit")
    loaded = BeitBackbone(pretrained=str(tmp_path / "tiny_beit")).eval()
    assert loaded.out_features == 32
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x), loaded(x), atol=1e-6)
    # a Path object works too
    assert BeitBackbone(pretrained=tmp_path / "tiny_beit").out_features == 32


def test_beit_missing_weights_offline(tmp_path: Path) -> None:
    with pytest.raises(WeightsNotFoundError) as info:
        BeitBackbone(pretrained="nobody-xyz/no-such-beit-model")
    msg = str(info.value)
    assert "nobody-xyz/no-such-beit-model" in msg
    assert "Hugging Face cache" in msg and "models--nobody-xyz--no-such-beit-model" in msg
    assert "download nobody-xyz/no-such-beit-model" in msg and "save_pretrained" in msg
    assert "offline mode is on" in msg

    with pytest.raises(WeightsNotFoundError, match="directory not found"):
        BeitBackbone(pretrained=str(tmp_path / "no" / "such" / "dir"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(WeightsNotFoundError, match="no BEiT weights in directory"):
        BeitBackbone(pretrained=str(tmp_path / "empty"))
    with pytest.raises(ValueError):
        BeitBackbone(pretrained=None)


def test_beit_freeze() -> None:
    model = BeitBackbone(config=tiny_beit_config(hidden_dropout_prob=0.5), freeze=True)
    assert n_params(model, trainable_only=True) == 0 and n_params(model) > 0
    model.train()
    assert not model.model.training
    assert all(not m.training for m in model.model.modules())
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(model(x), model(x))  # no dropout although .train() was called
    assert not model(x).requires_grad

    # inside a trainable parent (the integrator's LightningModule) the frozen encoder stays in eval too
    parent = nn.Sequential(model, nn.Linear(32, 2))
    parent.train()
    assert not model.model.training and parent[1].training
    assert n_params(parent, trainable_only=True) == 32 * 2 + 2

    unfrozen = BeitBackbone(config=tiny_beit_config())
    unfrozen.train()
    assert unfrozen.model.training and n_params(unfrozen, trainable_only=True) == n_params(unfrozen)
