"""Batch augmentation/normalisation on the device: the per-sample path's operations and distributions."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as F

from cxr_lightning.data.gpu_augment import AugmentParams, BatchAugment, BatchNormalize, rotate_batch
from cxr_lightning.data.images import load_grey
from cxr_lightning.data.transforms import Augmentation, ImageTransform, draw_augmentation, normalization_stats

NIH_SAMPLE = Path(__file__).parent / "data" / "nih_sample" / "images"


def real_images(size: int) -> torch.Tensor:
    """The five real sample images resized like the cache: float ``(5, 1, S, S)`` and their uint8 quantisation."""
    images = [F.resize(load_grey(p), [size, size], antialias=True) for p in sorted(NIH_SAMPLE.glob("*.png"))]
    return torch.stack(images)


def ks_statistic(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov statistic."""
    grid = np.sort(np.concatenate([a, b]))
    cdf_a = np.searchsorted(np.sort(a), grid, side="right") / len(a)
    cdf_b = np.searchsorted(np.sort(b), grid, side="right") / len(b)
    return float(np.abs(cdf_a - cdf_b).max())


def ks_critical(n: int, m: int, alpha: float = 0.001) -> float:
    return math.sqrt(-0.5 * math.log(alpha / 2)) * math.sqrt((n + m) / (n * m))


@pytest.mark.parametrize(("channels", "normalization"), [(3, "imagenet"), (3, "beit"), (1, "imagenet_grey"), (1, "none")])
def test_batch_normalize_equals_image_transform_up_to_uint8_quantisation(channels, normalization):
    grey = real_images(48)
    cached = torch.round(grey * 255).to(torch.uint8)  # what the cache holds
    expected = torch.stack([ImageTransform(48, channels, normalization)(load_grey(p)) for p in sorted(NIH_SAMPLE.glob("*.png"))])
    out = BatchNormalize(channels, normalization)(cached)
    assert out.shape == expected.shape == (5, channels, 48, 48) and out.dtype == torch.float32
    _, std = normalization_stats(normalization, channels)
    assert (out - expected).abs().max().item() <= 0.5 / 255 / min(std) + 1e-5
    # float input in [0, 1] is normalised without quantisation
    assert torch.allclose(BatchNormalize(channels, normalization)(grey), expected, atol=1e-5)


def test_augmentation_off_equals_normalize():
    cached = torch.randint(0, 256, (4, 1, 20, 20), dtype=torch.uint8)
    off = BatchAugment(0, 0, 0, channels=3, normalization="imagenet")
    assert torch.allclose(off(cached), BatchNormalize(3, "imagenet")(cached), atol=1e-6)


def per_sample(image: torch.Tensor, params: AugmentParams, i: int) -> torch.Tensor:
    """torchvision's per-image ops, as Augmentation applies them, with sample i's parameters."""
    out = F.rotate(image, params.angle[i].item(), interpolation=InterpolationMode.BILINEAR, fill=0.0)
    ops = [(F.adjust_brightness, params.brightness[i].item()), (F.adjust_contrast, params.contrast[i].item())]
    for op, factor in ops[::-1] if params.contrast_first[i] else ops:
        out = op(out, factor)
    return out


def test_augment_applies_torchvisions_operations_per_sample():
    generator = torch.Generator().manual_seed(1)
    grey = torch.cat([real_images(40), torch.rand(3, 1, 40, 40, generator=generator)])
    aug = BatchAugment(10, 0.1, 0.1, channels=1, normalization="none")
    params = aug.sample_params(len(grey), generator=generator)
    assert params.contrast_first.any() and (~params.contrast_first).any()
    out = aug.augment(grey, params)
    for i in range(len(grey)):
        assert torch.allclose(out[i], per_sample(grey[i], params, i), atol=2e-5), i
    # non-square images rotate like torchvision too
    wide = torch.rand(2, 1, 20, 31, generator=generator)
    angles = torch.tensor([7.0, -9.5])
    rotated = rotate_batch(wide, angles)
    for i in range(2):
        tv = F.rotate(wide[i], angles[i].item(), interpolation=InterpolationMode.BILINEAR, fill=0.0)
        assert torch.allclose(rotated[i], tv, atol=1e-5)


