"""Numerics: a non-finite loss stops the run naming the step and images; bf16 keeps the loss in float32."""

from __future__ import annotations

import pytest
import torch

from cxr_lightning.models import BaselineCNN
from cxr_lightning.models.losses import WeightedBCEWithLogits


def batch(n=4, nan=False):
    images = torch.rand(n, 3, 32, 32)
    if nan:
        images[1, 0, 0, 0] = float("nan")
    return {"image": images, "metadata": torch.zeros(n, 5), "labels": (torch.rand(n, 15) < 0.2).float(),
            "name": [f"{i:08d}_000.png" for i in range(n)], "index": torch.arange(n)}  # fmt: skip


def test_non_finite_loss_names_step_and_images():
    model = BaselineCNN(channels=(8, 8, 8, 8, 8))
    with pytest.raises(FloatingPointError, match=r"non-finite loss nan at global step 0 \(images \['00000000_000.png'"):
        model.model_step(batch(nan=True))


def test_bf16_autocast_keeps_logits_loss_and_probabilities_in_float32():
    model = BaselineCNN(channels=(8, 8, 8, 8, 8))
    data = batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(data["image"], data["metadata"])
        loss = model.criterion(logits, data["labels"])
    # The backbone runs in bf16, the fusion head in float32: the logits carry no bf16 ties.
    assert logits.dtype == torch.float32 and loss.dtype == torch.float32
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits, data["labels"])
    assert torch.allclose(loss, expected)
    model.val_predictions.update(torch.sigmoid(logits.bfloat16()), data["labels"], data["index"])
    assert model.val_predictions.compute().probs.dtype == torch.float32
    assert WeightedBCEWithLogits(15, [2.0] * 15)(logits.bfloat16(), data["labels"]).dtype == torch.float32


def test_channels_last_and_compile_options(monkeypatch):
    compiled = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, *a, **k: compiled.append(type(self).__name__))
    model = BaselineCNN(channels=(8, 8, 8, 8, 8), channels_last=True, compile=True)
    keys = set(model.state_dict())
    model.configure_model()
    assert compiled == ["CNNBackbone"] and set(model.state_dict()) == keys
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    data = batch()
    reference = BaselineCNN(channels=(8, 8, 8, 8, 8))
    reference.load_state_dict(model.state_dict())
    model.eval(), reference.eval()
    assert torch.allclose(model(data["image"], data["metadata"]), reference(data["image"], data["metadata"]), atol=1e-5)
