"""The runs a report reads: every run folder under ``RUNS``, and predictions made elsewhere.

A run folder is any folder under ``RUNS`` (one level down, or two for seeds:
``RUNS/<row>/seed<k>/``) holding a ``config.yaml``, ``metrics.json`` or ``test_predictions.csv``;
it is named by its path under ``RUNS`` (``resnet_log``, ``resnet_log/seed1``). An external run is a
predictions CSV from anywhere (a published model's, another framework's): an image column and
``prob_<Label>`` columns, with ``label_<Label>`` targets or NIH's labels joined by image name.

Every number the report prints is recomputed here from the predictions file, with the same
function ``test`` used (:func:`~cxr_lightning.evaluation.metrics.classification_metrics`); a
``metrics.json`` that disagrees is reported as such, never printed. Which images were tested is
named against the official test list.
"""

from __future__ import annotations

import json
import math
import re
import warnings
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import yaml

from cxr_lightning.data.labels import LABELS, NO_FINDING
from cxr_lightning.data.metadata import packaged_file, packaged_metadata, read_image_list
from cxr_lightning.data.options import sectioned_data_config
from cxr_lightning.data.synthetic import is_synthetic_root
from cxr_lightning.evaluation.bootstrap import bootstrap_ci_at_thresholds
from cxr_lightning.evaluation.metrics import MACRO_METRICS, classification_metrics
from cxr_lightning.evaluation.predictions_file import (
    IMAGE_COLUMN,
    PredictionsFile,
    PredictionsFileError,
    checked_predictions,
    image_file_names,
    label_column,
    probability_column,
    read_predictions,
)
from cxr_lightning.models.backbones import weights_trained_on_nih

#: A run folder holds at least one of these.
RUN_FILES = ("config.yaml", "metrics.json", "test_predictions.csv")
#: ``RUNS/<row>/seed<k>/``: one training seed of a row (``make <row> SEEDS=3``).
SEED_FOLDER = re.compile(r"^seed(\d+)$")
#: metrics.json and the recomputed value may differ by float rounding only.
AGREEMENT_TOLERANCE = 1e-6
#: The column names an external predictions file may give its images.
EXTERNAL_IMAGE_COLUMNS = (IMAGE_COLUMN, "Image Index", "image_id", "Image")


class RunFileError(ValueError):
    """A run's file that the report cannot use; the message names the file and what is wrong."""


