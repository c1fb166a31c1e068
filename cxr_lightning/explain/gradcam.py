"""Grad-CAM maps: where in the image the evidence for one label's logit is.

**Grad-CAM** (Selvaraju et al. 2017): for one label, the gradient of its *logit* with respect to
a layer's activations ``A`` is averaged per channel into weights ``w``; the map is
``ReLU(sum_k w_k A_k)``, upsampled (bilinear) to the input size S x S and scaled to [0, 1] per
image (a map with no positive evidence is all zeros). Target layers:

* ``BaselineCNN``: the last conv block (Conv + BN + ReLU), before the global average pool;
* ``ResNet50Classifier``: ``layer4`` (7 x 7 for a 224 input);
* ``BEiTClassifier``: the output tokens of the last transformer layer; the patch tokens (the
  CLS token has no place in the image and is dropped) are reshaped to the patch grid
  ``(S / patch) x (S / patch)``. Because the backbone **mean-pools all tokens** (CLS included)
  and the head is linear in the pooled features, every token receives the same gradient, so
  Grad-CAM here is exactly each patch token's (positive) contribution to the logit, the
  transformer analogue of CAM. (Attention rollout is not used: it ignores the head and the
  label, and Hugging Face's SDPA attention does not return attention weights.)

* a named backbone (``BackboneClassifier``): the layer its ``gradcam_layer()`` gives, the last
  convolutional stage (DenseNet ``features``, ConvNeXt's last stage, EfficientNet's head) or, for
  ViTs, the tokens entering the last block's attention (class-token pooling) or leaving it.

For the CNN and ResNet, whose pooled features also feed a linear head, Grad-CAM likewise equals
CAM (the exact per-location contribution to the logit, up to the ReLU).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cxr_lightning.explain.boxes import BOX_LABEL_ALIASES
from cxr_lightning.models.beit import BeitBackbone
from cxr_lightning.models.cnn import CNNBackbone
from cxr_lightning.models.resnet import ResNet50Backbone

__all__ = ["find_target_layer", "gradcam"]


def find_target_layer(model: nn.Module) -> tuple[nn.Module, int | None]:
    """The layer Grad-CAM uses for a cxr_lightning classifier, and the patch size for token layers (else None)."""
    root = getattr(model, "backbone", model)
    if callable(getattr(root, "gradcam_layer", None)):  # a named backbone knows its own (models/backbones)
        return root.gradcam_layer()
    for module in root.modules():
        if isinstance(module, CNNBackbone):
            return module.features[-1], None
        if isinstance(module, ResNet50Backbone):
            return module.resnet.layer4, None
        if isinstance(module, BeitBackbone):
            beit = module.model
            layers = getattr(beit, "layers", None)
            if layers is None:  # transformers 4.x layout
                layers = beit.encoder.layer
            return layers[-1], int(beit.config.patch_size)
    convs = [m for m in root.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError(f"no Grad-CAM target layer found in {type(model).__name__}; pass target_layer=")
    return convs[-1], None


def _label_indices(model: nn.Module, label: int | str | Sequence[int | str], batch: int) -> torch.Tensor:
    names = list(getattr(model, "label_names", []) or [])

    def one(value: int | str) -> int:
        if isinstance(value, str):
            value = BOX_LABEL_ALIASES.get(value, value)
            if value not in names:
                raise ValueError(f"unknown label {value!r}; the model's labels are {names}")
            return names.index(value)
        return int(value)

    if isinstance(label, (int, str, np.integer)):
        return torch.full((batch,), one(label), dtype=torch.long)
    indices = torch.tensor([one(v) for v in label], dtype=torch.long)
    if len(indices) != batch:
        raise ValueError(f"{len(indices)} labels for {batch} images")
    return indices


def _normalise_maps(cam: torch.Tensor) -> torch.Tensor:
    """Per-map min-max to [0, 1]; a (numerically) constant map becomes zeros."""
    flat = cam.flatten(1)
    low, high = flat.min(1).values, flat.max(1).values
    span = high - low
    valid = span > 1e-12 * torch.clamp(high.abs(), min=1.0)
    scaled = (cam - low[:, None, None]) / torch.where(valid, span, torch.ones_like(span))[:, None, None]
    return torch.where(valid[:, None, None], scaled, torch.zeros_like(cam)).clamp_(0.0, 1.0)


def gradcam(
    model: nn.Module,
    images: torch.Tensor,
    metadata: torch.Tensor,
    label: int | str | Sequence[int | str],
    target_layer: nn.Module | None = None,
    patch_size: int | None = None,
    return_logits: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Grad-CAM maps ``(B, S, S)`` in [0, 1] for ``images (B, C, S, S)``, ``metadata (B, M)``.

    ``label``: one index or name for all images, or one per image. ``target_layer`` defaults to
    :func:`find_target_layer`; a layer whose output is ``(B, tokens, D)`` is treated as ViT
    tokens (``patch_size`` gives the grid; default: a square grid of the last tokens). The model
    runs in eval mode (restored afterwards). With ``return_logits`` also the ``(B, L)`` logits.
    """
    if images.ndim != 4:
        raise ValueError(f"images must be (B, C, H, W), got {tuple(images.shape)}")
    if target_layer is None:
        target_layer, found_patch = find_target_layer(model)
        patch_size = patch_size or found_patch
    batch, _, height, width = images.shape
    indices = _label_indices(model, label, batch)
    captured: dict[str, torch.Tensor] = {}

    def hook(module, inputs, output):
        captured["activation"] = output[0] if isinstance(output, (tuple, list)) else output

    was_training = model.training
    model.eval()
    handle = target_layer.register_forward_hook(hook)
    try:
        with torch.enable_grad():
            device = next(model.parameters()).device
            # The input requires grad so that a frozen backbone still builds a graph.
            x = images.detach().to(device).clone().requires_grad_(True)
            logits = model(x, metadata.detach().to(device))
            if "activation" not in captured:
                raise RuntimeError("the Grad-CAM target layer did not run in the forward pass")
            activation = captured["activation"]
            score = logits.gather(1, indices.to(device)[:, None]).sum()
            (grad,) = torch.autograd.grad(score, activation)
    finally:
        handle.remove()
        model.train(was_training)

    activation, grad = activation.detach().float(), grad.detach().float()
    if activation.ndim == 4:  # (B, K, h, w)
        weights = grad.mean(dim=(2, 3))
        cam = torch.relu((weights[:, :, None, None] * activation).sum(1))
    elif activation.ndim == 3:  # (B, tokens, D)
        if patch_size:
            grid_h, grid_w = height // patch_size, width // patch_size
        else:
            side = math.isqrt(activation.shape[1])
            grid_h = grid_w = side
        n = grid_h * grid_w
        if n > activation.shape[1]:
            raise ValueError(f"{activation.shape[1]} tokens cannot form a {grid_h}x{grid_w} patch grid")
        patches, patch_grads = activation[:, -n:], grad[:, -n:]  # the CLS token comes first
        weights = patch_grads.mean(1)
        cam = torch.relu((patches * weights[:, None, :]).sum(-1)).reshape(batch, grid_h, grid_w)
    else:
        raise ValueError(f"Grad-CAM needs a (B, K, h, w) or (B, tokens, D) activation, got {tuple(activation.shape)}")
    cam = F.interpolate(cam[:, None], size=(height, width), mode="bilinear", align_corners=False)[:, 0]
    maps = _normalise_maps(cam).cpu()
    return (maps, logits.detach().float().cpu()) if return_logits else maps
