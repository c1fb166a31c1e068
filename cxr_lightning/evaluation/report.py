"""``cxr-lightning report``: every run under RUNS, and the paper's tables filled from the runs that reproduce its rows.

Reads every run folder under ``RUNS`` (:mod:`cxr_lightning.evaluation.runs`: ``RUNS/<run>/`` and
``RUNS/<row>/seed<k>/``) and any predictions CSV given with ``--external NAME=CSV``, and writes
``report.md``:

* the runs: each by its folder name, model and settings, which images it tested, and what a
  reader must know (a ``metrics.json`` that disagrees with its predictions, undefined AUROCs);
* the paper's tables, each cell ``ours [95% interval] (paper)``, from the run named like the row
  (or ``mean +- sd`` over its seeds); every value is recomputed from the predictions file, and the
  intervals come from a bootstrap that resamples patients, not images (about 9 images a patient);
* pairwise tests between the three best models (paired patient bootstrap of the macro metrics,
  over every seed when there are several; DeLong per label with Holm's correction), external
  predictions against them on the images they share, calibration, localisation, the imbalance
  methods beyond the paper;
* Table 4 from the data the runs used, the per-label ROC figures (the paper's Figure 1), and for
  every run a per-finding table (AUROC with its interval, F1, precision and recall at its thresholds).

A row without a run shows ``missing``; nothing is filled in from elsewhere. A run whose files are
unusable is left out of every table, shown as ``broken`` with the reason, and named on stderr with
the file, the line and the command that writes the files again. The command exits with status 1
only when runs are broken and none is usable.
"""

from __future__ import annotations

import math
import statistics
import sys
from itertools import combinations
from pathlib import Path

import numpy as np
import pandas as pd

from cxr_lightning.cli.parser import CommandParser
from cxr_lightning.data.labels import NO_FINDING
from cxr_lightning.evaluation.beyond_nih_labels import expert_label_section, subgroup_section
from cxr_lightning.evaluation.bootstrap import paired_test_from_intervals, seed_averaged_paired_test
from cxr_lightning.evaluation.calibration import apply_temperature, calibration_table, fit_temperature, reliability_diagram
from cxr_lightning.evaluation.delong import delong_multilabel
from cxr_lightning.evaluation.markdown import interval, number, table
from cxr_lightning.evaluation.paper_results import (
    BACKBONE_RUNS,
    FIGURE_1_RUNS,
    IMBALANCE_RUNS,
    METRIC_ROWS,
    PAPER_RUNS,
    TABLE_1,
    TABLE_2,
    TABLE_2_SETTINGS,
    TABLE_3,
    TABLE_4,
    THRESHOLD_TABLES,
)
from cxr_lightning.evaluation.parallel import map_in_threads
from cxr_lightning.evaluation.predictions_file import PredictionsFile, PredictionsFileError
from cxr_lightning.evaluation.runs import Run, find_run_folders, load_external, load_run, parse_external
from cxr_lightning.output_files import atomic_write_text, check_writable_folder

MISSING = "missing"
BROKEN = "broken"
SYNTHETIC_BANNER = ("> **Synthetic data.** Runs in this report were trained and tested on synthetic images "
                    "(`cxr-lightning data synth`, the demo and the smoke runs): these numbers test the plumbing, not the method.")  # fmt: skip


class Runs:
    """The report's runs by name, and by the table row each belongs to (a row's seeds together)."""

    def __init__(self, runs: dict[str, Run]):
        self.by_name = runs
        self.by_row: dict[str, list[Run]] = {}
        for run in runs.values():
            self.by_row.setdefault(run.row, []).append(run)

    def row(self, name: str) -> list[Run]:
        """The usable runs of a row: the run of that name, or its seeds."""
        return [run for run in self.by_row.get(name, []) if run.usable]

    def absent(self, name: str) -> str:
        """What a table shows for a row without usable results."""
        return BROKEN if any(run.problem for run in self.by_row.get(name, [])) else MISSING

    def values(self):
        return self.by_name.values()