@dataclass
class Run:
    """One run: its predictions, thresholds and settings; ``problem`` says why it is left out, if it is."""

    name: str
    folder: Path | None
    config: dict | None = None
    metrics: dict | None = None  #: metrics.json as written (checked); None for an external run
    test: PredictionsFile | None = None
    val: PredictionsFile | None = None
    external: Path | None = None  #: the CSV of an external run
    problem: str | None = None
    notes: list[str] = field(default_factory=list)  #: things a reader must know (disagreements, warnings)
    n_resamples: int = 2000
    seed: int = 0
    _intervals: dict = field(default_factory=dict, repr=False)
    _recomputed: dict = field(default_factory=dict, repr=False)

    @property
    def usable(self) -> bool:
        return self.problem is None and self.test is not None

    @property
    def row(self) -> str:
        """The table row the run belongs to: its folder, or the folder above ``seed<k>``."""
        parts = self.name.split("/")
        return parts[0] if len(parts) == 2 and SEED_FOLDER.match(parts[1]) else self.name

    @property
    def data_config(self) -> dict:
        data = (self.config or {}).get("data") or {}
        try:
            return sectioned_data_config(data)
        except ValueError:
            return {}

    @property
    def data_root(self) -> str:
        return str(self.data_config.get("data_root", "?"))

    @property
    def synthetic(self) -> bool:
        """Tested on synthetic images: as ``test`` recorded it, or the config generated them, or the data root is marked."""
        recorded = (self.metrics or {}).get("data") or {}
        if "synthetic" in recorded:
            return bool(recorded["synthetic"])
        data = self.data_config
        return bool(data.get("synthetic")) or (bool(data) and is_synthetic_root(Path(self.data_root)))

    @property
    def trained_on_nih(self) -> bool:
        """Whether the run's pretrained weights were trained on NIH images (torchxrayvision's all/nih/rsna): they may have seen its test set."""
        init = ((self.config or {}).get("model") or {}).get("init_args") or {}
        backbone = init.get("backbone")
        if not isinstance(backbone, str):
            return False
        try:
            return weights_trained_on_nih(backbone, init.get("weights"))
        except ValueError:
            return False

    @property
    def label_names(self) -> tuple[str, ...]:
        return self.test.label_names if self.test is not None else ()

    def thresholds(self, group: str) -> np.ndarray:
        """The thresholds of ``group``: ``default`` 0.5, ``tuned`` the run's (0.5 where an external run has none)."""
        if group == "default" or self.metrics is None:
            return np.full(len(self.label_names), 0.5)
        tuned = self.metrics["thresholds"]
        return np.array([tuned.get(name, 0.5) for name in self.label_names])

    def recomputed(self, group: str) -> dict[str, Any]:
        """The test metrics at ``group``'s thresholds, from the predictions file (cached)."""
        if group not in self._recomputed:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                self._recomputed[group] = classification_metrics(
                    torch.tensor(self.test.probs), torch.tensor(self.test.targets), torch.tensor(self.thresholds(group)),
                    list(self.label_names), no_finding=NO_FINDING,
                )  # fmt: skip
            for message in dict.fromkeys(str(w.message) for w in caught):  # each warning once per run
                self.note(message)
        return self._recomputed[group]

    def interval(self, group: str) -> dict | None:
        """Patient-bootstrap intervals of the test metrics at ``group``'s thresholds (cached)."""
        if not self.usable:
            return None
        if group not in self._intervals:
            # Both threshold groups in one pass: their AUROC resamples are the same computation.
            t, groups = self.test, ("default", "tuned")
            # The replicates are kept (~0.3 MB a group) for the report's paired tests between runs.
            results = bootstrap_ci_at_thresholds(t.probs, t.targets, [self.thresholds(g) for g in groups], t.patients,
                                                 n_resamples=self.n_resamples, seed=self.seed, label_names=t.label_names,
                                                 return_replicates=True)  # fmt: skip
            self._intervals.update(zip(groups, results))
        return self._intervals[group]

    def note(self, message: str) -> None:
        if message not in self.notes:
            self.notes.append(message)

    @cached_property
    def tested_images(self) -> str:
        """Which images were tested, against the official test list."""
        return describe_tested_images(self.test.images) if self.test is not None else "-"

    @property
    def description(self) -> str:
        """The model and the settings that tell runs apart, from the run's config."""
        if self.external is not None:
            return f"external predictions ({self.external})"
        config = self.config or {}
        model = config.get("model") or {}
        class_name = str(model.get("class_path", "?")).rpartition(".")[2]
        init = model.get("init_args") or {}
        data = self.data_config
        parts = [class_name]
        if init.get("backbone"):
            parts.append(str(init["backbone"]))
        for key in ("loss", "scheduler"):
            if init.get(key) not in (None, "none"):
                parts.append(f"{key} {init[key]}")
        split, images, labels = data.get("split") or {}, data.get("images") or {}, data.get("labels") or {}
        if split.get("name"):
            parts.append(f"split {split['name']}")
        if images.get("size"):
            parts.append(f"{images['size']} px")
        if labels.get("class_weights") not in (None, "none"):
            parts.append(f"{labels['class_weights']} weights")
        seed = config.get("seed_everything")
        parts.append(f"seed {seed}" if seed is not None and not isinstance(seed, bool) else "seed not named")
        return ", ".join(parts)


def official_test_images() -> frozenset[str]:
    return frozenset(read_image_list(packaged_file("test_list.txt.gz")))


def describe_tested_images(images: np.ndarray) -> str:
    """``official test list (25,596 of 25,596)``, or how many of it the tested images are."""
    official = official_test_images()
    names = set(image_file_names(images))
    inside = len(names & official)
    if inside == len(official) == len(names):
        return f"the official test list ({inside:,} of {len(official):,})"
    if inside == len(names):
        return f"{inside:,} of the {len(official):,} official test images"
    return f"{len(names):,} images, {inside:,} of them in the official test list"