@pytest.mark.parametrize("config", [(10, 0.1, 0.1), (0, 0.1, 0.1), (10, 0, 0.2), (5, 0.3, 0)])
def test_seeded_params_reproduce_the_per_sample_augmentation(config):
    """AugmentParams.from_seeds draws in Augmentation's exact sequence: identical outputs for identical seeds."""
    grey = real_images(40)
    seeds = [11, 12, 13, 2**40 + 5, 99]
    params = AugmentParams.from_seeds(seeds, *config)
    out = BatchAugment(*config, channels=1, normalization="none")(grey, params=params.as_tensor())
    for image, seed, result in zip(grey, seeds, out):
        expected = Augmentation(*config)(image.clone(), torch.Generator().manual_seed(seed)).clamp(0, 1)
        assert torch.allclose(result, expected, atol=2e-5), (config, seed)
    with pytest.raises(ValueError, match="parameter rows"):
        BatchAugment(*config)(torch.zeros(2, 1, 8, 8, dtype=torch.uint8), params=params.as_tensor())


@pytest.mark.parametrize("config", [(10, 0.1, 0.1, 0.5), (0, 0, 0, 0.5)])
def test_seeded_flips_reproduce_the_per_sample_augmentation(config):
    """With horizontal_flip 0.5 the batch path flips exactly the samples the per-sample path flips, before rotating."""
    grey = torch.cat([real_images(40), torch.rand(7, 1, 40, 40, generator=torch.Generator().manual_seed(3))])
    seeds = [11, 12, 13, 2**40 + 5, 99, 0, 1, 2, 3, 4, 5, 6]
    params = AugmentParams.from_seeds(seeds, *config)
    assert params.flip.any() and (~params.flip).any()  # some flipped, some not
    assert torch.equal(AugmentParams.from_tensor(params.as_tensor()).flip, params.flip)  # the table carries the flip
    out = BatchAugment(*config[:3], channels=1, normalization="none", horizontal_flip=config[3])(grey, params=params.as_tensor())
    for image, seed, result, flipped in zip(grey, seeds, out, params.flip.tolist()):
        expected = Augmentation(*config)(image.clone(), torch.Generator().manual_seed(seed)).clamp(0, 1)
        if config[:3] == (0, 0, 0):  # a flip alone moves pixels, nothing is resampled: bit-identical
            assert torch.equal(result, expected) and torch.equal(result, image.flip(-1) if flipped else image), seed
        else:
            assert torch.allclose(result, expected, atol=2e-5), (config, seed)
    # Flip, then rotate: a flipped sample equals the unflipped augmentation of the mirrored image
    # (rotating first would mirror the angle too, a different image).
    augmentation = Augmentation(*config)
    i = params.flip.tolist().index(True)
    drawn = draw_augmentation(torch.Generator().manual_seed(seeds[i]), augmentation)
    assert drawn.flip
    mirrored_first = augmentation.apply(grey[i].flip(-1), replace(drawn, flip=False))
    assert torch.equal(augmentation.apply(grey[i].clone(), drawn), mirrored_first)
    if config[0]:
        assert not torch.allclose(augmentation.apply(grey[i], replace(drawn, flip=False)).flip(-1), mirrored_first, atol=1e-3)