def cell(runs: Runs, row: str, group: str, key: str, paper: float | None, digits: int = 4) -> str:
    """``ours [lower, upper] (paper)``; ``mean +- sd (k seeds) (paper)`` for seeds; ``missing (paper)`` without a run."""
    paper_text = f"{paper:.{digits}f}" if paper is not None else "-"
    found = runs.row(row)
    if not found:
        return f"{runs.absent(row)} ({paper_text})"
    if len(found) > 1:
        values = [run.recomputed(group)[key] for run in found]
        values = [v for v in values if not math.isnan(v)]
        if not values:
            return f"n/a ({paper_text})"
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{statistics.fmean(values):.{digits}f} ± {spread:.{digits}f} ({len(found)} seeds) ({paper_text})"
    run = found[0]
    ours = number(run.recomputed(group)[key], digits)
    bounds = run.interval(group)
    # A run of the 14 findings alone: their mean AUROC is its macro AUROC, interval included.
    bounded = "auroc_macro" if key == "auroc_findings" and NO_FINDING not in run.label_names else key
    if bounds is not None and bounded in bounds["lower"]:
        ours += interval(bounds["lower"][bounded], bounds["upper"][bounded])
    return f"{ours} ({paper_text})"


def metric_table(spec, runs: Runs, settings=()) -> str:
    title, columns = spec
    rows = [[name, *values] for name, values in settings]
    for key, label in METRIC_ROWS:
        rows.append([label] + [cell(runs, c.run, c.group, key, c.paper.get(key)) for c in columns])
    # The literature's number, which the paper did not report.
    rows.append(["AUC (mean of 14 findings)"] + [cell(runs, c.run, c.group, "auroc_findings", None) for c in columns])
    return f"### {title}\n\n" + table(["Metric"] + [f"{c.title} (`{c.run}`)" for c in columns], rows)


def threshold_table(title: str, runs: Runs, row: str, paper: dict) -> str:
    rows = [[label] + [cell(runs, row, group, key, paper[group][key]) for group in ("default", "tuned")]
            for key, label in METRIC_ROWS if key in paper["default"]]  # fmt: skip
    return f"### {title} (`{row}`)\n\n" + table(["Metric", "Default >0.5 probability threshold", "Tuned thresholds"], rows)


def imbalance_table(runs: Runs) -> str:
    rows = [[label] + [cell(runs, name, "tuned", key, None) for name, _ in IMBALANCE_RUNS] for key, label in METRIC_ROWS]
    rows.append(["AUC (mean of 14 findings)"] + [cell(runs, name, "tuned", "auroc_findings", None) for name, _ in IMBALANCE_RUNS])
    header = ["Metric (tuned thresholds)"] + [f"{title} (`{name}`)" for name, title in IMBALANCE_RUNS]
    return "### Imbalance methods beyond the paper (ResNet-50, tuned thresholds; the paper has no values: `-`)\n\n" + table(header, rows)


def backbone_table(runs: Runs) -> str:
    """Other backbones beside the paper's three best models, at each one's Table 3 thresholds (tuned for the new ones)."""
    _, best = TABLE_3
    columns = [(c.run, c.title, c.group, c.paper) for c in best] + [(name, title, "tuned", {}) for name, title, _ in BACKBONE_RUNS]
    literature = {name: value for name, _, value in BACKBONE_RUNS}
    rows = [[label] + [cell(runs, name, group, key, paper.get(key)) for name, _, group, paper in columns] for key, label in METRIC_ROWS]
    rows.append(["AUC (mean of 14 findings)"] + [cell(runs, name, group, "auroc_findings", literature.get(name)) for name, _, group, _ in columns])
    warned = [f"`{r.name}`" for name, _, _ in BACKBONE_RUNS for r in runs.by_row.get(name, []) if r.trained_on_nih]
    warning = (f"\n\n**Warning:** the pretrained weights of {', '.join(warned)} were trained on NIH ChestX-ray14 images; their "
               "training may have seen the official test images, so their test numbers may be optimistic.") if warned else ""  # fmt: skip
    return ("### Other backbones beside the paper's best models\n\n"
            "The paper's three best models (Table 3, the paper's value in brackets) beside CheXNet's DenseNet-121 by its public "
            "reproduction's recipe (in brackets: the reproduction's 0.838 over the 14 findings, on its own split; CheXNet reported "
            "0.841) and a chest-X-ray-pretrained DenseNet-121. The new rows tune their thresholds by the midpoint rule.\n\n"
            + table(["Metric"] + [f"{title} (`{name}`)" for name, title, _, _ in columns], rows) + warning)  # fmt: skip