def find_run_folders(runs_dir: Path) -> list[str]:
    """The names of every run folder under ``runs_dir`` (``row`` or ``row/seed<k>``), sorted."""
    names = []
    for folder in sorted(p for p in runs_dir.iterdir() if p.is_dir()) if runs_dir.is_dir() else []:
        if any((folder / f).is_file() for f in RUN_FILES):
            names.append(folder.name)
        for seed in sorted((p for p in folder.iterdir() if p.is_dir() and SEED_FOLDER.match(p.name)), key=lambda p: int(p.name[4:])):
            if any((seed / f).is_file() for f in RUN_FILES):
                names.append(f"{folder.name}/{seed.name}")
    return names


def read_metrics(path: Path) -> dict:
    """``metrics.json`` as ``test`` writes it, checked where the report reads it; else :class:`RunFileError`."""
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise RunFileError(f"{path} is not valid JSON (line {err.lineno}, column {err.colno}: {err.msg}); it may be truncated") from err
    except (OSError, UnicodeDecodeError) as err:
        raise RunFileError(f"cannot read {path}: {err}") from err
    if not isinstance(metrics, dict):
        raise RunFileError(f"{path} holds a JSON {type(metrics).__name__}, not the object of metrics that `cxr-lightning test` writes")
    num_images = metrics.get("num_images")
    if isinstance(num_images, bool) or not isinstance(num_images, int) or num_images < 0:
        raise RunFileError(f"{path}: 'num_images' is {num_images!r}, not a count of images")
    for group in ("default", "tuned"):
        values = metrics.get(group)
        if not isinstance(values, dict):
            raise RunFileError(f"{path}: {group!r} is {type(values).__name__ if values is not None else 'absent'}, not an object of metrics")
        for key in MACRO_METRICS:
            value = values.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise RunFileError(f"{path}: {group}.{key} is {value!r}, not a number")
    thresholds = metrics.get("thresholds")
    if not isinstance(thresholds, dict) or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in thresholds.values()):
        raise RunFileError(f"{path}: 'thresholds' is not an object of label -> number")
    return metrics


def read_config(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, OSError, UnicodeDecodeError) as err:
        raise RunFileError(f"cannot read {path}: {' '.join(str(err).split())}") from err
    if config is not None and not isinstance(config, dict):
        raise RunFileError(f"{path} is not a YAML mapping")
    return config


def rerun_hint(folder: Path) -> str:
    """The command that writes a run's metrics.json and test_predictions.csv again."""
    checkpoints = sorted((folder / "checkpoints").glob("best*.ckpt"), key=lambda p: p.stat().st_mtime)
    ckpt = checkpoints[-1] if checkpoints else folder / "checkpoints" / "best.ckpt"
    return f"rerun the test of that run: cxr-lightning test --config {folder / 'config.yaml'} --ckpt_path {ckpt}"


def load_run(runs_dir: Path, name: str, n_resamples: int = 2000, seed: int = 0) -> Run:
    """The run in ``runs_dir/name``; its files are read and checked now, so a broken one is known before any table."""
    folder = runs_dir / name
    run = Run(name, folder, n_resamples=n_resamples, seed=seed)
    try:
        run.config = read_config(folder / "config.yaml")
        if (folder / "metrics.json").is_file():
            run.metrics = read_metrics(folder / "metrics.json")
            if not (folder / "test_predictions.csv").is_file():
                raise RunFileError(f"{folder / 'test_predictions.csv'} is missing: the metrics cannot be checked or recomputed")
        if (folder / "test_predictions.csv").is_file():
            run.test = read_predictions(folder / "test_predictions.csv")
            if (folder / "val_predictions.csv").is_file():
                run.val = read_predictions(folder / "val_predictions.csv")
    except (RunFileError, PredictionsFileError) as err:
        run.metrics = run.test = run.val = None
        run.problem = f"{err}; {rerun_hint(folder)}"
        return run
    if run.metrics is not None and run.test is not None:
        check_metrics_file(run, folder / "metrics.json")
    if run.trained_on_nih:
        run.note("its pretrained weights were trained on NIH ChestX-ray14 images: their training may have seen the official test images")
    return run


