"""``cxr-lightning report``: the paper's tables filled with this project's runs, beside the paper's.

Reads ``RUNS/<run>/metrics.json`` and ``test_predictions.csv`` (``val_predictions.csv`` for
temperature scaling) of every run the tables need, and writes ``report.md``:

* each cell as ``ours [95% interval] (paper)``; the intervals come from a bootstrap that
  resamples patients, not images (the NIH test set has about 9 images per patient);
* pairwise tests between the three best models (paired patient bootstrap of the macro metrics,
  DeLong per label with Holm's correction), calibration (ECE, Brier, temperature scaling fitted
  on validation only, reliability diagrams), and the imbalance methods beyond the paper;
* Table 4 computed from the metadata, and the per-label ROC figures (the paper's Figure 1).

A run that has not been made shows as ``missing``; nothing is filled in from elsewhere. A run
whose files are unusable (``metrics.json`` that is not valid JSON or not the object ``test``
writes; a predictions CSV with a missing, non-numeric or out-of-range value) is left out of every
table, shown as ``broken`` in the runs table with the reason, and named on stderr with the file,
the line and the command that writes the files again; the other runs are reported as usual. The
command exits with status 1 only when runs are broken and none is usable.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from cxr_lightning.evaluation.bootstrap import bootstrap_ci, paired_bootstrap_test
from cxr_lightning.evaluation.calibration import apply_temperature, calibration_table, fit_temperature, reliability_diagram
from cxr_lightning.evaluation.delong import delong_multilabel
from cxr_lightning.evaluation.paper_results import (
    ALL_RUNS,
    FIGURE_1_RUNS,
    IMBALANCE_RUNS,
    METRIC_ROWS,
    TABLE_1,
    TABLE_2,
    TABLE_2_SETTINGS,
    TABLE_3,
    TABLE_4,
    THRESHOLD_TABLES,
)
from cxr_lightning.evaluation.predictions_file import PredictionsFileError, read_predictions
from cxr_lightning.output_files import atomic_write_text, check_writable_folder

MISSING = "missing"
BROKEN = "broken"

#: The metrics.json keys a table cell reads: each a number, or null when undefined.
_METRIC_KEYS = tuple(key for key, _ in METRIC_ROWS) + ("auroc_findings",)


class RunFileError(ValueError):
    """A run's file that the report cannot use; the message names the file and what is wrong."""


@dataclass
class Run:
    """One run directory; ``metrics`` is None when the run has not been tested."""

    name: str
    folder: Path
    metrics: dict | None
    config: dict | None
    n_resamples: int = 2000
    seed: int = 0
    problem: str | None = None  #: why the run is left out (broken files), None when usable or missing
    _intervals: dict = field(default_factory=dict)
    _predictions: dict = field(default_factory=dict)

    @property
    def data_root(self) -> str:
        return str(((self.config or {}).get("data") or {}).get("data_root", "?"))

    def predictions(self, part: str = "test"):
        """The run's ``<part>_predictions.csv`` (read once), or None (absent, or the run left out as broken)."""
        if self.problem is not None:
            return None
        if part not in self._predictions:
            path = self.folder / f"{part}_predictions.csv"
            self._predictions[part] = read_predictions(path) if path.is_file() else None
        return self._predictions[part]

    def thresholds(self, group: str, label_names) -> np.ndarray:
        if group == "default":
            return np.full(len(label_names), 0.5)
        tuned = self.metrics["thresholds"]
        return np.array([tuned[name] for name in label_names])

    def interval(self, group: str) -> dict | None:
        """Patient-bootstrap intervals of this run's test metrics at ``group``'s thresholds (cached)."""
        if group not in self._intervals:
            predictions = self.predictions() if self.metrics is not None else None
            self._intervals[group] = None if predictions is None else bootstrap_ci(
                predictions.probs, predictions.targets, self.thresholds(group, predictions.label_names), predictions.patients,
                n_resamples=self.n_resamples, seed=self.seed, label_names=predictions.label_names,
            )  # fmt: skip
        return self._intervals[group]