def shared_images(predictions: list[PredictionsFile], labels: tuple[str, ...] | None = None) -> list[PredictionsFile]:
    """Each predictions file restricted to the images all of them hold (and to ``labels``), in one order."""
    common = set(predictions[0].images)
    for p in predictions[1:]:
        common &= set(p.images)
    order = np.array(sorted(common), dtype=object)
    out = []
    for p in predictions:
        rows = pd.Index(p.images).get_indexer(order)
        cols = [p.label_names.index(name) for name in (labels or p.label_names)]
        out.append(PredictionsFile(p.images[rows], p.probs[rows][:, cols], p.targets[rows][:, cols], tuple(labels or p.label_names), p.patients[rows]))
    return out


def _compared(runs_a: list[Run], runs_b: list[Run], labels: tuple[str, ...] | None = None):
    """The runs' test predictions on the images all of them hold; a note when that is fewer than each holds."""
    names = [set(r.label_names) for r in runs_a + runs_b]
    if labels is None and any(n != names[0] for n in names):
        return None, f"not comparable: {runs_a[0].row} and {runs_b[0].row} predict different labels"
    aligned = shared_images([r.test for r in runs_a + runs_b], labels or runs_a[0].label_names)
    if len(aligned[0].images) == 0:
        return None, f"not comparable: {runs_a[0].row} and {runs_b[0].row} share no test image"
    if not all(np.array_equal(a.targets, aligned[0].targets) for a in aligned):
        return None, f"not comparable: {runs_a[0].row} and {runs_b[0].row} give the shared images different labels"
    sizes = [len(r.test.images) for r in runs_a + runs_b]
    note = None
    if any(size != len(aligned[0].images) for size in sizes):
        held = " and ".join(f"{s:,}" for s in dict.fromkeys(sizes))
        note = f"on the {len(aligned[0].images):,} test images both runs predicted ({held})"
    return aligned, note


def _seeds_note(runs_a: list[Run], runs_b: list[Run]) -> str:
    return f", means over {len(runs_a)} and {len(runs_b)} seeds" if len(runs_a) > 1 or len(runs_b) > 1 else ""


