"""A small synthetic stand-in for NIH ChestX-ray14, for tests, demos and CI without the 45 GB download.

What it is for: exercising the whole pipeline (reading the metadata, patient splits, the
datamodule, training, evaluation, bounding-box tools) on a machine without the real images, and
checking that a model can actually *learn*: every finding is drawn as its own visual pattern, so a
small CNN trained for a minute or two on a few thousand 64x64 images reaches a high AUROC. The
numbers it gives say nothing about real chest X-rays.

How it is made:

* **Metadata** follows the real joint distribution: whole real patients are drawn at random
  (without replacement while any are left) from the real metadata, with all their images' labels,
  ages, sexes, view positions and follow-up order, until ``num_images`` images are reached (the
  last patient is truncated). Patients are renumbered ``1..P`` in the order drawn and follow-ups
  ``0..k-1``. A patient goes to ``test_list.txt`` iff its real images are in the official test
  list, so the test list's higher prevalence carries over; for tiny datasets whole patients are
  moved so that both lists are non-empty (``num_images >= 2``).
* **Images** are 8-bit grey ``image_size`` x ``image_size`` PNGs: a bright body with two darker
  lung fields, a spine/mediastinum and a heart shadow, smooth low-frequency noise, pixel noise and
  a small random shift and brightness/contrast change per image. For every finding of an image a
  finding-specific pattern is drawn, jittered in position, size and strength inside its own region
  (Cardiomegaly: enlarged heart; Effusion: fluid at a lung base; Pneumothorax: dark rim at an apex
  with a pleural line; Nodule: small bright disc; Mass: large disc; Infiltration: patchy blobs;
  Fibrosis: streaks; Emphysema: enlarged, darker lungs; Hernia: blob with an air bubble below the
  heart; Edema: bilateral haze with horizontal stripes; Atelectasis: thin bright band;
  Consolidation: dense square patch; Pleural_Thickening: bright lateral rim; Pneumonia:
  checkered patch). ``No Finding`` images have no pattern.
* **Files** use the NIH layout: ``images/*.png``, ``Data_Entry_2017_v2020.csv`` (the 2020
  header, the original image size set to ``image_size`` and a pixel spacing scaled accordingly),
  ``train_val_list.txt``, ``test_list.txt`` and ``BBox_List_2017.csv`` (one box per drawn
  pattern, in pixels of the synthetic image).

Everything is a function of ``seed`` (numpy ``Generator``; PNGs carry no timestamp), so the same
arguments give byte-identical files.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from cxr_lightning.data.labels import FINDINGS, LABELS, NO_FINDING

if TYPE_CHECKING:
    from cxr_lightning.data.metadata import NIHMetadata

__all__ = ["SyntheticSummary", "generate_synthetic_dataset", "METADATA_HEADER", "BBOX_HEADER"]

METADATA_FILE = "Data_Entry_2017_v2020.csv"
BBOX_FILE = "BBox_List_2017.csv"
TRAIN_VAL_FILE = "train_val_list.txt"
TEST_FILE = "test_list.txt"
IMAGES_DIR = "images"

#: The exact header line of NIH's 2020 metadata CSV.
METADATA_HEADER = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
    "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]"
)
#: The exact header line of NIH's bounding-box CSV.
BBOX_HEADER = "Image Index,Finding Label,Bbox [x,y,w,h],,,"

#: Pixel spacing (mm) of a 1024-pixel NIH image; scaled to the synthetic size.
NIH_PIXEL_SPACING_1024 = 0.143


@dataclass(frozen=True)
class SyntheticSummary:
    """What :func:`generate_synthetic_dataset` wrote."""

    out: Path
    num_images: int
    num_patients: int
    num_train_val: int
    num_test: int
    image_size: int
    seed: int
    #: positives per label (all 15 of :data:`LABELS`), over all images
    label_counts: dict[str, int] = field(default_factory=dict)
    #: positives per label in ``test_list.txt``
    test_label_counts: dict[str, int] = field(default_factory=dict)
    #: rows of ``BBox_List_2017.csv`` (one per drawn finding pattern)
    num_boxes: int = 0


# --------------------------------------------------------------------------------------------
# Sampling real patients
# --------------------------------------------------------------------------------------------


@dataclass
class _Sample:
    rows: np.ndarray  # positions into the real frame, grouped by new patient, in follow-up order
    patient: np.ndarray  # new patient id (1..P) per image
    follow_up: np.ndarray  # new follow-up number (0..k-1) per image
    patient_is_test: np.ndarray  # bool per new patient (index = id - 1)


def _sample_patients(frame, test_images: list[str], num_images: int, rng: np.random.Generator) -> _Sample:
    if len(frame) == 0:
        raise ValueError("the metadata to sample patients from is empty")
    patient_ids = frame["patient_id"].to_numpy(dtype=np.int64)
    follow_ups = frame["follow_up"].to_numpy(dtype=np.int64)
    order = np.lexsort((np.arange(len(frame)), follow_ups, patient_ids))  # by patient, follow-up, CSV row
    sorted_ids = patient_ids[order]
    starts = np.flatnonzero(np.r_[True, sorted_ids[1:] != sorted_ids[:-1]])
    counts = np.diff(np.r_[starts, len(order)])
    in_test = frame["image"].isin(set(test_images)).to_numpy()[order]
    real_is_test = np.maximum.reduceat(in_test.astype(np.uint8), starts).astype(bool)

    chosen: list[int] = []
    taken: list[int] = []
    total = 0
    while total < num_images:
        for p in rng.permutation(len(starts)):
            k = int(min(counts[p], num_images - total))
            if not chosen and k == num_images and num_images >= 2:
                k = num_images - 1  # keep at least two patients so both lists can be non-empty
            chosen.append(int(p))
            taken.append(k)
            total += k
            if total >= num_images:
                break
    chosen_arr = np.asarray(chosen)
    taken_arr = np.asarray(taken)
    rows = np.concatenate([order[starts[p] : starts[p] + k] for p, k in zip(chosen_arr, taken_arr)])
    patient = np.repeat(np.arange(1, len(chosen_arr) + 1), taken_arr)
    follow_up = np.concatenate([np.arange(k) for k in taken_arr])
    is_test = real_is_test[chosen_arr].copy()
    if len(is_test) >= 2:
        if not is_test.any():
            is_test[-1] = True
        if is_test.all():
            is_test[0] = False
    return _Sample(rows=rows, patient=patient, follow_up=follow_up, patient_is_test=is_test)


def _label_flags(finding_labels: list[str]) -> np.ndarray:
    index = {label: j for j, label in enumerate(LABELS)}
    flags = np.zeros((len(finding_labels), len(LABELS)), dtype=bool)
    for i, text in enumerate(finding_labels):
        for part in text.split("|"):
            part = part.strip()
            if part not in index:
                raise ValueError(f"unknown label {part!r} in {text!r}")
            flags[i, index[part]] = True
    return flags


# --------------------------------------------------------------------------------------------
# Drawing
# --------------------------------------------------------------------------------------------
# All geometry is in unit coordinates (x right, y down, 0..1), so the same parameters work at
# any image size. Arrays are (n, H, W) float32; per-image parameters are (n, 1, 1).

LUNG_X = (0.31, 0.69)  # centres of the image-left and image-right lung
LUNG_Y = 0.45
LUNG_AX, LUNG_AY = 0.15, 0.30


def _col(a) -> np.ndarray:
    return np.asarray(a, dtype=np.float32)[:, None, None]


def _ramp(t, width) -> np.ndarray:
    """Soft step: 0 for t << 0, 1 for t >> 0, linear over ``width``."""
    return np.clip(t / width + 0.5, 0.0, 1.0)


def _ellipse(X, Y, cx, cy, ax, ay, edge=0.15) -> np.ndarray:
    d = np.sqrt(((X - cx) / ax) ** 2 + ((Y - cy) / ay) ** 2)
    return _ramp(1.0 - d, edge)


def _superellipse(X, Y, cx, cy, ax, ay, power=4.0, edge=0.15) -> np.ndarray:
    d = (np.abs((X - cx) / ax) ** power + np.abs((Y - cy) / ay) ** power) ** (1.0 / power)
    return _ramp(1.0 - d, edge)


def _rotated_bar(X, Y, cx, cy, half_len, half_thick, angle, edge) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    u = (X - cx) * c + (Y - cy) * s
    v = -(X - cx) * s + (Y - cy) * c
    return _ramp(half_len - np.abs(u), edge) * _ramp(half_thick - np.abs(v), edge)


class _Ctx:
    """Per-image anatomy (after the global shift) of the images that carry one finding."""

    def __init__(self, X, Y, sx, sy, rng: np.random.Generator):
        self.X, self.Y, self.rng = X, Y, rng
        self.n = len(sx)
        self.sx, self.sy = _col(sx), _col(sy)
        side = rng.integers(0, 2, self.n)
        self.outward = _col(np.where(side == 0, -1.0, 1.0))  # lateral direction of the chosen lung
        self.lung_x = _col(np.take(LUNG_X, side)) + self.sx
        self.lung_y = LUNG_Y + self.sy

    def u(self, lo, hi) -> np.ndarray:
        return _col(self.rng.uniform(lo, hi, self.n))

    def both_lungs(self, ax=LUNG_AX, ay=LUNG_AY, edge=0.2) -> np.ndarray:
        return np.maximum(
            _ellipse(self.X, self.Y, LUNG_X[0] + self.sx, self.lung_y, ax, ay, edge),
            _ellipse(self.X, self.Y, LUNG_X[1] + self.sx, self.lung_y, ax, ay, edge),
        )


# Each pattern returns (delta, footprint): the intensity change and a 0..1 mask whose > 0.5 part
# is the pattern's extent (used for its bounding box).
Pattern = Callable[[_Ctx], tuple[np.ndarray, np.ndarray]]


def _atelectasis(c: _Ctx):
    m = _rotated_bar(
        c.X, c.Y, c.lung_x + c.u(-0.03, 0.03), c.sy + c.u(0.50, 0.60),
        c.u(0.09, 0.12), c.u(0.024, 0.032), c.u(-0.35, 0.35), 0.02,
    )
    return c.u(0.40, 0.50) * m, m


def _cardiomegaly(c: _Ctx):
    m = _ellipse(c.X, c.Y, 0.54 + c.sx + c.u(-0.02, 0.02), 0.63 + c.sy + c.u(-0.02, 0.02), c.u(0.19, 0.23), c.u(0.13, 0.16), 0.15)
    return c.u(0.30, 0.38) * m, m


def _consolidation(c: _Ctx):
    m = _superellipse(
        c.X, c.Y, c.lung_x + c.u(-0.03, 0.03), c.sy + c.u(0.38, 0.52), c.u(0.07, 0.09), c.u(0.07, 0.09), 5.0, 0.08
    )
    return c.u(0.50, 0.60) * m, m


def _edema(c: _Ctx):
    lungs = c.both_lungs(0.13, 0.27, 0.3) * _ramp(c.Y - (c.sy + 0.38), 0.06)
    stripes = 0.5 + 0.5 * np.cos(2 * np.pi * (c.Y - c.sy) / 0.09 + c.u(0, 2 * np.pi))
    return lungs * (c.u(0.12, 0.16) + c.u(0.25, 0.32) * stripes), lungs


def _effusion(c: _Ctx):
    level = c.sy + c.u(0.57, 0.64)
    lateral = np.clip((c.X - c.lung_x) * c.outward / LUNG_AX, -1, 1)  # +1 at the chest wall
    meniscus = level - 0.09 * (lateral + 1) ** 2 / 4  # fluid climbs towards the chest wall
    lung = _ellipse(c.X, c.Y, c.lung_x, c.lung_y + 0.02, LUNG_AX * 1.08, LUNG_AY * 1.05, 0.1)
    m = _ramp(c.Y - meniscus, 0.025) * lung
    return c.u(0.36, 0.44) * m, m


def _emphysema(c: _Ctx):
    m = c.both_lungs(LUNG_AX * 1.12, LUNG_AY * 1.1, 0.25)
    return -c.u(0.22, 0.28) * m, m


def _fibrosis(c: _Ctx):
    delta = np.zeros(np.broadcast_shapes(c.X.shape, c.Y.shape, (c.n, 1, 1)), dtype=np.float32)
    cy = c.sy + c.u(0.24, 0.32)
    for _ in range(4):
        bar = _rotated_bar(
            c.X, c.Y, c.lung_x + c.u(-0.07, 0.07), cy + c.u(-0.07, 0.07),
            c.u(0.05, 0.07), 0.014, c.outward * c.u(0.7, 1.1), 0.02,
        )
        delta = np.maximum(delta, bar)
    foot = _ellipse(c.X, c.Y, c.lung_x, cy, 0.14, 0.13, 0.01)
    return c.u(0.45, 0.55) * delta, np.minimum(foot, (delta > 0.2).astype(np.float32))


def _hernia(c: _Ctx):
    cx, cy, r = 0.5 + c.sx + c.u(-0.03, 0.03), 0.80 + c.sy + c.u(-0.02, 0.02), c.u(0.075, 0.095)
    blob = _ellipse(c.X, c.Y, cx, cy, r * 1.2, r, 0.15)
    bubble = _ellipse(c.X, c.Y, cx, cy - 0.35 * r, r * 0.55, r * 0.35, 0.3)
    return c.u(0.45, 0.55) * blob - 0.6 * bubble, blob


def _infiltration(c: _Ctx):
    cx, cy = c.lung_x + c.u(-0.03, 0.03), c.sy + c.u(0.33, 0.48)
    delta = np.zeros(np.broadcast_shapes(c.X.shape, c.Y.shape, (c.n, 1, 1)), dtype=np.float32)
    for _ in range(7):
        bx, by = cx + c.u(-0.08, 0.08), cy + c.u(-0.09, 0.09)
        delta += np.exp(-(((c.X - bx) ** 2 + (c.Y - by) ** 2) / (2 * 0.025**2)))
    delta = np.minimum(delta, 1.2)
    return c.u(0.32, 0.40) * delta, np.minimum(delta * 2.0, 1.0)


def _mass(c: _Ctx):
    r = c.u(0.085, 0.11)
    m = _ellipse(c.X, c.Y, c.lung_x + c.u(-0.04, 0.04), c.sy + c.u(0.28, 0.42), r, r * c.u(0.85, 1.15), 0.3)
    return c.u(0.40, 0.50) * m, m


def _nodule(c: _Ctx):
    r = c.u(0.04, 0.055)
    m = _ellipse(c.X, c.Y, c.lung_x + c.u(-0.07, 0.07), c.sy + c.u(0.22, 0.62), r, r, 0.25)
    return c.u(0.50, 0.60) * m, m


def _pleural_thickening(c: _Ctx):
    outer = _ellipse(c.X, c.Y, c.lung_x, c.lung_y, LUNG_AX, LUNG_AY, 0.06)
    inner = _ellipse(c.X, c.Y, c.lung_x - c.outward * c.u(0.025, 0.035), c.lung_y, LUNG_AX, LUNG_AY, 0.06)
    lateral = _ramp((c.X - c.lung_x) * c.outward - 0.05, 0.02)
    zone = _ramp(c.Y - (c.sy + c.u(0.18, 0.24)), 0.03) * _ramp(c.sy + c.u(0.52, 0.60) - c.Y, 0.03)
    m = np.clip(outer - inner, 0, 1) * lateral * zone
    m = np.minimum(m * 1.6, 1.0)
    return c.u(0.50, 0.60) * m, m


def _pneumonia(c: _Ctx):
    cx, cy = c.lung_x + c.u(-0.03, 0.03), c.sy + c.u(0.48, 0.60)
    m = _ellipse(c.X, c.Y, cx, cy, c.u(0.08, 0.10), c.u(0.07, 0.09), 0.2)
    period = c.u(0.09, 0.11)
    check = (np.sin(2 * np.pi * (c.X - cx) / period) * np.sin(2 * np.pi * (c.Y - cy) / period) > 0).astype(np.float32)
    return m * (c.u(0.12, 0.16) + c.u(0.32, 0.40) * check), m


def _pneumothorax(c: _Ctx):
    outer = _ellipse(c.X, c.Y, c.lung_x, c.lung_y, LUNG_AX * 1.05, LUNG_AY * 1.03, 0.08)
    shrink = c.u(0.70, 0.80)
    ic_x = c.lung_x - c.outward * LUNG_AX * (1 - shrink) * 0.8
    ic_y = c.lung_y + LUNG_AY * (1 - shrink) * 0.8
    inner = _ellipse(c.X, c.Y, ic_x, ic_y, LUNG_AX * shrink, LUNG_AY * shrink, 0.08)
    apex = _ramp(c.lung_y + 0.05 - c.Y, 0.04)
    rim = np.clip(outer - inner, 0, 1) * apex
    edge = np.exp(-(((np.sqrt(((c.X - ic_x) / (LUNG_AX * shrink)) ** 2 + ((c.Y - ic_y) / (LUNG_AY * shrink)) ** 2) - 1.0) / 0.07) ** 2))
    line = edge * apex * _ramp(c.lung_y - 0.02 - c.Y, 0.04)
    return -c.u(0.35, 0.45) * rim + 0.35 * line, rim


PATTERNS: dict[str, Pattern] = {
    "Atelectasis": _atelectasis,
    "Cardiomegaly": _cardiomegaly,
    "Consolidation": _consolidation,
    "Edema": _edema,
    "Effusion": _effusion,
    "Emphysema": _emphysema,
    "Fibrosis": _fibrosis,
    "Hernia": _hernia,
    "Infiltration": _infiltration,
    "Mass": _mass,
    "Nodule": _nodule,
    "Pleural_Thickening": _pleural_thickening,
    "Pneumonia": _pneumonia,
    "Pneumothorax": _pneumothorax,
}
assert set(PATTERNS) == set(FINDINGS)


def _interp_matrix(size: int, knots: int) -> np.ndarray:
    """(size, knots) linear-interpolation weights from ``knots`` control points to ``size`` pixels."""
    t = np.linspace(0, knots - 1, size)
    lo = np.minimum(np.floor(t).astype(int), knots - 2)
    frac = t - lo
    w = np.zeros((size, knots), dtype=np.float32)
    w[np.arange(size), lo] = 1 - frac
    w[np.arange(size), lo + 1] = frac
    return w


def _boxes(footprint: np.ndarray) -> np.ndarray:
    """(n, 4) integer boxes x, y, w, h (pixels) of ``footprint > 0.5`` (argmax pixel if empty)."""
    n = footprint.shape[0]
    inside = footprint > 0.5
    empty = ~inside.reshape(n, -1).any(axis=1)
    if empty.any():
        flat = footprint[empty].reshape(int(empty.sum()), -1).argmax(axis=1)
        inside[np.flatnonzero(empty), flat // footprint.shape[2], flat % footprint.shape[2]] = True
    rows, cols = inside.any(axis=2), inside.any(axis=1)
    y0, x0 = rows.argmax(axis=1), cols.argmax(axis=1)
    y1 = rows.shape[1] - 1 - rows[:, ::-1].argmax(axis=1)
    x1 = cols.shape[1] - 1 - cols[:, ::-1].argmax(axis=1)
    return np.stack([x0, y0, x1 - x0 + 1, y1 - y0 + 1], axis=1)


def _render(flags: np.ndarray, size: int, rng: np.random.Generator) -> tuple[np.ndarray, dict[int, list[tuple[str, np.ndarray]]]]:
    """uint8 images (n, size, size) for ``flags`` (n, len(LABELS)) and the boxes per image index."""
    n = flags.shape[0]
    coords = (np.arange(size, dtype=np.float32) + 0.5) / size
    X, Y = coords[None, None, :], coords[None, :, None]
    sx = rng.uniform(-0.04, 0.04, n).astype(np.float32)
    sy = rng.uniform(-0.04, 0.04, n).astype(np.float32)
    csx, csy = _col(sx), _col(sy)

    img = np.full((n, size, size), 0.06, dtype=np.float32)
    img += 0.52 * _ellipse(X, Y, 0.5 + csx, 0.58 + csy, 0.47, 0.56, 0.12)
    lungs = np.maximum(
        _ellipse(X, Y, LUNG_X[0] + csx, LUNG_Y + csy, LUNG_AX, LUNG_AY, 0.25),
        _ellipse(X, Y, LUNG_X[1] + csx, LUNG_Y + csy, LUNG_AX, LUNG_AY, 0.25),
    )
    img -= 0.30 * lungs
    img += 0.08 * _ellipse(X, Y, 0.5 + csx, 0.5 + csy, 0.05, 0.42, 0.3)  # spine / mediastinum
    img += 0.12 * _ellipse(X, Y, 0.54 + csx, 0.63 + csy, 0.11, 0.085, 0.4)  # normal heart
    knots = 5
    w = _interp_matrix(size, knots)
    smooth = np.einsum("hi,nij,wj->nhw", w, rng.normal(0, 1, (n, knots, knots)).astype(np.float32), w)
    img += 0.05 * smooth

    boxes: dict[int, list[tuple[str, np.ndarray]]] = {}
    for j, label in enumerate(LABELS):
        if label == NO_FINDING:
            continue
        idx = np.flatnonzero(flags[:, j])
        if len(idx) == 0:
            continue
        ctx = _Ctx(X, Y, sx[idx], sy[idx], rng)
        delta, foot = PATTERNS[label](ctx)
        img[idx] += delta
        for i, box in zip(idx, _boxes(np.broadcast_to(foot, (len(idx), size, size)))):
            boxes.setdefault(int(i), []).append((label, box))

    img += rng.normal(0, 0.035, img.shape).astype(np.float32)
    img = img * _col(rng.uniform(0.85, 1.15, n)) + _col(rng.uniform(-0.05, 0.05, n))
    return np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8), boxes


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


def _fmt_float(value: float) -> str:
    return repr(round(float(value), 6))


#: Written into every synthetic data root: reports made from it say their numbers test the plumbing only.
SYNTHETIC_MARK = "SYNTHETIC.txt"
SYNTHETIC_MARK_TEXT = ("This folder is a synthetic stand-in for NIH ChestX-ray14 (cxr-lightning data synth): real image names,\n"
                       "patients and metadata, but generated images whose findings are drawn patterns. Results on it test the\n"
                       "plumbing, not the method.\n")  # fmt: skip


def is_synthetic_root(root: Path) -> bool:
    """Whether ``root`` holds a synthetic dataset (its mark), as far as this machine can see it."""
    return (Path(root) / SYNTHETIC_MARK).is_file()


def generate_synthetic_dataset(
    out: str | Path,
    num_images: int,
    image_size: int = 64,
    seed: int = 0,
    metadata: NIHMetadata | None = None,
    test_list: list[str] | None = None,
    progress: bool = True,
) -> SyntheticSummary:
    """Write a synthetic NIH-style dataset of ``num_images`` images into ``out`` (see the module doc).

    ``metadata`` is the real metadata whose patients are sampled (default: the packaged 2020 CSV)
    and ``test_list`` the official test images (default: the packaged ``test_list.txt``). The
    same arguments always give byte-identical files. Existing files of the same names are
    overwritten; other files in ``out`` are left alone.
    """
    from cxr_lightning.data.metadata import packaged_file, read_image_list, read_metadata

    if int(num_images) < 1:
        raise ValueError(f"num_images must be >= 1, got {num_images}")
    if int(image_size) < 16:
        raise ValueError(f"image_size must be >= 16, got {image_size}")
    num_images, image_size, seed = int(num_images), int(image_size), int(seed)
    if metadata is None:
        metadata = read_metadata(quiet=True)
    if test_list is None:
        test_list = read_image_list(packaged_file("test_list.txt.gz"))
    frame = metadata.frame

    sample_seq, image_seq = np.random.SeedSequence(seed).spawn(2)
    sample = _sample_patients(frame, test_list, num_images, np.random.default_rng(sample_seq))
    rows = sample.rows
    finding_labels = ["|".join(part.strip() for part in str(text).split("|")) for text in frame["finding_labels"].to_numpy()[rows]]
    flags = _label_flags(finding_labels)
    names = [f"{p:08d}_{f:03d}.png" for p, f in zip(sample.patient, sample.follow_up)]
    is_test = sample.patient_is_test[sample.patient - 1]

    out = Path(out)
    image_dir = out / IMAGES_DIR
    image_dir.mkdir(parents=True, exist_ok=True)

    # metadata CSV
    ages = frame["age"].to_numpy(dtype=float)[rows]
    sexes = frame["sex"].fillna("").astype(str).to_numpy()[rows]
    views = frame["view"].fillna("").astype(str).to_numpy()[rows]
    spacing = _fmt_float(NIH_PIXEL_SPACING_1024 * 1024 / image_size)
    lines = [METADATA_HEADER]
    for i, name in enumerate(names):
        age = "" if np.isnan(ages[i]) else str(int(round(ages[i])))
        lines.append(
            f"{name},{finding_labels[i]},{sample.follow_up[i]},{sample.patient[i]},{age},{sexes[i]},{views[i]},"
            f"{image_size},{image_size},{spacing},{spacing}"
        )
    (out / METADATA_FILE).write_text("\n".join(lines) + "\n", encoding="utf-8", newline="\n")
    (out / SYNTHETIC_MARK).write_text(SYNTHETIC_MARK_TEXT, encoding="utf-8")
    (out / TRAIN_VAL_FILE).write_text("".join(f"{n}\n" for n in sorted(np.asarray(names)[~is_test])), encoding="utf-8")
    (out / TEST_FILE).write_text("".join(f"{n}\n" for n in sorted(np.asarray(names)[is_test])), encoding="utf-8")

    # images, in chunks of about a million pixels
    chunk = max(8, (1 << 20) // (image_size * image_size))
    chunk_rngs = [np.random.default_rng(s) for s in image_seq.spawn((num_images + chunk - 1) // chunk)]
    bbox_lines = [BBOX_HEADER]
    with tqdm(total=num_images, desc="synthetic images", unit="img", disable=not progress) as bar:
        for c, start in enumerate(range(0, num_images, chunk)):
            stop = min(start + chunk, num_images)
            pixels, boxes = _render(flags[start:stop], image_size, chunk_rngs[c])
            for k in range(stop - start):
                Image.fromarray(pixels[k]).save(image_dir / names[start + k], format="PNG")
                for label, (x, y, w, h) in boxes.get(k, []):
                    bbox_lines.append(f"{names[start + k]},{label},{x},{y},{w},{h}")
                bar.update(1)
    (out / BBOX_FILE).write_text("\n".join(bbox_lines) + "\n", encoding="utf-8", newline="\n")

    counts = flags.sum(axis=0)
    test_counts = flags[is_test].sum(axis=0)
    return SyntheticSummary(
        out=out,
        num_images=num_images,
        num_patients=len(sample.patient_is_test),
        num_train_val=int((~is_test).sum()),
        num_test=int(is_test.sum()),
        image_size=image_size,
        seed=seed,
        label_counts={label: int(counts[j]) for j, label in enumerate(LABELS)},
        test_label_counts={label: int(test_counts[j]) for j, label in enumerate(LABELS)},
        num_boxes=len(bbox_lines) - 1,
    )