def _read_metrics(path: Path) -> dict:
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
        for key in _METRIC_KEYS:
            value = values.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise RunFileError(f"{path}: {group}.{key} is {value!r}, not a number")
    thresholds = metrics.get("thresholds")
    if not isinstance(thresholds, dict) or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in thresholds.values()):
        raise RunFileError(f"{path}: 'thresholds' is not an object of label -> number")
    return metrics


def _rerun_hint(folder: Path) -> str:
    """The command that writes a run's metrics.json and test_predictions.csv again."""
    checkpoints = sorted((folder / "checkpoints").glob("best-*.ckpt"), key=lambda p: p.stat().st_mtime)
    ckpt = checkpoints[-1] if checkpoints else folder / "checkpoints" / "best-EPOCH.ckpt"
    return f"rerun the test of that run: cxr-lightning test --config {folder / 'config.yaml'} --ckpt_path {ckpt}"


def _read_config(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, OSError, UnicodeDecodeError) as err:
        raise RunFileError(f"cannot read {path}: {' '.join(str(err).split())}") from err
    if config is not None and not isinstance(config, dict):
        raise RunFileError(f"{path} is not a YAML mapping")
    return config


def load_run(runs_dir: Path, name: str, n_resamples: int = 2000, seed: int = 0) -> Run:
    """The run in ``runs_dir/name``; its files are read and checked now, so a broken one is known before any table."""
    folder = runs_dir / name
    run = Run(name, folder, None, None, n_resamples, seed)
    try:
        run.config = _read_config(folder / "config.yaml")
        if (folder / "metrics.json").is_file():
            run.metrics = _read_metrics(folder / "metrics.json")
            run.predictions("test")
            run.predictions("val")
    except (RunFileError, PredictionsFileError) as err:
        run.metrics, run.problem = None, f"{err}; {_rerun_hint(folder)}"
        run._predictions.clear()
    return run


def _absent(run: Run) -> str:
    """What a table shows for a run without usable results."""
    return BROKEN if run.problem else MISSING


def _number(value, digits: int = 4) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def cell(run: Run, group: str, key: str, paper: float | None, digits: int = 4) -> str:
    """``ours [lower, upper] (paper)``; ``missing (paper)`` without the run."""
    paper_text = f"{paper:.{digits}f}" if paper is not None else "-"
    if run.metrics is None:
        return f"{_absent(run)} ({paper_text})"
    ours = _number(run.metrics.get(group, {}).get(key), digits)
    interval = run.interval(group)
    if interval is not None and key in interval["lower"]:
        ours += f" [{_number(interval['lower'][key], 3)}, {_number(interval['upper'][key], 3)}]"
    return f"{ours} ({paper_text})"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def metric_table(spec, runs: dict[str, Run], settings=()) -> str:
    title, columns = spec
    rows = [[name, *values] for name, values in settings]
    for key, label in METRIC_ROWS:
        rows.append([label] + [cell(runs[c.run], c.group, key, c.paper.get(key)) for c in columns])
    # The literature's number, which the paper did not report.
    rows.append(["AUC (mean of 14 findings)"] + [cell(runs[c.run], c.group, "auroc_findings", None) for c in columns])
    return f"### {title}\n\n" + _table(["Metric"] + [f"{c.title} (`{c.run}`)" for c in columns], rows)


def threshold_table(title: str, run: Run, paper: dict) -> str:
    rows = [[label] + [cell(run, group, key, paper[group][key]) for group in ("default", "tuned")]
            for key, label in METRIC_ROWS if key in paper["default"]]  # fmt: skip
    return f"### {title} (`{run.name}`)\n\n" + _table(["Metric", "Default >0.5 probability threshold", "Tuned thresholds"], rows)


def imbalance_table(runs: dict[str, Run]) -> str:
    columns = [(runs[name], title) for name, title in IMBALANCE_RUNS]
    rows = [[label] + [cell(run, "tuned", key, None) for run, _ in columns] for key, label in METRIC_ROWS]
    rows.append(["AUC (mean of 14 findings)"] + [cell(run, "tuned", "auroc_findings", None) for run, _ in columns])
    header = ["Metric (tuned thresholds)"] + [f"{title} (`{run.name}`)" for run, title in columns]
    return ("### Imbalance methods beyond the paper (ResNet-50, tuned thresholds; the paper has no values: `-`)\n\n"
            + _table(header, rows))  # fmt: skip