def pairwise_tests(runs: Runs, n_resamples: int, seed: int) -> str:
    _, columns = TABLE_3
    pairs = list(combinations(columns, 2))

    def tested(pair):
        ca, cb = pair
        runs_a, runs_b = runs.row(ca.run), runs.row(cb.run)
        aligned, note = _compared(runs_a, runs_b) if runs_a and runs_b else (None, None)
        if aligned is None:
            return runs_a, runs_b, None, note, None
        pa, pb = aligned[: len(runs_a)], aligned[len(runs_a) :]
        same_resamples = all((r.n_resamples, r.seed) == (n_resamples, seed) for r in runs_a + runs_b)
        if note is None and same_resamples and len({r.label_names for r in runs_a + runs_b}) == 1:
            # Every run tested exactly these images: its interval's replicates are this test's resamples.
            result = paired_test_from_intervals([r.interval(ca.group) for r in runs_a], [r.interval(cb.group) for r in runs_b])
            return runs_a, runs_b, (pa, pb), note, result
        result = seed_averaged_paired_test(
            [p.probs for p in pa], [p.probs for p in pb], pa[0].targets, [r.thresholds(ca.group) for r in runs_a],
            [r.thresholds(cb.group) for r in runs_b], pa[0].patients, n_resamples=n_resamples, seed=seed, label_names=pa[0].label_names,
        )  # fmt: skip
        return runs_a, runs_b, (pa, pb), note, result

    outcomes = map_in_threads(tested, pairs)
    macro_rows, delong_parts = [], []
    for (ca, cb), (runs_a, runs_b, aligned, note, result) in zip(pairs, outcomes):
        pair = f"{ca.title} - {cb.title}"
        if aligned is None:
            absent = BROKEN if BROKEN in (runs.absent(ca.run), runs.absent(cb.run)) else MISSING
            macro_rows.append([pair] + [note or absent] * len(METRIC_ROWS))
            continue
        pa, pb = aligned
        pair += f" ({note})" if note else ""
        pair += _seeds_note(runs_a, runs_b)
        metrics = result["metrics"]
        macro_rows.append([pair] + [
            f"{metrics.loc[key, 'diff']:+.4f} [{metrics.loc[key, 'lower']:+.3f}, {metrics.loc[key, 'upper']:+.3f}], p={metrics.loc[key, 'p_value']:.3g}"
            if key in metrics.index else "n/a" for key, _ in METRIC_ROWS
        ])  # fmt: skip
        if len(runs_a) == len(runs_b) == 1:  # DeLong compares two score vectors: one seed each
            delong = delong_multilabel(pa[0].probs, pb[0].probs, pa[0].targets, pa[0].label_names, holm=True)
            rows = [[label, f"{r['auc_a']:.4f}", f"{r['auc_b']:.4f}", f"{r['diff']:+.4f}", f"[{r['ci_low']:+.3f}, {r['ci_high']:+.3f}]",
                     f"{r['p_value']:.3g}", f"{r['p_holm']:.3g}"] if not math.isnan(r["auc_a"]) else [label] + ["n/a"] * 6
                    for label, r in delong.iterrows()]  # fmt: skip
            delong_parts.append(f"#### DeLong per label: {pair}\n\n"
                                + table(["Label", f"AUC {ca.title}", f"AUC {cb.title}", "Difference", "95% CI", "p", "p (Holm)"], rows))  # fmt: skip
    header = ["Pair (A - B)"] + [label for _, label in METRIC_ROWS]
    return ("### Pairwise tests between the three best models (Table 3's thresholds)\n\n"
            f"Differences with 95% intervals and two-sided p-values from a paired bootstrap over patients ({n_resamples} resamples, "
            f"seed {seed}); a model trained with several seeds counts as the mean over its seeds, every seed scored on the same "
            "resampled patients. Per-label AUROC differences by DeLong's test (single-seed pairs), with Holm's correction across "
            "labels. DeLong treats images as independent; the bootstrap does not.\n\n"
            + table(header, macro_rows) + "\n\n" + "\n\n".join(delong_parts))  # fmt: skip


def external_comparisons(runs: Runs, n_resamples: int, seed: int) -> str | None:
    """Each external run against the paper's best models, on the images and labels they share (AUROC: no tuned thresholds)."""
    externals = [run for run in runs.values() if run.external is not None and run.usable]
    if not externals:
        return None
    rows = []
    for ext in externals:
        for column in TABLE_3[1]:
            ours = runs.row(column.run)
            if not ours:
                rows.append([f"`{ext.name}` - {column.title}", runs.absent(column.run), "-", "-"])
                continue
            labels = tuple(name for name in ext.label_names if name in ours[0].label_names)
            aligned, note = _compared([ext], ours, labels)
            if aligned is None:
                rows.append([f"`{ext.name}` - {column.title}", note, "-", "-"])
                continue
            result = seed_averaged_paired_test([aligned[0].probs], [p.probs for p in aligned[1:]], aligned[0].targets, [0.5],
                                               [0.5] * len(ours), aligned[0].patients, n_resamples=n_resamples, seed=seed,
                                               label_names=labels)  # fmt: skip
            m = result["metrics"].loc["auroc_macro"]
            rows.append([f"`{ext.name}` - {column.title}{_seeds_note([ext], ours)}", f"{len(aligned[0].images):,} images, {len(labels)} labels",
                         f"{m['a']:.4f} vs {m['b']:.4f}", f"{m['diff']:+.4f} [{m['lower']:+.3f}, {m['upper']:+.3f}], p={m['p_value']:.3g}"])  # fmt: skip
    return ("### External predictions against the three best models\n\n"
            "Macro AUROC over the labels both predict, on the images both predicted; paired patient bootstrap "
            f"({n_resamples} resamples, seed {seed}).\n\n" + table(["Pair (A - B)", "Compared on", "AUROC A vs B", "Difference [95% CI], p"], rows))  # fmt: skip


