"""Grad-CAM, overlays, localisation metrics and ``cxr-lightning explain``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from cxr_lightning.checkpoint import DataSpec
from cxr_lightning.data import ChestXrayDataModule
from cxr_lightning.data.encoding import MetadataEncoder
from cxr_lightning.data.metadata import packaged_file
from cxr_lightning.explain.boxes import read_bbox_csv
from cxr_lightning.explain.command import main as explain_main
from cxr_lightning.explain.explain_files import evaluate_localization
from cxr_lightning.explain.gradcam import find_target_layer, gradcam
from cxr_lightning.explain.localization import box_mask, energy_in_box, pointing_game, scale_box
from cxr_lightning.explain.overlay import overlay
from cxr_lightning.inference.predictor import Predictor
from cxr_lightning.models import BaselineCNN, BEiTClassifier, ResNet50Classifier
from cxr_lightning.models.base import CXRClassifier
from cxr_lightning.models.beit import tiny_beit_config
from cxr_lightning.models.cnn import CNNBackbone
from tests.helpers.checkpoints import train_one_step_and_save


class MaskedCNN(nn.Module):
    """A CNN backbone that only ever sees the pixels of one box (x, y, w, h): everything else is zeroed first."""

    def __init__(self, box: tuple[int, int, int, int], size: int):
        super().__init__()
        x, y, w, h = box
        mask = torch.zeros(1, 1, size, size)
        mask[..., y : y + h, x : x + w] = 1
        self.register_buffer("mask", mask)
        self.body = CNNBackbone(channels=(4, 4))
        with torch.no_grad():
            for module in self.body.modules():
                if isinstance(module, nn.Conv2d):
                    module.weight.abs_()  # non-negative input -> non-negative evidence
        self.out_features = self.body.out_features

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.body(images * self.mask)


class RegionClassifier(CXRClassifier):
    """Label ``a`` grows with what is inside the box, label ``b`` shrinks with it; nothing outside matters."""

    def __init__(self, box: tuple[int, int, int, int], size: int = 64):
        super().__init__(num_labels=2, label_names=["a", "b"], metadata_dim=3)
        self.attach_backbone(MaskedCNN(box, size))
        with torch.no_grad():
            self.head.classifier.weight[0].abs_()
            self.head.classifier.weight[1] = -self.head.classifier.weight[1].abs()


REGION = (40, 8, 16, 16)  # x, y, w, h in 64-pixel model input


def region_spec(size: int = 64) -> DataSpec:
    return DataSpec(label_names=["a", "b"], metadata_encoder=MetadataEncoder("code", 50.0, 10.0), image_size=size,
                    image_channels=3, normalization="none")  # fmt: skip


# ----------------------------------------------------------------------------------------------
# Grad-CAM
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("box", [(0, 32, 24, 24), REGION, (20, 20, 16, 16)])
def test_gradcam_peaks_in_the_only_region_the_logit_depends_on(box):
    torch.manual_seed(0)
    model = RegionClassifier(box).eval()
    assert find_target_layer(model)[0] is model.backbone.body.features[-1]
    images = torch.rand(3, 3, 64, 64)
    maps = gradcam(model, images, torch.zeros(3, 3), "a")
    assert maps.shape == (3, 64, 64) and maps.min() >= 0 and maps.max() <= 1
    x, y, w, h = box
    far = box_mask((x - 6, y - 6, w + 12, h + 12), 64, 64) == 0
    for heat in maps:
        assert heat.max() == 1.0
        assert pointing_game(heat, box)
        assert energy_in_box(heat, box) > 0.6
        assert heat.numpy()[far].max() == 0.0  # no evidence where the model cannot look


def test_gradcam_without_positive_evidence_is_all_zero():
    model = RegionClassifier(REGION).eval()
    maps = gradcam(model, torch.rand(2, 3, 64, 64), torch.zeros(2, 3), "b")
    assert torch.count_nonzero(maps) == 0
    assert not pointing_game(maps[0], REGION) and energy_in_box(maps[0], REGION) == 0.0


def test_gradcam_restores_training_mode_and_accepts_per_image_labels():
    model = RegionClassifier(REGION).train()
    maps = gradcam(model, torch.rand(2, 3, 64, 64), torch.zeros(2, 3), ["a", "b"])
    assert model.training
    assert maps[0].max() == 1.0 and torch.count_nonzero(maps[1]) == 0
    with pytest.raises(ValueError, match="unknown label"):
        gradcam(model, torch.rand(1, 3, 64, 64), torch.zeros(1, 3), "Hernia")


def test_resnet_uses_layer4_and_gives_a_heatmap():
    torch.manual_seed(0)
    model = ResNet50Classifier(weights=None, metadata_dim=3).eval()
    with torch.no_grad():
        model.head.classifier.weight[4].abs_()
    assert find_target_layer(model)[0] is model.backbone.resnet.layer4
    (heat,) = gradcam(model, torch.randn(1, 3, 64, 64), torch.zeros(1, 3), 4)
    assert heat.shape == (64, 64) and heat.max() == 1.0 and heat.min() == 0.0


def test_beit_gradcam_is_each_patch_tokens_contribution_to_the_logit():
    """BEiT mean-pools all tokens into a linear head: Grad-CAM must equal ReLU(W_label . token) on the patch grid."""
    torch.manual_seed(0)
    model = BEiTClassifier(pretrained=None, config=tiny_beit_config(image_size=32), metadata_dim=3).eval()
    layer, patch = find_target_layer(model)
    assert patch == 8
    images = torch.randn(2, 3, 32, 32)
    captured = {}
    handle = layer.register_forward_hook(lambda module, inputs, output: captured.setdefault("tokens", output))
    with torch.no_grad():
        model(images, torch.zeros(2, 3))
    handle.remove()
    tokens = captured["tokens"]  # (2, 1 + 16, 32)
    weight = model.head.classifier.weight[2, :32]  # the image part of the head (metadata comes after)
    contribution = torch.relu(tokens[:, 1:] @ weight).reshape(2, 1, 4, 4)  # row-major patch grid
    expected = F.interpolate(contribution, size=(32, 32), mode="bilinear", align_corners=False)[:, 0]
    low = expected.flatten(1).min(1).values[:, None, None]
    high = expected.flatten(1).max(1).values[:, None, None]
    expected = (expected - low) / (high - low)
    maps = gradcam(model, images, torch.zeros(2, 3), 2)
    assert torch.allclose(maps, expected, atol=1e-5)


# ----------------------------------------------------------------------------------------------
# Metrics and boxes
# ----------------------------------------------------------------------------------------------


def test_pointing_game_on_hand_made_heatmaps():
    heat = np.zeros((32, 32))
    heat[10, 20] = 1.0  # row 10, column 20
    assert pointing_game(heat, (15, 5, 10, 10))  # columns 15..24, rows 5..14
    assert not pointing_game(heat, (0, 0, 10, 10))
    assert not pointing_game(heat, (21, 10, 5, 5))  # starts one column right of the peak
    assert pointing_game(heat, (21, 10, 5, 5), tolerance=1)
    assert pointing_game(torch.from_numpy(heat), (20.9, 10.9, 0.2, 0.2))  # a tiny fractional box still touches it
    assert not pointing_game(np.full((8, 8), 0.3), (0, 0, 8, 8))  # a constant map points nowhere
    ties = np.zeros((8, 8))
    ties[0, 0] = ties[7, 7] = 1.0
    assert pointing_game(ties, (6, 6, 2, 2)) and pointing_game(ties, (0, 0, 1, 1))


def test_energy_in_box_on_hand_made_heatmaps():
    assert energy_in_box(np.ones((8, 8)), (0, 0, 4, 4)) == 0.25
    assert energy_in_box(np.ones((8, 8)), (0.5, 0, 1, 1)) == pytest.approx(1 / 64)  # half of two pixels
    heat = np.zeros((8, 8))
    heat[2:4, 2:4] = 1.0
    heat[7, 7] = 4.0
    assert energy_in_box(heat, (2, 2, 2, 2)) == 0.5
    assert energy_in_box(np.zeros((8, 8)), (0, 0, 8, 8)) == 0.0
    mask = box_mask((1.5, 0, 2, 1), 2, 4)
    assert mask.tolist() == [[0.0, 0.5, 1.0, 0.5], [0.0, 0.0, 0.0, 0.0]]


def test_boxes_scale_from_the_original_image_size():
    assert scale_box((512, 256, 128, 64), (1024, 1024), 64) == (32.0, 16.0, 8.0, 4.0)
    assert scale_box((512, 256, 128, 64), (2048, 1024), 64) == (16.0, 16.0, 4.0, 4.0)
    assert scale_box((100, 100, 10, 10), (1024, 1024), (224, 224)) == pytest.approx((21.875, 21.875, 2.1875, 2.1875))


def test_nih_box_file_is_read_with_our_label_names():
    boxes = read_bbox_csv(packaged_file("BBox_List_2017.csv.gz"))
    assert len(boxes) == 984 and list(boxes.columns) == ["image", "label", "x", "y", "w", "h"]
    assert boxes["label"].value_counts()["Infiltration"] == 123 and "Infiltrate" not in set(boxes["label"])
    assert boxes.iloc[0].tolist()[:2] == ["00013118_008.png", "Atelectasis"]
    assert boxes.iloc[0]["x"] == pytest.approx(225.084745762712)


def test_localization_scales_nih_sized_boxes_to_the_model_input(tmp_path):
    """Boxes in 1024-pixel (and non-square 2048x1024) originals are compared on the 64-pixel heatmap."""
    torch.manual_seed(0)
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(60, 255, (1024, 1024), dtype=np.uint8)).save(folder / "square.png")
    Image.fromarray(np.full((1024, 2048), 180, np.uint8)).save(folder / "wide.png")
    x, y, w, h = REGION
    rows = [
        "Image Index,Finding Label,Bbox [x,y,w,h],,,",
        f"square.png,a,{x * 16},{y * 16},{w * 16},{h * 16}",  # the region, in 1024-pixel coordinates
        "square.png,a,0,512,256,256",  # somewhere else
        f"wide.png,a,{x * 32},{y * 16},{w * 32},{h * 16}",  # the region in a 2048x1024 image
        f"square.png,b,{x * 16},{y * 16},{w * 16},{h * 16}",  # label b has no positive evidence
        "square.png,Hernia,0,0,10,10",  # a label the model does not have
    ]
    (tmp_path / "boxes.csv").write_text("\n".join(rows) + "\n")
    model = RegionClassifier(REGION).eval()
    summary = evaluate_localization(model, tmp_path, tmp_path / "boxes.csv", spec=region_spec(), overlays_dir=tmp_path / "ov")
    per_box = summary.attrs["per_box"]
    assert per_box["pointing_hit"].tolist() == [True, False, True, False]
    hits = summary.set_index("label")
    assert hits.loc["a", "n_boxes"] == 3 and hits.loc["a", "n_images"] == 2 and hits.loc["a", "pointing_hit_rate"] == pytest.approx(2 / 3)
    assert hits.loc["b", "pointing_hit_rate"] == 0.0 and hits.loc["b", "mean_energy_in_box"] == 0.0
    assert hits.loc["all", "n_boxes"] == 4
    energies = per_box["energy_in_box"].tolist()
    assert energies[0] > 0.6 and energies[2] > 0.6 and energies[1] == 0.0
    assert per_box["box_area_fraction"].iloc[0] == pytest.approx(16 * 16 / 64**2)
    overlays = sorted(p.name for p in (tmp_path / "ov").glob("*.png"))
    assert overlays == ["square__a.png", "square__b.png", "wide__a.png"]
    drawn = Image.open(tmp_path / "ov" / "wide__a.png")  # drawn on the original image, with a colour bar and a caption
    assert drawn.size[0] > 2048 and drawn.size[1] > 1024 and drawn.crop((0, 0, 2048, 1024)).size == (2048, 1024)


def test_overlay_writes_a_blended_png(tmp_path):
    grey = torch.full((1, 40, 40), 0.5)
    heat = torch.zeros(10, 10)
    heat[2, 3] = 1.0
    path = overlay(grey, heat, tmp_path / "o" / "x.png", boxes=[(0, 0, 20, 20)], title="test")
    picture = np.asarray(Image.open(path))
    assert picture.shape[0] > 40 and picture.shape[1] > 40 and picture.shape[2] == 3  # a colour bar and a caption around it
    assert tuple(picture[30, 30]) != tuple(picture[11, 13])  # heat shows where the map is hot
    assert tuple(picture[19, 10]) == (0, 255, 0)  # the box outline
    bar = picture[:40, 40:].reshape(-1, 3)
    assert (bar[:, 0] > 100).any() and (bar[:, 2] > 100).any()  # the colour bar holds both ends of the colour map
    caption = picture[40:]
    assert (caption < 100).any()  # dark caption text on white


def test_an_empty_heatmap_is_flagged_on_the_overlay_and_in_the_localisation_table(tmp_path):
    from cxr_lightning.explain.localization import localization_summary

    grey = torch.full((1, 64, 64), 0.5)
    flagged = np.asarray(Image.open(overlay(grey, torch.zeros(8, 8), tmp_path / "empty.png", title="Mass p=0.10")))
    plain = np.asarray(Image.open(overlay(grey, torch.rand(8, 8) + 0.1, tmp_path / "full.png", title="Mass p=0.10")))
    red = lambda p: ((p[64:, :, 0] > 150) & (p[64:, :, 1] < 80) & (p[64:, :, 2] < 80)).sum()  # noqa: E731
    assert red(flagged) > 0 and red(plain) == 0  # the EMPTY HEATMAP line is drawn in red, only when empty
    per_box = pd.DataFrame({"image": ["a", "b"], "label": ["Mass", "Mass"], "pointing_hit": [False, True], "energy_in_box": [0.0, 0.4],
                            "box_area_fraction": [0.1, 0.1], "empty_heatmap": [True, False]})  # fmt: skip
    summary = localization_summary(per_box, ["Mass"]).set_index("label")
    assert summary.loc["Mass", "empty_heatmaps"] == 1 and summary.loc["all", "empty_heatmaps"] == 1


# ----------------------------------------------------------------------------------------------
# The command on the synthetic dataset
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cnn_checkpoint(synthetic_root, tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("explain")
    dm = ChestXrayDataModule(data_root=synthetic_root, split="official", val_fraction=0.25, image_size=32, batch_size=4, num_workers=0)
    model = BaselineCNN(channels=(8, 8, 16, 16, 16), metadata_dim=dm.metadata_dim, label_names=dm.label_names)
    return train_one_step_and_save(model, dm, tmp / "cnn.ckpt")


def test_explain_command_end_to_end_on_synthetic_boxes(cnn_checkpoint, synthetic_root, tmp_path):
    out = tmp_path / "explain"
    code = explain_main(["--checkpoint", str(cnn_checkpoint), "--images", str(synthetic_root / "images"), "--labels", "Cardiomegaly",
                         "Effusion", "--out", str(out), "--boxes", str(synthetic_root / "BBox_List_2017.csv"),
                         "--metadata", str(synthetic_root / "Data_Entry_2017_v2020.csv"), "--no-progress"])  # fmt: skip
    assert code == 0
    boxes = pd.read_csv(synthetic_root / "BBox_List_2017.csv", header=None, skiprows=1, usecols=range(6))
    expected = boxes[1].value_counts()
    summary = pd.read_csv(out / "localization.csv").set_index("label")
    assert list(summary.index) == ["Cardiomegaly", "Effusion", "all"]
    assert summary.loc["Cardiomegaly", "n_boxes"] == expected["Cardiomegaly"] > 0
    assert summary.loc["Effusion", "n_boxes"] == expected["Effusion"] > 0
    assert summary.loc["all", "n_boxes"] == expected["Cardiomegaly"] + expected["Effusion"]
    assert summary["pointing_hit_rate"].between(0, 1).all() and summary["mean_energy_in_box"].between(0, 1).all()
    assert summary["mean_box_area_fraction"].between(0, 1).all()
    per_box = pd.read_csv(out / "localization_boxes.csv")
    assert len(per_box) == summary.loc["all", "n_boxes"]
    explanations = pd.read_csv(out / "explanations.csv")
    assert len(explanations) == 2 * 160 and set(explanations["label"]) == {"Cardiomegaly", "Effusion"}
    assert len(list((out / "overlays").glob("*.png"))) == 2 * 160
    assert explanations["n_boxes"].sum() == len(per_box)


def test_explain_command_defaults_to_the_most_probable_finding(cnn_checkpoint, synthetic_root, tmp_path):
    images = sorted((synthetic_root / "images").glob("*.png"))[:3]
    out = tmp_path / "top"
    assert explain_main(["--checkpoint", str(cnn_checkpoint), "--images", *map(str, images), "--out", str(out), "--no-progress"]) == 0
    explanations = pd.read_csv(out / "explanations.csv")
    predictor = Predictor(cnn_checkpoint)
    probs = predictor.predict_files(images, progress=False).set_index("image")
    for row in explanations.itertuples():
        findings = probs.loc[row.image, [f"prob_{n}" for n in predictor.label_names if n != "No Finding"]]
        assert row.label == findings.idxmax().removeprefix("prob_")
    assert not (out / "localization.csv").exists()
