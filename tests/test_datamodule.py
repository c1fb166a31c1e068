"""ChestXrayDataModule: batches, normalisation, augmentation, metadata encoding and class weights."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from torchvision.transforms.v2 import functional as F

from cxr_lightning.data import ChestXrayDataModule, SyntheticData
from cxr_lightning.data.encoding import MetadataEncoder, positive_class_weights
from cxr_lightning.data.gpu_augment import AugmentParams, BatchNormalize
from cxr_lightning.data.images import load_grey
from cxr_lightning.data.labels import FINDINGS, LABELS
from cxr_lightning.data.options import ImageOptions, LoadingOptions, SplitOptions
from cxr_lightning.data.transforms import Augmentation, ImageTransform, draw_augmentation

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def sample_module(root, split: dict | None = None, images: dict | None = None) -> ChestXrayDataModule:
    """The sample's module: a patient split, 64 px, small batches; ``split``/``images`` change some of those options."""
    return ChestXrayDataModule(data_root=root, split={"name": "patient", "fractions": (0.6, 0.2, 0.2), "seed": 0, **(split or {})},
                               images={"size": 64, **(images or {})}, loading={"batch_size": 4, "num_workers": 0})  # fmt: skip


def test_batches_from_real_nih_images(real_sample_root):
    dm = sample_module(real_sample_root)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (3, 3, 64, 64) and batch["image"].dtype == torch.float32
    assert batch["metadata"].shape == (3, 5) and batch["labels"].shape == (3, 15) and batch["labels"].dtype == torch.float32
    # Each image's labels and metadata are its own row of the real CSV.
    csv = pd.read_csv(real_sample_root / "Data_Entry_2017_v2020.csv").set_index("Image Index")
    for name, labels, metadata in zip(batch["name"], batch["labels"], batch["metadata"]):
        expected = set(csv.loc[name, "Finding Labels"].split("|"))
        assert {LABELS[i] for i in np.flatnonzero(labels.numpy())} == expected
        assert metadata[1:].tolist() == [csv.loc[name, "Patient Gender"] == "M", csv.loc[name, "Patient Gender"] == "F",
                                         csv.loc[name, "View Position"] == "PA", csv.loc[name, "View Position"] == "AP"]  # fmt: skip


def test_eval_images_are_resized_replicated_and_imagenet_normalised(real_sample_root):
    dm = sample_module(real_sample_root)
    dm.setup("validate")
    batch = next(iter(dm.val_dataloader()))
    name = batch["name"][0]
    grey = F.resize(load_grey(real_sample_root / "images" / name), [64, 64], antialias=True)
    expected = (grey.expand(3, -1, -1) - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) / torch.tensor(IMAGENET_STD).view(3, 1, 1)
    assert torch.allclose(batch["image"][0], expected, atol=1e-6)
    # validation is not augmented: the same batch twice
    assert torch.equal(next(iter(dm.val_dataloader()))["image"], batch["image"])


def test_only_the_training_split_is_augmented_and_augmentation_is_seeded_per_sample(real_sample_root):
    dm = sample_module(real_sample_root, split={"fractions": (0.2, 0.2, 0.6)})
    dm.setup("fit")
    train = dm.train_dataloader().dataset
    first = train[0]["image"]
    assert torch.equal(train[0]["image"], first)  # same seed, epoch and index: same augmentation
    train.epoch.fill_(1)
    assert not torch.equal(train[0]["image"], first)  # a new epoch draws anew
    plain = ImageTransform(64, 3, "imagenet")(load_grey(train.paths[0]))
    assert not torch.allclose(first, plain, atol=1e-3)
    test_ds = dm.dataset("test")
    assert torch.equal(test_ds[0]["image"], ImageTransform(64, 3, "imagenet")(load_grey(test_ds.paths[0])))