def calibration_section(runs: Runs, figures_dir: Path, relative_to: Path) -> str:
    rows, figures = [], []
    for name, title in FIGURE_1_RUNS:
        found = runs.row(name)
        if not found:
            rows.append([f"{title} (`{name}`)"] + [runs.absent(name)] * 5)
            continue
        run = found[0]  # the first seed
        test = run.test
        before = calibration_table(test.probs, test.targets, test.label_names).loc["macro"]
        temperature = scaled_probs = None
        if run.val is not None:
            temperature = fit_temperature(run.val.probs, run.val.targets, kind="probs")
            scaled_probs = apply_temperature(test.probs, temperature)
            after = calibration_table(scaled_probs, test.targets, test.label_names).loc["macro"]
            scaled = [f"{temperature:.3f}", f"{after['ece']:.4f}", f"{after['brier']:.4f}"]
        else:
            scaled = ["no val_predictions.csv"] + ["-"] * 2
        rows.append([f"{title} (`{run.name}`)", f"{before['ece']:.4f}", f"{before['brier']:.4f}", *scaled])
        caption = "before and after temperature scaling" if scaled_probs is not None else "no temperature scaling: no validation predictions"
        path = reliability_diagram(test.probs, test.targets, test.label_names, figures_dir / f"reliability_{name}.png",
                                   title=f"{title}: reliability on the test set ({caption})", scaled_probs=scaled_probs,
                                   temperature=temperature)  # fmt: skip
        figures.append(f"![{title} reliability]({path.relative_to(relative_to).as_posix()})")
    header = ["Model", "ECE (macro)", "Brier (macro)", "Temperature (fit on validation)", "ECE after", "Brier after"]
    return ("### Calibration (test set; temperature scaling fitted on the validation predictions only)\n\n"
            + table(header, rows) + "\n\n" + "\n\n".join(figures))  # fmt: skip


def localization_section(runs: Runs) -> str:
    """Pointing game and energy in the box per label, from ``<run>/explain/localization.csv``."""
    parts = []
    for name, title in FIGURE_1_RUNS:
        found = runs.by_row.get(name, [])
        path = found[0].folder / "explain" / "localization.csv" if found and found[0].folder else None
        if path is None or not path.is_file():
            parts.append(f"- {title} (`{name}`): {MISSING} (`make explain`)")
            continue
        frame = pd.read_csv(path)
        rows = []
        for _, r in frame.iterrows():
            empty = int(r["empty_heatmaps"]) if "empty_heatmaps" in frame.columns else 0
            rows.append([str(r["label"]), str(int(r["n_boxes"])), f"{r['pointing_hit_rate']:.3f}", f"{r['mean_energy_in_box']:.3f}",
                         f"{r['mean_box_area_fraction']:.3f}", f"{empty} (flagged)" if empty else "0"])  # fmt: skip
        parts.append(f"#### {title} (`{found[0].name}`)\n\n"
                     + table(["Label", "Boxes", "Pointing-game hit rate", "Heatmap energy in the box", "Box area (energy by chance)",
                              "Empty heatmaps"], rows))  # fmt: skip
    return ("### Localisation: Grad-CAM against the bounding boxes\n\n"
            "Hit: the heatmap's maximum falls inside the box. Energy: the fraction of the heatmap's mass inside the box; "
            "the box's share of the image is what a uniform heatmap would score. An empty heatmap (all zero: the model's "
            "gradient gave the class no positive evidence) scores as a miss and is counted.\n\n" + "\n\n".join(parts))  # fmt: skip


def table_4(runs: Runs) -> str:
    """Class prevalence per part, from the data the paper rows' runs used (else the packaged NIH metadata)."""
    from cxr_lightning.data.split_statistics import prevalence_table
    from cxr_lightning.evaluation.run_data import run_split

    source = next((run for name in PAPER_RUNS for run in runs.by_row.get(name, []) if run.config), None)
    meta, split, where = run_split(source)
    frame = prevalence_table(meta, split)
    rows = [[label] + [f"{frame.loc[label].iloc[i]:.2f} ({TABLE_4[label][i]:.2f})" for i in range(3)] for label in TABLE_4 if label in frame.index]
    rows.append(["images"] + [f"{int(v):,}" for v in frame.loc["images"]])
    rows.append(["patients"] + [f"{int(v):,}" for v in frame.loc["patients"]])
    header = ["Condition", "% positive in Training", "% positive in Validation", "% positive in Testing"]
    return f"### Table 4 (Appendix D): class prevalence per split ({where}; the paper's in brackets)\n\n" + table(header, rows)