def _aligned(a: Run, b: Run):
    """The two runs' test predictions on the images both predicted, in the same order; a note when fewer than all.

    Runs that skipped different unreadable images (``on_bad_image: skip``) are compared on the
    images they share (a paired comparison needs the same images), and the pair says so. Runs with
    different labels cannot be compared: ``(None, reason)``.
    """
    pa, pb = a.predictions(), b.predictions()
    if pa is None or pb is None:
        return None, None
    if pa.label_names != pb.label_names:
        return None, f"not comparable: {a.name} and {b.name} predict different labels"
    common = np.isin(pa.images, pb.images)
    if not common.any():
        return None, f"not comparable: {a.name} and {b.name} share no test image"
    note = None
    if not common.all() or len(pb.images) != int(common.sum()):
        note = f"on the {int(common.sum()):,} test images both runs predicted ({len(pa.images):,} and {len(pb.images):,})"
        pa = type(pa)(pa.images[common], pa.probs[common], pa.targets[common], pa.label_names, pa.patients[common])
    order = pd.Index(pb.images).get_indexer(pa.images)
    return (pa, pb.probs[order]), note


def pairwise_tests(runs: dict[str, Run], n_resamples: int, seed: int) -> str:
    _, columns = TABLE_3
    macro_rows, delong_parts = [], []
    for ca, cb in combinations(columns, 2):
        a, b = runs[ca.run], runs[cb.run]
        pair = f"{ca.title} - {cb.title}"
        aligned, note = _aligned(a, b) if a.metrics and b.metrics else (None, None)
        if aligned is None:
            macro_rows.append([pair] + [note or (BROKEN if a.problem or b.problem else MISSING)] * len(METRIC_ROWS))
            continue
        pa, probs_b = aligned
        pair += f" ({note})" if note else ""
        result = paired_bootstrap_test(pa.probs, probs_b, pa.targets, a.thresholds(ca.group, pa.label_names),
                                       b.thresholds(cb.group, pa.label_names), pa.patients, n_resamples=n_resamples,
                                       seed=seed, label_names=pa.label_names)  # fmt: skip
        metrics = result["metrics"]
        macro_rows.append([pair] + [
            f"{metrics.loc[key, 'diff']:+.4f} [{metrics.loc[key, 'lower']:+.3f}, {metrics.loc[key, 'upper']:+.3f}], p={metrics.loc[key, 'p_value']:.3g}"
            if key in metrics.index else "n/a" for key, _ in METRIC_ROWS
        ])  # fmt: skip
        delong = delong_multilabel(pa.probs, probs_b, pa.targets, pa.label_names, holm=True)
        rows = [[label, f"{r['auc_a']:.4f}", f"{r['auc_b']:.4f}", f"{r['diff']:+.4f}", f"[{r['ci_low']:+.3f}, {r['ci_high']:+.3f}]",
                 f"{r['p_value']:.3g}", f"{r['p_holm']:.3g}"] if not math.isnan(r["auc_a"]) else [label] + ["n/a"] * 6
                for label, r in delong.iterrows()]  # fmt: skip
        delong_parts.append(f"#### DeLong per label: {pair}\n\n"
                            + _table(["Label", f"AUC {ca.title}", f"AUC {cb.title}", "Difference", "95% CI", "p", "p (Holm)"], rows))  # fmt: skip
    header = ["Pair (A - B)"] + [label for _, label in METRIC_ROWS]
    return ("### Pairwise tests between the three best models (Table 3's thresholds)\n\n"
            f"Differences with 95% intervals and two-sided p-values from a paired bootstrap over patients ({n_resamples} resamples, "
            f"seed {seed}); per-label AUROC differences by DeLong's test, with Holm's correction across labels. DeLong treats "
            "images as independent; the bootstrap does not.\n\n"
            + _table(header, macro_rows) + "\n\n" + "\n\n".join(delong_parts))  # fmt: skip