def test_beit_normalisation_and_one_channel(real_sample_root):
    dm = sample_module(real_sample_root, images={"normalization": "beit", "size": 32})
    image = dm.dataset("val")[0]["image"]
    assert image.shape == (3, 32, 32) and -1.0 <= image.min() and image.max() <= 1.0
    grey = sample_module(real_sample_root, images={"normalization": "imagenet_grey", "channels": 1, "size": 32}).dataset("val")[0]["image"]
    assert grey.shape == (1, 32, 32)
    assert torch.allclose(grey[0] * 0.226 + 0.449, image[0] * 0.5 + 0.5, atol=1e-5)


def test_augmentation_matches_the_papers_ranges():
    generator = torch.Generator().manual_seed(0)
    flat = torch.full((1, 8, 8), 0.5)
    ratios = [Augmentation(0, 0.1, 0)(flat, generator).mean().item() / 0.5 for _ in range(400)]
    assert 0.9 <= min(ratios) < 0.92 and 1.08 < max(ratios) <= 1.1
    ramp = torch.linspace(0, 1, 64).view(1, 8, 8)
    spreads = [Augmentation(0, 0, 0.1)(ramp, generator).std().item() / ramp.std().item() for _ in range(400)]
    assert 0.9 <= min(spreads) < 0.92 and 1.08 < max(spreads) <= 1.1
    # rotation: the angle of a bright bar from the centre stays within 10 degrees
    bar = torch.zeros(1, 65, 65)
    bar[0, 32, 40:64] = 1.0
    angles = []
    for _ in range(200):
        out = Augmentation(10, 0, 0)(bar, generator)[0]
        ys, xs = torch.nonzero(out > 0.3, as_tuple=True)
        angles.append(math.degrees(math.atan2(-(ys.float().mean() - 32), xs.float().mean() - 32)))
    assert max(abs(a) for a in angles) <= 10.5 and max(angles) > 8 and min(angles) < -8


#: draw_augmentation's draws (and the generator's next number) for seeds 0, 7 and 2**40 + 5, recorded
#: before the flip existed: every seeded run without flips must keep drawing exactly these.
DRAWS_BEFORE_FLIPS = {
    (10, 0.1, 0.1): [
        ((-0.07486820220947266, 0.9264060974121093, 0.9176954865455628, True), 0.30742281675338745),
        ((0.6984508037567139, 1.031842339038849, 1.0313780546188354, False), 0.23276156187057495),
        ((6.605037450790405, 1.0814939379692077, 1.0639854073524475, False), 0.9201034307479858),
    ],
    (0, 0.1, 0.1): [
        ((0.0, 1.0536443591117859, 0.9176954865455628, False), 0.13203048706054688),
        ((0.0, 1.031842339038849, 0.9397606372833252, True), 0.6568902730941772),
        ((0.0, 1.0814939379692077, 0.9252221822738648, True), 0.8199270367622375),
    ],
    (5, 0.3, 0): [
        ((-0.03743410110473633, 0.7530864596366882, 1.0, True), 0.13203048706054688),
        ((0.34922540187835693, 1.0955270171165465, 1.0, False), 0.6568902730941772),
        ((3.3025187253952026, 1.2444818139076232, 1.0, False), 0.8199270367622375),
    ],
}


@pytest.mark.parametrize("config", list(DRAWS_BEFORE_FLIPS))
def test_runs_without_flips_draw_bit_for_bit_as_before_and_the_flip_is_drawn_last(config):
    for seed, (before, next_number) in zip((0, 7, 2**40 + 5), DRAWS_BEFORE_FLIPS[config]):
        generator = torch.Generator().manual_seed(seed)
        drawn = draw_augmentation(generator, Augmentation(*config))
        assert (drawn.angle, drawn.brightness, drawn.contrast, drawn.contrast_first, drawn.flip) == (*before, False)
        assert torch.rand((), generator=generator).item() == next_number  # no extra draw consumed
        # With flips on, the same numbers come first and the flip is the next one compared with p.
        flipping = draw_augmentation(torch.Generator().manual_seed(seed), Augmentation(*config, horizontal_flip=0.5))
        assert (flipping.angle, flipping.brightness, flipping.contrast, flipping.contrast_first) == before
        assert flipping.flip == (next_number < 0.5)
    always = [draw_augmentation(torch.Generator().manual_seed(s), Augmentation(*config, horizontal_flip=1.0)).flip for s in range(50)]
    assert all(always)