def roc_figures(runs: Runs, figures_dir: Path, relative_to: Path) -> str:
    from cxr_lightning.evaluation.plots import plot_roc_curves

    parts = []
    for name, title in FIGURE_1_RUNS:
        found = runs.row(name)
        if not found:
            parts.append(f"- {title} (`{name}`): {runs.absent(name)}")
            continue
        p = found[0].test
        path = plot_roc_curves(p.probs, p.targets, list(p.label_names), figures_dir / f"roc_{name}.png", title=f"{title}: per-label ROC (test)")
        parts.append(f"![{title}]({path.relative_to(relative_to).as_posix()})")
    return "### Figure 1: per-label ROC curves of the best model of each kind\n\n" + "\n\n".join(parts)


def _status(run: Run) -> str:
    if run.problem:
        return f"{BROKEN}: {run.problem}"
    return "done" if run.usable else "not tested"


def runs_table(runs: Runs) -> str:
    rows = [[f"`{r.name}`", _status(r), f"{len(r.test.images):,}" if r.usable else "-", r.tested_images if r.usable else "-",
             r.description, "; ".join(r.notes) or "-"] for r in runs.values()]  # fmt: skip
    return table(["Run", "Status", "Test images", "Which images", "Model and settings", "Notes"], rows)


def per_finding_table(run: Run) -> str:
    """A run's per-label test results: AUROC [interval], and F1, precision, recall at its thresholds."""
    group = "tuned" if run.metrics is not None else "default"
    recomputed, bounds = run.recomputed(group), run.interval(group)
    rows = []
    for name in run.label_names:
        r, b = recomputed["per_label"][name], bounds["per_label"].loc[name]
        rows.append([name, f"{r['positives']:,}", number(r["auroc"]) + interval(b["lower"], b["upper"]), number(r["f1"]),
                     number(r["precision"]), number(r["recall"]), f"{r['threshold']:.3f}"])  # fmt: skip
    rows.append([f"**macro ({len(run.label_names)} labels)**", "", number(recomputed["auroc_macro"])
                 + interval(bounds["lower"]["auroc_macro"], bounds["upper"]["auroc_macro"]), number(recomputed["f1_macro"]),
                 number(recomputed["precision_macro"]), number(recomputed["recall_macro"]), ""])  # fmt: skip
    thresholds = "its tuned thresholds" if group == "tuned" else "0.5 (no tuned thresholds)"
    return (f"#### `{run.name}`: {run.description}\n\nTested: {run.tested_images}. F1, precision and recall at {thresholds}.\n\n"
            + table(["Label", "Positives", "AUROC [95% CI]", "F1", "Precision", "Recall", "Threshold"], rows))  # fmt: skip


def label_sentence(runs: Runs) -> str:
    counts = sorted({len(r.label_names) for r in runs.values() if r.usable})
    if not counts:
        return "Macro averages are over each run's labels"
    described = " or ".join(f"{n}" + (" (the 14 findings and No Finding, as in the paper)" if n == 15 else "") for n in counts)
    return f"Macro averages are over the {described} labels each run predicts"


def load_runs(runs_dir: str | Path, n_resamples: int = 2000, seed: int = 0, external: list[str] = ()) -> Runs:
    """Every run folder under ``runs_dir`` and every external CSV; each broken run is named on stderr."""
    runs_dir = Path(runs_dir)
    found = {name: load_run(runs_dir, name, n_resamples, seed) for name in find_run_folders(runs_dir)}
    for spec in external:
        name, path = parse_external(spec)
        if name in found:
            raise PredictionsFileError(f"--external {spec}: a run named {name!r} exists in {runs_dir}; choose another NAME")
        found[name] = load_external(name, path, n_resamples, seed)
    for run in found.values():
        if run.problem:
            print(f"cxr-lightning: warning: run {run.name} left out of the report: {run.problem}", file=sys.stderr)
    return Runs(found)


