"""Losses for multi-label training; all compute in float32 whatever the autocast precision."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F


def _pos_weight_buffer(num_labels: int, pos_weight: Sequence[float] | None) -> torch.Tensor:
    weights = torch.ones(num_labels) if pos_weight is None else torch.as_tensor(list(pos_weight), dtype=torch.float32)
    if weights.shape != (num_labels,):
        raise ValueError(f"pos_weight has {weights.numel()} values for {num_labels} labels")
    return weights


class WeightedBCEWithLogits(nn.Module):
    """``BCEWithLogitsLoss`` with an optional per-label ``pos_weight`` kept as a buffer.

    The paper's CNN used ``Sigmoid`` + ``BCELoss``; this is the same loss, computed stably.
    """

    def __init__(self, num_labels: int, pos_weight: Sequence[float] | None = None):
        super().__init__()
        self.register_buffer("pos_weight", _pos_weight_buffer(num_labels, pos_weight))

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(logits.float(), targets.float(), pos_weight=self.pos_weight)


class FocalLoss(nn.Module):
    """Binary focal loss per label (Lin et al., "Focal Loss for Dense Object Detection", 2017), mean-reduced.

    For logit ``x``, ``p = sigmoid(x)`` and target ``y``:

    ``loss = -[ y * a * w * (1 - p)**gamma * log(p) + (1 - y) * (1 - a) * p**gamma * log(1 - p) ]``

    with ``a = alpha`` (weight of the positive class; ``alpha=None`` means no class weighting,
    i.e. ``a = 1`` on positives AND ``1`` on negatives rather than Lin's ``1 - alpha``) and ``w`` the
    label's ``pos_weight`` (as in ``BCEWithLogitsLoss``). ``gamma=0, alpha=None`` is exactly
    :class:`WeightedBCEWithLogits`. Computed in float32 from log-sigmoids
    (``(1 - p)**gamma = exp(gamma * logsigmoid(-x))``), so it is stable and its gradient finite for
    any logit, also under bf16/fp16 autocast. Soft targets in ``[0, 1]`` are accepted.
    """

    def __init__(
        self, num_labels: int, pos_weight: Sequence[float] | None = None, gamma: float = 2.0, alpha: float | None = None
    ):
        super().__init__()
        if gamma < 0:
            raise ValueError(f"gamma must be >= 0; got {gamma}")
        if alpha is not None and not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1] or None; got {alpha}")
        self.gamma = float(gamma)
        self.alpha = None if alpha is None else float(alpha)
        self.register_buffer("pos_weight", _pos_weight_buffer(num_labels, pos_weight))

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        x, y = logits.float(), targets.float()
        log_p, log_not_p = F.logsigmoid(x), F.logsigmoid(-x)
        pos = self.pos_weight * log_p
        neg = log_not_p
        if self.gamma > 0:
            pos = pos * torch.exp(self.gamma * log_not_p)  # (1 - p) ** gamma
            neg = neg * torch.exp(self.gamma * log_p)  # p ** gamma
        if self.alpha is not None:
            pos, neg = self.alpha * pos, (1.0 - self.alpha) * neg
        return -(y * pos + (1.0 - y) * neg).mean()

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}, alpha={self.alpha}"


class AsymmetricLoss(nn.Module):
    """Asymmetric loss for multi-label classification (Ridnik et al., ICCV 2021), mean-reduced.

    With ``p = sigmoid(x)`` and the shifted probability ``p_m = max(p - clip, 0)`` for negatives:

    ``loss = -[ y * w * (1 - p)**gamma_pos * log(p) + (1 - y) * p_m**gamma_neg * log(1 - p_m) ]``

    (``w``: the label's ``pos_weight``; 1 by default). Easy negatives are down-weighted by
    ``gamma_neg`` and those with ``p <= clip`` are discarded entirely, which suits the many
    negatives of multi-label chest X-rays. The reference implementation
    (github.com/Alibaba-MIIL/ASL) sums over the batch; this one averages over all ``B * L``
    entries like the other losses here (a constant factor). The focusing weights are part of the
    graph (the reference's default), unless ``detach_focusing=True``.

    ``gamma_neg = gamma_pos = 0, clip = 0`` is exactly :class:`WeightedBCEWithLogits`. Computed in
    float32 from log-sigmoids (stable for any logit, gradients finite).
    """

    def __init__(
        self,
        num_labels: int,
        pos_weight: Sequence[float] | None = None,
        gamma_neg: float = 4.0,
        gamma_pos: float = 0.0,
        clip: float = 0.05,
        detach_focusing: bool = False,
    ):
        super().__init__()
        if gamma_neg < 0 or gamma_pos < 0:
            raise ValueError(f"gammas must be >= 0; got gamma_neg={gamma_neg}, gamma_pos={gamma_pos}")
        if not 0.0 <= clip < 1.0:
            raise ValueError(f"clip must be in [0, 1); got {clip}")
        self.gamma_neg, self.gamma_pos, self.clip = float(gamma_neg), float(gamma_pos), float(clip)
        self.detach_focusing = bool(detach_focusing)
        self.register_buffer("pos_weight", _pos_weight_buffer(num_labels, pos_weight))

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        x, y = logits.float(), targets.float()
        log_p, log_not_p = F.logsigmoid(x), F.logsigmoid(-x)
        pos = self.pos_weight * log_p
        if self.clip > 0:
            # 1 - p_m = min(1 - p + clip, 1) >= clip, so its log is finite.
            not_pm = torch.clamp(torch.sigmoid(-x) + self.clip, max=1.0)
            neg = torch.log(not_pm)
            p_m = 1.0 - not_pm
        else:
            neg = log_not_p
            p_m = torch.sigmoid(x)
        if self.gamma_pos > 0:
            w_pos = torch.exp(self.gamma_pos * log_not_p)  # (1 - p) ** gamma_pos
            pos = pos * (w_pos.detach() if self.detach_focusing else w_pos)
        if self.gamma_neg > 0:
            # p_m ** gamma_neg, with a zero base (p <= clip) giving 0 and no NaN/inf gradient.
            safe = torch.where(p_m > 0, p_m, torch.ones_like(p_m))
            w_neg = torch.where(p_m > 0, safe.pow(self.gamma_neg), torch.zeros_like(p_m))
            neg = neg * (w_neg.detach() if self.detach_focusing else w_neg)
        return -(y * pos + (1.0 - y) * neg).mean()

    def extra_repr(self) -> str:
        return f"gamma_neg={self.gamma_neg}, gamma_pos={self.gamma_pos}, clip={self.clip}"


#: Names accepted by :func:`build_loss`.
LOSSES: dict[str, type[nn.Module]] = {"bce": WeightedBCEWithLogits, "focal": FocalLoss, "asymmetric": AsymmetricLoss}


def build_loss(name: str, num_labels: int, pos_weight: Sequence[float] | None = None, **kwargs) -> nn.Module:
    """``bce`` | ``focal`` | ``asymmetric`` loss for ``(B, L)`` logits; ``kwargs`` go to the class.

    Example: ``build_loss("asymmetric", 15, None, gamma_neg=4, clip=0.05)``.
    """
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose from {sorted(LOSSES)}")
    if name == "bce" and kwargs:
        raise TypeError(f"the bce loss takes no options; got {sorted(kwargs)}")
    return LOSSES[name](num_labels, pos_weight, **kwargs)