def check_metrics_file(run: Run, path: Path) -> None:
    """Note every value of ``metrics.json`` that its predictions file does not give (the report prints the latter)."""
    if run.metrics["num_images"] != len(run.test.images):
        run.note(f"{path} counts {run.metrics['num_images']:,} test images, test_predictions.csv holds {len(run.test.images):,}")
    for group in ("default", "tuned"):
        recomputed = run.recomputed(group)
        for key in MACRO_METRICS:
            written, value = run.metrics[group].get(key), recomputed[key]
            if written is None and math.isnan(value):
                continue
            if written is None or math.isnan(value) or abs(written - value) > AGREEMENT_TOLERANCE:
                run.note(f"{path} says {group}.{key} = {written}, but its test_predictions.csv gives {value:.6f}: "
                         "the report prints the latter")  # fmt: skip


def load_external(name: str, path: Path, n_resamples: int = 2000, seed: int = 0) -> Run:
    """A predictions CSV made elsewhere, as a run: its targets from ``label_`` columns, else NIH's labels by image name."""
    run = Run(name, None, external=path, n_resamples=n_resamples, seed=seed)
    run.test = read_external_predictions(path)
    return run


def read_external_predictions(path: Path) -> PredictionsFile:
    """An image column and ``prob_<Label>`` columns (NIH label names); one-line errors name the file, column or row."""
    try:
        frame = pd.read_csv(path)
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise PredictionsFileError(f"cannot read {path}: {' '.join(str(err).split())}") from err
    image_column = next((c for c in EXTERNAL_IMAGE_COLUMNS if c in frame.columns), None)
    if image_column is None:
        raise PredictionsFileError(f"{path}: no image column (one of {', '.join(EXTERNAL_IMAGE_COLUMNS)})")
    labels = [c.removeprefix("prob_") for c in frame.columns if c.startswith("prob_")]
    unknown = [name for name in labels if name not in LABELS]
    if not labels or unknown:
        raise PredictionsFileError(f"{path}: {'columns ' + str(['prob_' + n for n in unknown]) + ' are not NIH labels' if unknown else 'no prob_<Label> columns'}"
                                   f" (NIH labels: {', '.join(LABELS)})")  # fmt: skip
    images = frame[image_column].astype(str).map(lambda s: Path(s).name)
    if images.duplicated().any():
        raise PredictionsFileError(f"{path}: image {images[images.duplicated()].iloc[0]!r} appears more than once")
    table = pd.DataFrame({IMAGE_COLUMN: images})
    for name in labels:
        table[probability_column(name)] = frame[probability_column(name)]
    if all(label_column(n) in frame.columns for n in labels):
        for name in labels:
            table[label_column(name)] = frame[label_column(name)]
    else:  # NIH's labels, joined by image name: every image must be an NIH image
        meta = packaged_metadata()
        known = pd.Index(meta.frame["image"])
        missing = images[~images.isin(known)]
        if len(missing):
            raise PredictionsFileError(f"{path}: {len(missing):,} image(s) are not in NIH's metadata (first: {missing.iloc[0]!r}), "
                                       "and the file has no label_<Label> columns to give their labels")  # fmt: skip
        matrix = meta.label_matrix(tuple(labels))[known.get_indexer(images)]
        for i, name in enumerate(labels):
            table[label_column(name)] = matrix[:, i].astype(np.int8)
    return checked_predictions(table, path, labels)  # the checks of a run's own file


def parse_external(spec: str) -> tuple[str, Path]:
    """``NAME=PATH`` (or ``PATH``, named by its stem) of ``report --external``."""
    name, sep, path = spec.partition("=")
    if not sep:
        name, path = Path(spec).stem, spec
    if not name or "/" in name:
        raise PredictionsFileError(f"--external {spec!r}: give NAME=PATH with a NAME without '/'")
    return name, Path(path)