def build_report(runs_dir: str | Path, out: str | Path, n_resamples: int = 2000, seed: int = 0, runs: Runs | None = None) -> str:
    """Write the report to ``out`` (figures in ``out``'s folder / figures) and return its text.

    ``runs``: from :func:`load_runs` (read here when not given).
    """
    runs_dir, out = Path(runs_dir), Path(out)
    figures = out.parent / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    runs = runs if runs is not None else load_runs(runs_dir, n_resamples, seed)
    # Every run's intervals first, in parallel (each section then reads them from the run's cache).
    map_in_threads(lambda run: run.interval("tuned"), [run for run in runs.values() if run.usable])
    body = [
        "## The paper's tables",
        metric_table(TABLE_1, runs),
        metric_table(TABLE_2, runs, TABLE_2_SETTINGS),
        metric_table(TABLE_3, runs),
        table_4(runs),
        *[threshold_table(title, runs, name, paper) for title, name, paper in THRESHOLD_TABLES],
        roc_figures(runs, figures, out.parent),
        "## Beyond the paper",
        pairwise_tests(runs, n_resamples, seed),
        external_comparisons(runs, n_resamples, seed),
        calibration_section(runs, figures, out.parent),
        localization_section(runs),
        imbalance_table(runs),
        backbone_table(runs),
        "## Beyond NIH's labels",
        expert_label_section(runs, figures, out.parent, n_resamples, seed),
        subgroup_section(runs, n_resamples, seed),
        "## Every run: per-finding results\n\n" + "\n\n".join(per_finding_table(r) for r in runs.values() if r.usable),
    ]
    banner = [SYNTHETIC_BANNER] if any(r.synthetic for r in runs.values()) else []
    sections = [
        "# cxr-lightning: the paper's tables, reproduced",
        *banner,
        f"Runs read from `{runs_dir}`. Each cell is **this project's value [95% interval] (the paper's value)**, recomputed from "
        f"the run's `test_predictions.csv`; the intervals are percentile intervals of a bootstrap that resamples patients "
        f"({n_resamples} resamples, seed {seed}), since images of one patient are not independent. A row trained with several "
        "seeds (`RUNS/<row>/seed<k>/`) shows the mean ± sd over its seeds; each seed's intervals are under \"Every run\". "
        f"`missing` marks a row that has not been made (`make tables`). {label_sentence(runs)}; the last row of each table adds "
        "the mean AUROC of the 14 findings that most of the literature reports.",
        "## Runs\n\n" + runs_table(runs),  # after the sections: computing them notes what a reader must know
        *body,
    ]
    text = "\n\n".join(s for s in sections if s) + "\n"
    atomic_write_text(out, text)
    return text


def main(argv: list[str] | None = None) -> int:
    parser = CommandParser(prog="cxr-lightning report", description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=Path("runs"), help="folder holding one folder per run (default: runs)")
    parser.add_argument("--out", type=Path, default=None, help="report file (default: RUNS/report.md)")
    parser.add_argument("--external", action="append", default=[], metavar="NAME=CSV",
                        help="add a predictions CSV made elsewhere as a run (an image column and prob_<Label> columns; "
                        "label_<Label> columns, or NIH's labels by image name); repeatable")  # fmt: skip
    parser.add_argument("--bootstrap", type=int, default=2000, help="patient-bootstrap resamples for intervals and tests")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    args = parser.parse_args(argv)
    out = args.out or args.runs / "report.md"
    check_writable_folder(out.parent, "the report")  # before the bootstrap, not after it
    runs = load_runs(args.runs, args.bootstrap, args.seed, args.external)
    build_report(args.runs, out, args.bootstrap, args.seed, runs=runs)
    print(f"wrote {out} and its figures in {out.parent / 'figures'}")
    broken = [r.name for r in runs.values() if r.problem]
    if broken and not any(r.usable for r in runs.values()):
        print(f"cxr-lightning: error: no usable run in {args.runs}: {len(broken)} broken ({', '.join(broken)}), see above", file=sys.stderr)
        return 1
    return 0