def calibration_section(runs: dict[str, Run], figures_dir: Path, relative_to: Path) -> str:
    rows, figures = [], []
    for name, title in FIGURE_1_RUNS:
        run = runs[name]
        test = run.predictions() if run.metrics else None
        if test is None:
            rows.append([f"{title} (`{name}`)"] + [_absent(run)] * 5)
            continue
        before = calibration_table(test.probs, test.targets, test.label_names).loc["macro"]
        val = run.predictions("val")
        if val is not None:
            temperature = fit_temperature(val.probs, val.targets, kind="probs")
            after = calibration_table(apply_temperature(test.probs, temperature), test.targets, test.label_names).loc["macro"]
            scaled = [f"{temperature:.3f}", f"{after['ece']:.4f}", f"{after['brier']:.4f}"]
        else:
            scaled = ["no val_predictions.csv"] + ["-"] * 2
        rows.append([f"{title} (`{name}`)", f"{before['ece']:.4f}", f"{before['brier']:.4f}", *scaled])
        path = reliability_diagram(test.probs, test.targets, test.label_names, figures_dir / f"reliability_{name}.png",
                                   title=f"{title}: reliability (test)")  # fmt: skip
        figures.append(f"![{title} reliability]({path.relative_to(relative_to).as_posix()})")
    header = ["Model", "ECE (macro)", "Brier (macro)", "Temperature (fit on validation)", "ECE after", "Brier after"]
    return ("### Calibration (test set; temperature scaling fitted on the validation predictions only)\n\n"
            + _table(header, rows) + "\n\n" + "\n\n".join(figures))  # fmt: skip


def localization_section(runs: dict[str, Run]) -> str:
    """Pointing game and energy in the box per label, from ``<run>/explain/localization.csv``."""
    parts = []
    for name, title in FIGURE_1_RUNS:
        path = runs[name].folder / "explain" / "localization.csv"
        if not path.is_file():
            parts.append(f"- {title} (`{name}`): {MISSING} (`make explain`)")
            continue
        frame = pd.read_csv(path)
        rows = [[str(r["label"]), str(int(r["n_boxes"])), f"{r['pointing_hit_rate']:.3f}", f"{r['mean_energy_in_box']:.3f}",
                 f"{r['mean_box_area_fraction']:.3f}"] for _, r in frame.iterrows()]  # fmt: skip
        parts.append(f"#### {title} (`{name}`)\n\n"
                     + _table(["Label", "Boxes", "Pointing-game hit rate", "Heatmap energy in the box", "Box area (energy by chance)"], rows))  # fmt: skip
    return ("### Localisation: Grad-CAM against the bounding boxes\n\n"
            "Hit: the heatmap's maximum falls inside the box. Energy: the fraction of the heatmap's mass inside the box; "
            "the box's share of the image is what a uniform heatmap would score.\n\n" + "\n\n".join(parts))  # fmt: skip


def table_4() -> str:
    from cxr_lightning.data.metadata import packaged_file, read_metadata
    from cxr_lightning.data.split_statistics import prevalence_table
    from cxr_lightning.data.splits import make_split

    meta = read_metadata()
    split = make_split("paper", meta, packaged_file("train_val_list.txt.gz"), packaged_file("test_list.txt.gz"))
    table = prevalence_table(meta, split)
    rows = [[label] + [f"{table.loc[label].iloc[i]:.2f} ({TABLE_4[label][i]:.2f})" for i in range(3)] for label in TABLE_4]
    rows.append(["images"] + [f"{int(v):,}" for v in table.loc["images"]])
    rows.append(["patients"] + [f"{int(v):,}" for v in table.loc["patients"]])
    header = ["Condition", "% positive in Training", "% positive in Validation", "% positive in Testing"]
    return "### Table 4 (Appendix D): class prevalence per split, from the metadata\n\n" + _table(header, rows)