def test_horizontal_flip_one_flips_every_training_image_on_both_paths(real_sample_root):
    """Flips alone (no rotation or jitter): the training image is the plain one mirrored, exactly."""
    flip_only = {"rotation_degrees": 0, "brightness": 0, "contrast": 0, "horizontal_flip": 1.0}
    dm = ChestXrayDataModule(data_root=real_sample_root, split={"name": "patient", "fractions": (0.6, 0.2, 0.2), "seed": 0},
                             images={"size": 64}, loading={"batch_size": 4, "num_workers": 0}, augmentation=flip_only)  # fmt: skip
    dm.setup("fit")
    train = dm.train_dataloader().dataset
    for i in range(len(train)):
        plain = ImageTransform(64, 3, "imagenet")(load_grey(train.paths[i]))
        assert not torch.equal(plain, plain.flip(-1))  # the image is not symmetric: a flip shows
        assert torch.equal(train[i]["image"], plain.flip(-1)), train.paths[i]
    # The device path of cached uint8 batches gets the same option: its flip table is applied.
    cached = torch.randint(0, 256, (3, 1, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    table = AugmentParams.from_seeds([1, 2, 3], 0, 0, 0, horizontal_flip=1.0).as_tensor()
    out = dm.on_after_batch_transfer({"image": cached.clone(), "augment": table}, 0)["image"]
    assert torch.equal(out, BatchNormalize(3, "imagenet")(cached.flip(-1)))


def test_image_transform_validates_channels():
    with pytest.raises(ValueError, match="channels must be 1 or 3"):
        ImageTransform(32, 2, "imagenet")


def test_metadata_encodings():
    frame = pd.DataFrame({"age": [20.0, 40.0, np.nan, 150.0], "sex": ["M", "F", "", "F"], "view": ["PA", "AP", "AP", ""]})
    train = frame.iloc[:2]
    onehot = MetadataEncoder("onehot").fit(train)
    assert onehot.age_mean == 30 and onehot.age_std == pytest.approx(np.std([20, 40], ddof=1))
    enc = onehot.encode(frame)
    assert enc.shape == (4, 5) and enc.dtype == np.float32
    assert enc[:, 1:].tolist() == [[1, 0, 1, 0], [0, 1, 0, 1], [0, 0, 0, 1], [0, 1, 0, 0]]
    assert enc[2, 0] == 0.0  # missing age -> train mean
    assert MetadataEncoder("code").fit(train).encode(frame)[:, 1:].tolist() == [[1, 0], [0, 1], [0, 1], [0, 0]]
    cnn = MetadataEncoder("cnn").fit(train).encode(frame)
    np.testing.assert_allclose(cnn, [[0.2, 0, 0], [0.4, 1, 1], [0.3, 0.5, 1], [1.0, 1, 0]], rtol=1e-6)


def test_positive_class_weights_on_the_paper_split():
    dm = ChestXrayDataModule(data_root="does-not-exist", split={"name": "paper"}, labels={"class_weights": "log"})
    counts = np.asarray(dm.train_label_counts)
    weights = np.asarray(dm.pos_weight)
    np.testing.assert_allclose(weights, np.minimum(np.log(73_633 / counts), 20), rtol=1e-5)
    assert weights[LABELS.index("No Finding")] == pytest.approx(0.54, abs=0.01)
    assert weights[LABELS.index("Hernia")] == pytest.approx(6.4, abs=0.1)
    beit = positive_class_weights(counts, 73_633, "beit_log")
    assert beit[LABELS.index("No Finding")] == pytest.approx(2.1, abs=0.05) and beit[LABELS.index("Hernia")] == pytest.approx(46.6, abs=0.1)
    linear = positive_class_weights(counts, 73_633, "linear")
    np.testing.assert_allclose(linear, (73_633 - counts) / counts, rtol=1e-6)
    assert positive_class_weights(counts, 73_633, "none") is None
    with pytest.warns(UserWarning, match=r"no positive training image for \['b'\]"):
        assert np.isfinite(positive_class_weights(np.array([3, 0]), 10, "linear", ("a", "b"))).all()


def test_findings_only_and_linked_values():
    dm = ChestXrayDataModule(data_root="does-not-exist", labels={"include_no_finding": False}, metadata={"encoding": "code"})
    assert dm.label_names == list(FINDINGS) and dm.num_labels == 14 and dm.metadata_dim == 3
    state = dm.state_dict()
    assert state["label_names"] == list(FINDINGS) and state["normalization"]["mean"] == list(IMAGENET_MEAN)
    assert 40 < state["metadata_encoder"]["age_mean"] < 50


def test_missing_images_say_how_to_get_them(tmp_path):
    dm = ChestXrayDataModule(data_root=tmp_path / "nih", split={"name": "paper"}, loading={"num_workers": 0})
    with pytest.raises(FileNotFoundError, match=r"73,633 of 73,633 train images are missing(.|\n)*cxr-lightning data download --data_root"):
        dm.setup("fit")


def test_synthetic_dataset_is_generated_when_missing_and_loads_with_workers(tmp_path):
    root = tmp_path / "demo"
    dm = ChestXrayDataModule(data_root=root, split=SplitOptions(name="official", val_fraction=0.2, seed=0), images=ImageOptions(size=32),
                             loading=LoadingOptions(batch_size=8, num_workers=2), synthetic=SyntheticData(num_images=80, image_size=32, seed=1))  # fmt: skip
    dm.prepare_data()
    assert (root / "Data_Entry_2017_v2020.csv").is_file() and len(list((root / "images").glob("*.png"))) == 80
    dm.setup("fit")
    seen = 0
    for batch in dm.train_dataloader():
        assert batch["image"].shape[1:] == (3, 32, 32)
        seen += len(batch["name"])
    assert seen == len(dm.dataset("train"))
    sizes = [len(dm.dataset(p)) for p in ("train", "val", "test")]
    assert sum(sizes) == 80 and min(sizes) > 0


def test_the_cache_path_gives_the_png_paths_batches(real_sample_root):
    """`data prepare` then the DataModule: uint8 from the cache, normalised/augmented after transfer."""
    from cxr_lightning.cli import main

    assert main(["data", "prepare", "--root", str(real_sample_root), "--size", "64", "--workers", "0", "--no-progress"]) == 0
    cached = sample_module(real_sample_root, images={"cache": "required"})
    decoded = sample_module(real_sample_root, images={"cache": "off"})
    for part in ("val", "train"):
        a, b = cached.dataset(part), decoded.dataset(part)
        assert type(a).__name__ == "CachedChestXrayDataset" and type(b).__name__ == "ChestXrayDataset"
        loader_a = cached._loader(part)
        batch_a = cached.on_after_batch_transfer(next(iter(loader_a)), 0)
        batch_b = next(iter(decoded._loader(part)))
        order = [batch_b["name"].index(n) for n in batch_a["name"]]
        assert torch.equal(batch_a["labels"], batch_b["labels"][order]) and torch.equal(batch_a["metadata"], batch_b["metadata"][order])
        # uint8 storage: at most one grey level apart (1/255 / the smallest std) from the decoded path
        assert (batch_a["image"] - batch_b["image"][order]).abs().max() <= 1 / 255 / 0.224 + 1e-4


def test_a_png_replaced_after_caching_is_not_read_stale_from_the_cache(real_sample_root):
    import os
    import shutil

    from cxr_lightning.cli import main

    assert main(["data", "prepare", "--root", str(real_sample_root), "--size", "64", "--workers", "0", "--no-progress"]) == 0
    images = sorted((real_sample_root / "images").glob("*.png"))
    images[0].unlink()  # deleting a source after caching is fine: the cache is what is read
    assert sample_module(real_sample_root).image_cache() is not None
    shutil.copyfile(images[2], images[1])  # replacing one is not: its cached pixels are stale
    os.utime(images[1], ns=(1, 1))
    with pytest.warns(UserWarning, match=rf"1 image\(s\) changed since the cache .* \['{images[1].name}'\].* data prepare"):
        assert sample_module(real_sample_root).image_cache() is None  # auto: the PNGs are decoded instead
    with pytest.raises(FileNotFoundError, match=r"1 image\(s\) changed since the cache"):
        sample_module(real_sample_root, images={"cache": "required"}).image_cache()
    # data prepare re-decodes the replaced image (the deleted one is now recorded as bad)
    assert main(["data", "prepare", "--root", str(real_sample_root), "--size", "64", "--workers", "0", "--no-progress", "--skip-bad"]) == 0
    assert sample_module(real_sample_root, images={"cache": "required"}).image_cache() is not None


def test_required_cache_that_is_missing_says_how_to_build_it(real_sample_root):
    with pytest.raises(FileNotFoundError, match=r"cxr-lightning data prepare --root .* --size 64"):
        sample_module(real_sample_root, images={"cache": "required"}).dataset("val")


def test_with_skip_the_weights_and_age_scaling_come_from_the_images_trained_on(synthetic_root, tmp_path):
    import shutil

    root = tmp_path / "nih"
    shutil.copytree(synthetic_root, root)
    options = {"split": {"name": "official", "val_fraction": 0.25, "seed": 0}, "labels": {"class_weights": "linear"},
               "loading": {"num_workers": 0}}  # fmt: skip
    full = ChestXrayDataModule(data_root=root, images={"size": 32}, **options)
    train_names = full._tables()[0].frame["image"].to_numpy()[full._tables()[1].train]
    for name in train_names[::2]:  # half the training images were never downloaded
        (root / "images" / name).unlink()
    skip = ChestXrayDataModule(data_root=root, images={"size": 32, "on_bad": "skip"}, **options)
    meta, split = skip._tables()
    used = split.train[np.isin(meta.frame["image"].to_numpy()[split.train], train_names[1::2])]
    labels = meta.label_matrix(tuple(skip.label_names))[used]
    assert skip.train_label_counts == labels.sum(axis=0).astype(int).tolist()
    from cxr_lightning.data.encoding import positive_class_weights

    expected = positive_class_weights(labels.sum(axis=0), len(used), "linear", tuple(skip.label_names))
    assert skip.pos_weight == pytest.approx(expected.tolist()) and skip.pos_weight != pytest.approx(full.pos_weight)
    skip.setup("fit")
    assert len(skip.dataset("train")) == len(used) and sorted(skip.skipped_missing["train"]) == sorted(train_names[::2])
    ages = meta.frame["age"].to_numpy()[used]
    assert skip.encoder.age_mean == pytest.approx(np.nanmean(ages))
    # The default policy needs no image for its weights: every train row counts.
    error = ChestXrayDataModule(data_root=root, images={"size": 32}, **options)
    assert error.train_label_counts == meta.label_matrix(tuple(error.label_names))[split.train].sum(axis=0).astype(int).tolist()


def test_the_training_seed_varies_augmentation_and_order_but_not_the_split(synthetic_root):
    def module(**kwargs):
        dm = ChestXrayDataModule(data_root=synthetic_root, split={"name": "official", "val_fraction": 0.25, "seed": 7},
                                 images={"size": 32}, loading={"batch_size": 8, "num_workers": 0}, **kwargs)  # fmt: skip
        dm.setup("fit")
        return dm

    default, same, other = module(), module(training_seed=7), module(training_seed=8)
    for part in ("train", "val", "test"):
        assert default._tables()[1].part(part).tolist() == other._tables()[1].part(part).tolist()  # the same patients
    first = [next(iter(dm.train_dataloader())) for dm in (default, same, other)]
    assert first[0]["name"] == first[1]["name"] and torch.equal(first[0]["image"], first[1]["image"])  # unset: data.split.seed
    assert first[0]["name"] != first[2]["name"]  # another shuffle
    sample = [dm._datasets["train"][0]["image"] for dm in (default, other)]
    assert not torch.equal(sample[0], sample[1])  # another augmentation of the same image
