"""Does this tree give the same numbers as an older one? The demo trained by both, compared exactly.

Trains ``configs/demo.yaml`` (synthetic data made by each tree, CPU, seed 0) once with an older
checkout's code and once with this tree's, each in its own temporary folder, and prints one table:
every value of ``metrics.json`` (both threshold groups), the tuned thresholds, and the test
probabilities, with the largest difference of each. Behaviour unchanged means every row says
``identical``. The paper's threshold rule (``score``) is used for this tree, since the older
demo knew no other (``--rule midpoint`` compares the shipped demo's rule instead).

    git worktree add /tmp/before 3cff51b          # the commit before the redesign (issue 13)
    python benchmarks/same_numbers.py --before /tmp/before
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from cxr_lightning.cli.parser import CommandParser
from cxr_lightning.evaluation.markdown import table

HERE = Path(__file__).resolve().parents[1]


def train_demo(checkout: Path, folder: Path, extra: list[str]) -> Path:
    """``fit --config <checkout>/configs/demo.yaml`` with ``checkout``'s code, in ``folder``; the run folder."""
    env = {**os.environ, "PYTHONPATH": str(checkout), "WANDB_SILENT": "true", "WANDB_MODE": "offline"}
    command = [sys.executable, "-m", "cxr_lightning", "fit", "--config", str(checkout / "configs" / "demo.yaml"),
               "--trainer.enable_progress_bar=false", *extra]  # fmt: skip
    start = time.perf_counter()
    done = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"the demo failed with the code of {checkout}:\n{done.stderr[-3000:]}")
    print(f"trained the demo with {checkout} in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return folder / "runs" / "demo"


def flat_metrics(run: Path) -> dict[str, float]:
    metrics = json.loads((run / "metrics.json").read_text())
    values = {f"{group}/{key}": value for group in ("default", "tuned") for key, value in metrics[group].items()
              if isinstance(value, (int, float))}  # fmt: skip
    values.update({f"threshold/{label}": value for label, value in metrics["thresholds"].items()})
    return values


def compare(before: Path, after: Path) -> list[list[str]]:
    rows = []
    old, new = flat_metrics(before), flat_metrics(after)
    for key in sorted(old.keys() | new.keys()):
        a, b = old.get(key), new.get(key)
        if a is None or b is None:
            rows.append([key, str(a), str(b), "only in one"])
            continue
        rows.append([key, f"{a:.10g}", f"{b:.10g}", "identical" if a == b else f"differs by {abs(a - b):.3g}"])
    old_predictions = pd.read_csv(before / "test_predictions.csv").set_index("image").sort_index()
    new_predictions = pd.read_csv(after / "test_predictions.csv").set_index("image").sort_index()
    columns = [c for c in old_predictions.columns if c.startswith("prob_")]
    same_images = old_predictions.index.equals(new_predictions.index)
    if not same_images:
        rows.append(["test images", f"{len(old_predictions):,}", f"{len(new_predictions):,}", "different image sets"])
    else:
        gap = float(np.max(np.abs(old_predictions[columns].to_numpy() - new_predictions[columns].to_numpy())))
        verdict = "identical" if gap == 0 else f"differs by up to {gap:.3g}"
        rows.append([f"test probabilities ({len(old_predictions):,} images x {len(columns)} labels)", "-", "-", verdict])
    return rows


def main() -> None:
    parser = CommandParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, required=True, help="a checkout of the older commit (git worktree add ...)")
    parser.add_argument("--rule", choices=("score", "midpoint"), default="score", help="this tree's threshold rule (default: the older demo's)")
    args = parser.parse_args()
    before = args.before.resolve()
    if not (before / "cxr_lightning").is_dir() or not (before / "configs" / "demo.yaml").is_file():
        sys.exit(f"--before {args.before}: not a checkout of this project (no cxr_lightning/ or configs/demo.yaml there)")
    with tempfile.TemporaryDirectory(prefix="same-numbers-") as scratch:
        old_folder, new_folder = Path(scratch, "before"), Path(scratch, "after")
        old_folder.mkdir()
        new_folder.mkdir()
        old_run = train_demo(before, old_folder, [])
        new_run = train_demo(HERE, new_folder, [f"--threshold_tuner.rule={args.rule}"])
        rows = compare(old_run, new_run)
    print(f"demo, {before} against {HERE} (threshold rule {args.rule})")
    print(table(["value", "before", "now", "verdict"], rows))
    changed = [r[0] for r in rows if r[3] != "identical"]
    print(f"{len(rows) - len(changed)} of {len(rows)} identical" + (f"; changed: {', '.join(changed)}" if changed else ""))


if __name__ == "__main__":
    main()