def roc_figures(runs: dict[str, Run], figures_dir: Path, relative_to: Path) -> str:
    from cxr_lightning.evaluation.plots import plot_roc_curves

    parts = []
    for name, title in FIGURE_1_RUNS:
        predictions = runs[name].predictions() if runs[name].metrics else None
        if predictions is None:
            parts.append(f"- {title} (`{name}`): {_absent(runs[name])}")
            continue
        path = plot_roc_curves(predictions.probs, predictions.targets, list(predictions.label_names), figures_dir / f"roc_{name}.png",
                               title=f"{title}: per-label ROC (test)")  # fmt: skip
        parts.append(f"![{title}]({path.relative_to(relative_to).as_posix()})")
    return "### Figure 1: per-label ROC curves of the best model of each kind\n\n" + "\n\n".join(parts)


def _status(run: Run) -> str:
    if run.problem:
        return f"{BROKEN}: {run.problem.replace('|', '/')}"  # a '|' would split the table cell
    return "done" if run.metrics else MISSING


def load_runs(runs_dir: str | Path, n_resamples: int = 2000, seed: int = 0) -> dict[str, Run]:
    """Every run the tables name; each broken one is named on stderr (it is left out, the others are reported)."""
    runs = {name: load_run(Path(runs_dir), name, n_resamples, seed) for name in ALL_RUNS}
    for run in runs.values():
        if run.problem:
            print(f"cxr-lightning: warning: run {run.name} left out of the report: {run.problem}", file=sys.stderr)
    return runs


def build_report(runs_dir: str | Path, out: str | Path, n_resamples: int = 2000, seed: int = 0, runs: dict[str, Run] | None = None) -> str:
    """Write the report to ``out`` (figures in ``out``'s folder / figures) and return its text.

    ``runs``: from :func:`load_runs` (read here when not given).
    """
    runs_dir, out = Path(runs_dir), Path(out)
    figures = out.parent / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    runs = runs if runs is not None else load_runs(runs_dir, n_resamples, seed)
    status = _table(
        ["Run", "Status", "Test images", "Data root"],
        [[f"`{r.name}`", _status(r), f"{r.metrics['num_images']:,}" if r.metrics else "-", r.data_root if r.config else "-"]
         for r in runs.values()],
    )  # fmt: skip
    sections = [
        "# cxr-lightning: the paper's tables, reproduced",
        f"Runs read from `{runs_dir}`. Each cell is **this project's value [95% interval] (the paper's value)**; "
        f"the intervals are percentile intervals of a bootstrap that resamples patients ({n_resamples} resamples, seed {seed}), "
        "since images of one patient are not independent. `missing` marks a run that has not been made (`make tables`). "
        "Macro averages are over the 15 columns, `No Finding` included, as in the paper; the last row of each table adds "
        "the mean AUROC of the 14 findings that most of the literature reports.",
        "## Runs\n\n" + status,
        "## The paper's tables",
        metric_table(TABLE_1, runs),
        metric_table(TABLE_2, runs, TABLE_2_SETTINGS),
        metric_table(TABLE_3, runs),
        table_4(),
        *[threshold_table(title, runs[name], paper) for title, name, paper in THRESHOLD_TABLES],
        roc_figures(runs, figures, out.parent),
        "## Beyond the paper",
        pairwise_tests(runs, n_resamples, seed),
        calibration_section(runs, figures, out.parent),
        localization_section(runs),
        imbalance_table(runs),
    ]
    text = "\n\n".join(sections) + "\n"
    atomic_write_text(out, text)
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cxr-lightning report", description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--runs", type=Path, default=Path("runs"), help="folder holding one folder per run (default: runs)")
    parser.add_argument("--out", type=Path, default=None, help="report file (default: RUNS/report.md)")
    parser.add_argument("--bootstrap", type=int, default=2000, help="patient-bootstrap resamples for intervals and tests")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    args = parser.parse_args(argv)
    out = args.out or args.runs / "report.md"
    check_writable_folder(out.parent, "the report")  # before the bootstrap, not after it
    runs = load_runs(args.runs, args.bootstrap, args.seed)
    build_report(args.runs, out, args.bootstrap, args.seed, runs=runs)
    print(f"wrote {out} and its figures in {out.parent / 'figures'}")
    broken = [r.name for r in runs.values() if r.problem]
    if broken and not any(r.metrics for r in runs.values()):
        print(f"cxr-lightning: error: no usable run in {args.runs}: {len(broken)} broken ({', '.join(broken)}), see above", file=sys.stderr)
        return 1
    return 0
