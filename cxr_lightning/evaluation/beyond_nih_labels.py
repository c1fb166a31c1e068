"""The report's sections that look past NIH's text-mined labels: radiologists' labels and patient subgroups.

* Radiologists' labels (:mod:`cxr_lightning.evaluation.expert`): every run's AUROC against the
  adjudicated labels of Majkowska et al. (2020; 1,962 official test images, four findings) and the
  majority labels of Nabulsi et al. (2021; the 810 PA test images, 14 findings and abnormal), beside
  its AUROC against NIH's labels on the same images; each radiologist's operating point against the
  others' majority; ROC figures with those points for the best model of each kind.
* Subgroups (:mod:`cxr_lightning.evaluation.subgroups`): per-finding and macro AUROC by sex, age
  band and view, and the true- and false-positive rates at the tuned thresholds with the gaps
  between groups, for the three best models (each subgroup table needs several bootstraps of the
  whole test set; the section says which runs it covers).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from cxr_lightning.evaluation.expert import (
    all_findings,
    four_findings,
    plot_expert_roc_curves,
    reader_operating_points,
    score_against_experts,
)
from cxr_lightning.evaluation.expert.readers import markdown_table as readers_table
from cxr_lightning.evaluation.expert.scoring import markdown_table as expert_table
from cxr_lightning.evaluation.paper_results import FIGURE_1_RUNS, TABLE_3
from cxr_lightning.evaluation.parallel import map_in_threads
from cxr_lightning.evaluation.prediction_frames import read_predictions_frame
from cxr_lightning.evaluation.predictions_file import image_file_names
from cxr_lightning.evaluation.subgroups import (
    AGE_BANDS,
    attach_demographics,
    auroc_markdown_table,
    rates_markdown_table,
    subgroup_auroc,
    subgroup_rates,
)

#: The findings each set's papers draw as ROC figures (None: every scored finding): Majkowska et al.
#: show their four findings, Nabulsi et al. the normal-versus-abnormal curve.
FIGURES = {"four_findings_test": None, "all_findings_test": ("Abnormal",)}


def expert_label_section(runs, figures_dir: Path, relative_to: Path, n_resamples: int, seed: int) -> str:
    """Every usable run against both radiologist relabellings; figures for the best model of each kind."""
    sets = (four_findings("test"), all_findings())
    readers = {s.name: reader_operating_points(s) for s in sets}
    figure_rows = {name for name, _ in FIGURE_1_RUNS}
    parts = [
        "### Against radiologists' labels\n\n"
        "NIH's labels were mined from report text. Here each run is scored against radiologists' labels of part of the official "
        "test set, and against NIH's labels on the same images. Nodule or mass is scored as the larger of the Nodule and Mass "
        "probabilities; Airspace opacity as the largest of Consolidation, Infiltration, Pneumonia and Edema (our reading: the "
        "release does not define it); Abnormal as 1 - P(No Finding); Fracture has no NIH label and is not scored. "
        + " ".join(f"{s.name}: {s.citation}" for s in sets)
        + " NIH ChestX-ray14: Wang et al., CVPR 2017 (NIH Clinical Center, https://nihcc.app.box.com/v/ChestXray-NIHCC)."
    ]
    usable = [r for r in runs.values() if r.usable]
    tested = {}  # (run, set) -> how many of the set's images the run tested
    for run in usable:
        names = image_file_names(run.test.images)
        tested.update({(run.name, s.name): int(s.labels["image"].isin(names).sum()) for s in sets})
    # The scores (each a few bootstraps) in parallel; the tables and figures after, in order.
    jobs = [(run, s) for run in usable for s in sets if tested[run.name, s.name]]

    def score(job):
        run, expert_set = job
        return score_against_experts(run.test, expert_set, n_resamples=n_resamples, seed=seed)

    scored = {(run.name, s.name): scores for (run, s), scores in zip(jobs, map_in_threads(score, jobs))}
    for run in usable:
        tables = []
        for expert_set in sets:
            if not tested[run.name, expert_set.name]:
                tables.append(f"`{expert_set.name}`: the run tested none of its {len(expert_set.labels):,} images (another test set, or synthetic data).")
                continue
            scores = scored[run.name, expert_set.name]
            tables.append(expert_table(scores))
            first_of_row = runs.row(run.row)[0] is run
            if run.row in figure_rows and first_of_row and len(scores.missing_images) < scores.set_images:
                folder = figures_dir / "expert" / run.row
                drawn = FIGURES.get(expert_set.name)
                shown = scores if drawn is None else replace(scores, curves={k: v for k, v in scores.curves.items() if k in drawn})
                for path in plot_expert_roc_curves(shown, folder, readers[expert_set.name]):
                    tables.append(f"![{path.stem}]({path.relative_to(relative_to).as_posix()})")
        parts.append(f"#### `{run.name}`\n\n" + "\n\n".join(tables))
    for expert_set in sets:
        parts.append(f"#### The radiologists of {expert_set.name}, each against the majority of the others\n\n"
                     "Uncertain reads (HEDGE) and ties among the other readers are left out and counted.\n\n"
                     + readers_table(readers[expert_set.name]))  # fmt: skip
    return "\n\n".join(parts)


def subgroup_section(runs, n_resamples: int, seed: int) -> str:
    """The three best models (and external runs) by sex, age band and view."""
    bands = ", ".join(name for _, _, name in AGE_BANDS)
    parts = [
        "### Subgroups: sex, age band and view\n\n"
        f"Age bands (years): {bands}. Age, sex and view come from the predictions file when it carries them, else from the "
        "packaged NIH metadata by image name (`unknown` where neither has them). AUROC with patient-bootstrap intervals per group; "
        "at the run's tuned thresholds, the true- and false-positive rates per group and the gap between groups with its interval "
        "(resampling patients). A higher false-positive rate of No Finding in a group is underdiagnosis: its sick patients are "
        "called healthy more often. Groups with fewer than 10 positives or negatives of a label show counts, not rates."
    ]
    chosen = [runs.row(c.run)[0] for c in TABLE_3[1] if runs.row(c.run)] + [r for r in runs.values() if r.external is not None and r.usable]
    if not chosen:
        return parts[0] + "\n\nNone of Table 3's runs (or an external run) is there to report."
    def tables(run):
        # The run's own predictions file carries age, sex and view when test wrote them (the data it tested).
        own = run.folder / "test_predictions.csv" if run.folder is not None else None
        predictions = read_predictions_frame(own) if own is not None and own.is_file() else run.test
        predictions = attach_demographics(predictions)  # once for both tables
        aurocs = subgroup_auroc(predictions, n_resamples=n_resamples, seed=seed)
        return aurocs, subgroup_rates(predictions, run.thresholds("tuned"), n_resamples=n_resamples, seed=seed)

    results = map_in_threads(tables, chosen)
    for run, (aurocs, rates) in zip(chosen, results):
        thresholds = "tuned thresholds" if run.metrics is not None else "0.5 (no tuned thresholds)"
        parts.append(f"#### `{run.name}`: AUROC by group\n\n" + auroc_markdown_table(aurocs)
                     + f"\n\n#### `{run.name}`: rates at its {thresholds}\n\n" + rates_markdown_table(rates))  # fmt: skip
    return "\n\n".join(parts)