def test_draws_are_independent_per_sample_and_reproducible():
    batch = torch.full((64, 1, 16, 16), 128, dtype=torch.uint8)
    batch[:, :, 4:12, 6:10] = 230
    aug = BatchAugment(10, 0.1, 0.1)
    a = aug(batch, torch.Generator().manual_seed(5))
    b = aug(batch, torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and a.shape == (64, 3, 16, 16) and a.dtype == torch.float32
    assert len({round(x, 6) for x in a.mean(dim=(1, 2, 3)).tolist()}) == 64  # each sample its own draws
    assert not torch.equal(a, aug(batch, torch.Generator().manual_seed(6)))
    # a default generator given at construction
    seeded = BatchAugment(10, 0.1, 0.1, generator=torch.Generator().manual_seed(5))
    assert torch.equal(seeded(batch), a)
    # uint8 and the same values as float give the same result
    assert torch.allclose(aug(batch.float() / 255, torch.Generator().manual_seed(5)), a, atol=1e-5)


def test_parameter_ranges_match_the_per_sample_draws():
    params = BatchAugment(10, 0.1, 0.1).sample_params(20_000, generator=torch.Generator().manual_seed(0))
    for values, low, high in ((params.angle, -10, 10), (params.brightness, 0.9, 1.1), (params.contrast, 0.9, 1.1)):
        assert low <= values.min().item() < low + 0.01 and high - 0.01 < values.max().item() <= high
        assert values.mean().item() == pytest.approx((low + high) / 2, abs=0.02 * (high - low))
        quartiles = torch.quantile(values, torch.tensor([0.25, 0.75])).tolist()
        assert quartiles == pytest.approx([low + (high - low) / 4, low + 3 * (high - low) / 4], abs=0.02 * (high - low))
    assert params.contrast_first.float().mean().item() == pytest.approx(0.5, abs=0.02)


def test_brightness_contrast_and_rotation_ranges_like_the_papers():
    """The checks of test_datamodule.py::test_augmentation_matches_the_papers_ranges, on batches."""
    generator = torch.Generator().manual_seed(0)
    flat = torch.full((400, 1, 8, 8), 0.5)
    ratios = BatchAugment(0, 0.1, 0, channels=1, normalization="none")(flat, generator).mean(dim=(1, 2, 3)) / 0.5
    assert 0.9 <= ratios.min() < 0.92 and 1.08 < ratios.max() <= 1.1
    ramp = torch.linspace(0, 1, 64).view(1, 1, 8, 8).expand(400, -1, -1, -1)
    spreads = BatchAugment(0, 0, 0.1, channels=1, normalization="none")(ramp, generator).flatten(1).std(dim=1) / ramp[0].std()
    assert 0.9 <= spreads.min() < 0.92 and 1.08 < spreads.max() <= 1.1
    bar = torch.zeros(200, 1, 65, 65)
    bar[:, 0, 32, 40:64] = 1.0
    out = BatchAugment(10, 0, 0, channels=1, normalization="none")(bar, generator)[:, 0]
    angles = []
    for image in out:
        ys, xs = torch.nonzero(image > 0.3, as_tuple=True)
        angles.append(math.degrees(math.atan2(-(ys.float().mean() - 32), xs.float().mean() - 32)))
    assert max(abs(a) for a in angles) <= 10.5 and max(angles) > 8 and min(angles) < -8


def test_output_statistics_match_the_per_sample_augmentation():
    """KS tests on each output's mean, std and bar angle: BatchAugment vs Augmentation on the same images."""
    grey = real_images(24)[[0, 1, 3]]  # two RGBA-sourced and one grey real image
    draws = 200
    generator = torch.Generator().manual_seed(0)
    batch = BatchAugment(10, 0.1, 0.1, channels=1, normalization="none")
    stats_batch, stats_single = [], []
    for image in grey:
        quantised = torch.round(image * 255).to(torch.uint8)
        out_b = batch(quantised.expand(draws, -1, -1, -1), generator)
        out_s = torch.stack([Augmentation(10, 0.1, 0.1)(image, generator) for _ in range(draws)])
        stats_batch.append((out_b.mean(dim=(1, 2, 3)).numpy(), out_b.flatten(1).std(dim=1).numpy()))
        stats_single.append((out_s.mean(dim=(1, 2, 3)).numpy(), out_s.flatten(1).std(dim=1).numpy()))
    critical = ks_critical(draws, draws)
    for (mean_b, std_b), (mean_s, std_s), image in zip(stats_batch, stats_single, grey):
        assert ks_statistic(mean_b, mean_s) < critical and ks_statistic(std_b, std_s) < critical
        # the augmented statistics really vary (the test would pass trivially otherwise)
        assert mean_s.std() > 0.01 * image.mean().item()
    # pooled over images, the relative change of the mean is spread alike (same quantiles)
    rel_b = np.concatenate([m / g.mean().item() for (m, _), g in zip(stats_batch, grey)])
    rel_s = np.concatenate([m / g.mean().item() for (m, _), g in zip(stats_single, grey)])
    np.testing.assert_allclose(np.quantile(rel_b, [0.05, 0.25, 0.5, 0.75, 0.95]), np.quantile(rel_s, [0.05, 0.25, 0.5, 0.75, 0.95]), atol=0.02)


def test_shape_and_dtype_errors():
    with pytest.raises(ValueError, match=r"\(B, 1, S, S\)"):
        BatchNormalize()(torch.zeros(2, 3, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"\(B, 1, S, S\)"):
        BatchAugment()(torch.zeros(1, 8, 8, dtype=torch.uint8))
    with pytest.raises(TypeError, match="uint8 or floating"):
        BatchNormalize()(torch.zeros(2, 1, 8, 8, dtype=torch.int32))
    with pytest.raises(ValueError, match="channels must be 1 or 3"):
        BatchNormalize(2)
    with pytest.raises(ValueError, match=r"must be \(B, 5\), got \(2, 4\)"):  # a table without the flip column
        BatchAugment()(torch.zeros(2, 1, 8, 8, dtype=torch.uint8), params=torch.zeros(2, 4))
