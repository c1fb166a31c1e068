"""``cxr-lightning report``: the paper's tables filled with this project's runs, beside the paper's.

Reads ``RUNS/<run>/metrics.json`` (and ``test_predictions.csv`` for the figures) of every run
the tables need, writes ``report.md`` with each cell as ``ours (paper)`` and the per-label ROC
figures as PNG files next to it. A run that has not been made shows as ``missing``; nothing is
filled in from elsewhere. Table 4 is computed from the metadata.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import yaml

from cxr_lightning.paper_results import (
    ALL_RUNS,
    FIGURE_1_RUNS,
    METRIC_ROWS,
    TABLE_1,
    TABLE_2,
    TABLE_2_SETTINGS,
    TABLE_3,
    TABLE_4,
    THRESHOLD_TABLES,
)

MISSING = "missing"


@dataclass
class Run:
    """What one run directory holds; ``metrics`` is None when the run has not been tested."""

    name: str
    folder: Path
    metrics: dict | None
    config: dict | None

    @property
    def data_root(self) -> str:
        return str(((self.config or {}).get("data") or {}).get("data_root", "?"))


def load_run(runs_dir: Path, name: str) -> Run:
    folder = runs_dir / name
    metrics_file, config_file = folder / "metrics.json", folder / "config.yaml"
    metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else None
    config = yaml.safe_load(config_file.read_text()) if config_file.is_file() else None
    return Run(name, folder, metrics, config)


def cell(run: Run, group: str, key: str, paper: float | None, digits: int = 4) -> str:
    paper_text = f"{paper:.{digits}f}" if paper is not None else "-"
    ours = None if run.metrics is None else run.metrics.get(group, {}).get(key)
    ours_text = MISSING if run.metrics is None else ("n/a" if ours is None or (isinstance(ours, float) and math.isnan(ours)) else f"{ours:.{digits}f}")
    return f"{ours_text} ({paper_text})"


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


def table_4() -> str:
    from cxr_lightning.data.metadata import packaged_file, read_metadata
    from cxr_lightning.data.splits import make_split
    from cxr_lightning.data.stats import prevalence_table

    meta = read_metadata()
    split = make_split("paper", meta, packaged_file("train_val_list.txt.gz"), packaged_file("test_list.txt.gz"))
    table = prevalence_table(meta, split)
    rows = [[label] + [f"{table.loc[label].iloc[i]:.2f} ({TABLE_4[label][i]:.2f})" for i in range(3)] for label in TABLE_4]
    rows.append(["images"] + [f"{int(v):,}" for v in table.loc["images"]])
    rows.append(["patients"] + [f"{int(v):,}" for v in table.loc["patients"]])
    header = ["Condition", "% positive in Training", "% positive in Validation", "% positive in Testing"]
    return "### Table 4 (Appendix D): class prevalence per split, from the metadata\n\n" + _table(header, rows)


def roc_figures(runs: dict[str, Run], figures_dir: Path, relative_to: Path) -> str:
    from cxr_lightning.plots import plot_roc_curves

    figures_dir.mkdir(parents=True, exist_ok=True)
    parts = []
    for name, title in FIGURE_1_RUNS:
        predictions_file = runs[name].folder / "test_predictions.csv"
        if not predictions_file.is_file():
            parts.append(f"- {title} (`{name}`): {MISSING}")
            continue
        predictions = pd.read_csv(predictions_file)
        labels = [c[len("prob_"):] for c in predictions.columns if c.startswith("prob_")]
        probs = predictions[[f"prob_{n}" for n in labels]].to_numpy()
        targets = predictions[[f"label_{n}" for n in labels]].to_numpy()
        path = plot_roc_curves(probs, targets, labels, figures_dir / f"roc_{name}.png", title=f"{title}: per-label ROC (test)")
        parts.append(f"![{title}]({path.relative_to(relative_to).as_posix()})")
    return "### Figure 1: per-label ROC curves of the best model of each kind\n\n" + "\n\n".join(parts)


def build_report(runs_dir: str | Path, out: str | Path) -> str:
    """Write the report to ``out`` (figures in ``out``'s folder / figures) and return its text."""
    runs_dir, out = Path(runs_dir), Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    runs = {name: load_run(runs_dir, name) for name in ALL_RUNS}
    status = _table(
        ["Run", "Status", "Test images", "Data root"],
        [[f"`{r.name}`", "done" if r.metrics else MISSING, f"{r.metrics['num_images']:,}" if r.metrics else "-", r.data_root if r.config else "-"]
         for r in runs.values()],
    )  # fmt: skip
    sections = [
        "# cxr-lightning: the paper's tables, reproduced",
        f"Runs read from `{runs_dir}`. Each cell is **this project's value (the paper's value)**; "
        "`missing` marks a run that has not been made (`make tables`). Macro averages are over the 15 "
        "columns, `No Finding` included, as in the paper; the last row of each table adds the mean "
        "AUROC of the 14 findings that most of the literature reports.",
        "## Runs\n\n" + status,
        metric_table(TABLE_1, runs),
        metric_table(TABLE_2, runs, TABLE_2_SETTINGS),
        metric_table(TABLE_3, runs),
        table_4(),
        *[threshold_table(title, runs[name], paper) for title, name, paper in THRESHOLD_TABLES],
        roc_figures(runs, out.parent / "figures", out.parent),
    ]
    text = "\n\n".join(sections) + "\n"
    out.write_text(text)
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cxr-lightning report", description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=Path("runs"), help="folder holding one folder per run (default: runs)")
    parser.add_argument("--out", type=Path, default=None, help="report file (default: RUNS/report.md)")
    args = parser.parse_args(argv)
    out = args.out or args.runs / "report.md"
    build_report(args.runs, out)
    print(f"wrote {out} and its figures in {out.parent / 'figures'}")
    return 0
