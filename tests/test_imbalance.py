"""Imbalance tools: focal and asymmetric losses (cxr_lightning.models.losses) and the rare-finding sampler."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from cxr_lightning.data.labels import LABELS, NO_FINDING
from cxr_lightning.data.sampling import RareFindingSampler, rare_finding_weights
from cxr_lightning.models.losses import AsymmetricLoss, FocalLoss, WeightedBCEWithLogits, build_loss

NUM_LABELS = 5


def batch(seed=0, scale=3.0, n=64):
    g = torch.Generator().manual_seed(seed)
    logits = scale * torch.randn(n, NUM_LABELS, generator=g)
    targets = (torch.rand(n, NUM_LABELS, generator=g) < 0.3).float()
    return logits, targets


# --------------------------------------------------------------------------------------------------
# Losses
# --------------------------------------------------------------------------------------------------


def test_focal_with_gamma_zero_equals_bce():
    logits, targets = batch()
    pos_weight = [1.0, 2.0, 0.5, 3.0, 1.5]
    bce = F.binary_cross_entropy_with_logits(logits, targets)
    torch.testing.assert_close(FocalLoss(NUM_LABELS, gamma=0.0)(logits, targets), bce)
    weighted = WeightedBCEWithLogits(NUM_LABELS, pos_weight)(logits, targets)
    torch.testing.assert_close(FocalLoss(NUM_LABELS, pos_weight, gamma=0.0)(logits, targets), weighted)


def test_focal_matches_lin_et_al_formula():
    logits, targets = batch(1)
    p = torch.sigmoid(logits.double())
    t = targets.double()
    gamma, alpha = 2.0, 0.25
    p_t = p * t + (1 - p) * (1 - t)
    alpha_t = alpha * t + (1 - alpha) * (1 - t)
    expected = (-alpha_t * (1 - p_t) ** gamma * torch.log(p_t)).mean()
    got = FocalLoss(NUM_LABELS, gamma=gamma, alpha=alpha)(logits, targets)
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-7)
    # Focusing down-weights easy examples: the loss is below BCE.
    assert FocalLoss(NUM_LABELS, gamma=2.0)(logits, targets) < F.binary_cross_entropy_with_logits(logits, targets)


def test_asymmetric_with_no_focusing_and_no_clip_equals_bce():
    logits, targets = batch(2)
    asl = AsymmetricLoss(NUM_LABELS, gamma_neg=0, gamma_pos=0, clip=0)
    torch.testing.assert_close(asl(logits, targets), F.binary_cross_entropy_with_logits(logits, targets))
    pos_weight = [2.0] * NUM_LABELS
    torch.testing.assert_close(
        AsymmetricLoss(NUM_LABELS, pos_weight, gamma_neg=0, gamma_pos=0, clip=0)(logits, targets),
        WeightedBCEWithLogits(NUM_LABELS, pos_weight)(logits, targets),
    )


def reference_asl(x, y, gamma_neg, gamma_pos, clip, eps=1e-8):
    """Ridnik et al. (2021) as written in their paper/reference code, mean instead of sum."""
    p = torch.sigmoid(x.double())
    y = y.double()
    not_p = (1 - p + clip).clamp(max=1) if clip > 0 else 1 - p
    loss = y * torch.log(p.clamp(min=eps)) + (1 - y) * torch.log(not_p.clamp(min=eps))
    pt = p * y + not_p * (1 - y)
    loss = loss * torch.pow(1 - pt, gamma_pos * y + gamma_neg * (1 - y))
    return -loss.mean()


@pytest.mark.parametrize("gamma_neg,gamma_pos,clip", [(4, 0, 0.05), (4, 1, 0.05), (2, 0, 0.0)])
def test_asymmetric_matches_reference_formula(gamma_neg, gamma_pos, clip):
    logits, targets = batch(3, scale=2.0)
    got = AsymmetricLoss(NUM_LABELS, gamma_neg=gamma_neg, gamma_pos=gamma_pos, clip=clip)(logits, targets)
    torch.testing.assert_close(got.double(), reference_asl(logits, targets, gamma_neg, gamma_pos, clip), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(
    "loss",
    [
        FocalLoss(NUM_LABELS),
        FocalLoss(NUM_LABELS, [2.0] * NUM_LABELS, gamma=0.5, alpha=0.25),
        AsymmetricLoss(NUM_LABELS),
        AsymmetricLoss(NUM_LABELS, gamma_neg=0.5, gamma_pos=0.5, clip=0.0),
    ],
)
def test_gradients_finite_even_for_extreme_logits(loss):
    logits = torch.tensor([[-200.0, -30.0, 0.0, 30.0, 200.0]] * 2, requires_grad=True)
    targets = torch.tensor([[0.0, 1.0, 0.0, 1.0, 0.0], [1.0, 0.0, 1.0, 0.0, 1.0]])
    value = loss(logits, targets)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("name", ["bce", "focal", "asymmetric"])
def test_bf16_inputs_are_computed_in_float32(name):
    loss = build_loss(name, NUM_LABELS, None)
    logits, targets = batch(4)
    low = logits.to(torch.bfloat16).requires_grad_()
    value = loss(low, targets.to(torch.bfloat16))
    assert value.dtype == torch.float32
    # Same as feeding the bf16 values upcast to float32 by hand.
    torch.testing.assert_close(value, loss(low.detach().float(), targets))
    value.backward()
    assert low.grad.dtype == torch.bfloat16 and torch.isfinite(low.grad.float()).all()


def test_build_loss_names_and_constructor_shape():
    assert isinstance(build_loss("bce", 3, [1.0, 2.0, 3.0]), WeightedBCEWithLogits)
    focal = build_loss("focal", 3, [1.0, 2.0, 3.0], gamma=1.0)
    assert isinstance(focal, FocalLoss) and focal.gamma == 1.0
    torch.testing.assert_close(focal.pos_weight, torch.tensor([1.0, 2.0, 3.0]))
    assert "pos_weight" in dict(focal.named_buffers())
    asl = build_loss("asymmetric", 3, None, clip=0.1)
    assert isinstance(asl, AsymmetricLoss) and asl.clip == 0.1
    with pytest.raises(ValueError, match="unknown loss"):
        build_loss("hinge", 3)
    with pytest.raises(ValueError, match="pos_weight"):
        FocalLoss(3, [1.0, 2.0])


# --------------------------------------------------------------------------------------------------
# Sampling
# --------------------------------------------------------------------------------------------------


def nih_like_labels(n=6000, seed=0):
    """15 NIH columns with NIH-like prevalences; No Finding = no other positive."""
    rng = np.random.default_rng(seed)
    prevalence = np.array([0.10, 0.025, 0.04, 0.02, 0.12, 0.022, 0.015, 0.002, 0.18, 0.05, 0.0, 0.056, 0.03, 0.013, 0.047])
    y = (rng.random((n, len(LABELS))) < prevalence).astype(np.uint8)
    nf = LABELS.index(NO_FINDING)
    y[:, nf] = (y.sum(axis=1) == 0).astype(np.uint8)
    return y


def test_rare_finding_weights_definition():
    y = np.array(
        [
            [1, 0, 0],  # common finding A (4 of 8)
            [1, 0, 0],
            [1, 0, 0],
            [1, 1, 0],  # A and rare B (1 of 8): B's weight
            [0, 0, 1],  # No Finding
            [0, 0, 1],
            [0, 0, 1],
            [0, 0, 0],  # nothing at all: also the base weight
        ],
        dtype=np.uint8,
    )
    w = rare_finding_weights(y, power="inverse", label_names=["A", "B", NO_FINDING])
    raw = np.array([2, 2, 2, 8, 2, 2, 2, 2], dtype=float)  # A: 8/4; B: 8/1; base: 8/4 images without findings
    np.testing.assert_allclose(w, raw / raw.mean())
    w_sqrt = rare_finding_weights(y, power=0.5, label_names=["A", "B", NO_FINDING])
    np.testing.assert_allclose(w_sqrt, np.sqrt(raw) / np.sqrt(raw).mean())
    capped = rare_finding_weights(y, power="inverse", label_names=["A", "B", NO_FINDING], base_weight=1.0, max_ratio=3.0)
    np.testing.assert_allclose(capped * 1.0 / capped[4], [2, 2, 2, 3, 1, 1, 1, 1])
    np.testing.assert_allclose(rare_finding_weights(y, power=0, label_names=["A", "B", NO_FINDING]), np.ones(8))


def test_rare_images_are_drawn_more_often_than_their_frequency():
    y = nih_like_labels()
    hernia = y[:, LABELS.index("Hernia")].astype(bool)
    sampler = RareFindingSampler.from_labels(y, power=0.5, seed=3)
    assert len(sampler) == len(y)
    drawn = np.array(list(sampler)) % len(y)  # repeats come tagged as index + k * N
    share = hernia[drawn].mean()
    assert share > 5 * hernia.mean(), (share, hernia.mean())
    # And No Finding images, the majority, are drawn less often than their frequency.
    nf = y[:, LABELS.index(NO_FINDING)].astype(bool)
    assert nf[drawn].mean() < nf.mean()


def test_sampler_is_deterministic_per_seed_and_epoch():
    w = rare_finding_weights(nih_like_labels(1000))
    a, b = RareFindingSampler(w, seed=7), RareFindingSampler(w, seed=7)
    assert list(a) == list(b)
    first = list(a)
    a.set_epoch(1)
    b.set_epoch(1)
    assert list(a) == list(b) != first
    a.set_epoch(0)
    assert list(a) == first
    assert list(RareFindingSampler(w, seed=8)) != first
    smaller = RareFindingSampler(w, num_samples=100, seed=7)
    assert len(smaller) == 100 == len(list(smaller))


def test_two_ranks_partition_the_same_global_draw():
    w = rare_finding_weights(nih_like_labels(1001))
    ranks = [RareFindingSampler(w, seed=5, num_replicas=2, rank=r) for r in (0, 1)]
    for epoch in (0, 3):
        for s in ranks:
            s.set_epoch(epoch)
        shards = [list(s) for s in ranks]
        assert len(shards[0]) == len(shards[1]) == len(ranks[0]) == 501  # ceil(1001 / 2)
        merged = [None] * (2 * 501)
        merged[0::2], merged[1::2] = shards
        single = RareFindingSampler(w, num_samples=1002, seed=5)
        single.set_epoch(epoch)
        assert merged == list(single)
        assert [i % 1001 for i in merged] == ranks[0].global_indices().tolist()
    # Without replacement the ranks' shards are disjoint.
    nr = [RareFindingSampler(w, seed=1, replacement=False, num_replicas=2, rank=r, num_samples=600) for r in (0, 1)]
    a, b = list(nr[0]), list(nr[1])
    assert len(a) == len(b) == 300 and not set(a) & set(b) and len(set(a)) == 300


def test_repeated_draws_are_tagged_so_each_gets_its_own_augmentation(tmp_path):
    from cxr_lightning.data.dataset import ChestXrayDataset
    from cxr_lightning.data.loading import tag_repeats
    from cxr_lightning.data.transforms import Augmentation, ImageTransform

    assert tag_repeats(torch.tensor([3, 1, 3, 0, 3, 1]), 10).tolist() == [3, 1, 13, 0, 23, 11]
    w = np.array([50.0, 1.0, 1.0])  # image 0 is drawn again and again
    drawn = list(RareFindingSampler(w, seed=0, num_samples=30))
    assert sorted(i % 3 for i in drawn) == sorted(RareFindingSampler(w, seed=0, num_samples=30).global_indices().tolist())
    assert len(set(drawn)) == len(drawn)  # no two draws share an index, hence a seed
    from PIL import Image

    for name in "abc":
        Image.fromarray((np.arange(32 * 32).reshape(32, 32) % 256).astype(np.uint8)).save(tmp_path / f"{name}.png")
    transform = ImageTransform(32, 3, "imagenet", Augmentation(rotation_degrees=10, brightness=0.1, contrast=0.1))
    labels = torch.eye(3, 15)
    dataset = ChestXrayDataset([tmp_path / f"{n}.png" for n in "abc"], labels, torch.zeros(3, 5), transform)
    first, again = dataset[0], dataset[3]  # position 0, its first and its second draw
    assert again["index"] == 0 and again["name"] == "a.png" and torch.equal(again["labels"], labels[0])
    assert not torch.equal(first["image"], again["image"])
    assert torch.equal(dataset[3]["image"], again["image"])  # still deterministic


def test_sampler_skip_and_epoch_tensor():
    w = np.ones(50)
    epoch = torch.zeros((), dtype=torch.int64)
    sampler = RareFindingSampler(w, seed=0, epoch_tensor=epoch)
    full = list(sampler)
    sampler.skip(20)
    assert list(sampler) == full[20:]
    assert list(sampler) == full  # the skip applies once
    sampler.set_epoch(4)
    assert int(epoch) == 4
    with pytest.raises(ValueError):
        RareFindingSampler(np.zeros(5))
