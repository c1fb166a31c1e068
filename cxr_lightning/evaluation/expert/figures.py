"""ROC figures against the radiologists' labels, with every radiologist's operating point, as the two papers draw them.

One PNG per scored finding: the model's ROC curve against the radiologists' labels (solid) and
against NIH's labels on the same images (dashed), each with its AUROC and positives in the
legend, and each reader's (1 - specificity, sensitivity) against the other readers' majority as
a marker. Drawn on a ``Figure`` with its own Agg canvas, never through ``pyplot`` (the package
must not switch the user's backend; see :mod:`cxr_lightning.evaluation.plots`).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torchmetrics.functional.classification import binary_roc

from cxr_lightning.evaluation.expert.scoring import ExpertScores
from cxr_lightning.evaluation.subgroups import MIN_POSITIVES, too_few

__all__ = ["plot_expert_roc_curves"]

# Colour-blind-safe pair (Okabe-Ito blue and vermilion) for the two curves; readers in black.
_EXPERT_COLOUR, _NIH_COLOUR, _READER_COLOUR = "#0072B2", "#D55E00", "black"
_READER_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "p", "h", "*", "8")


def _file_name(set_name: str, finding: str) -> str:
    return f"expert_roc_{set_name}_{re.sub(r'[^A-Za-z0-9]+', '_', finding).strip('_').lower()}.png"


def _curve(ax, probs: np.ndarray, targets: np.ndarray, auroc: float, colour: str, style: str, reference: str) -> None:
    positives = int(targets.sum())
    if positives == 0 or positives == len(targets):
        return  # ROC undefined with one class
    fpr, tpr, _ = binary_roc(torch.as_tensor(probs, dtype=torch.float64), torch.as_tensor(targets).long())
    value = "AUROC not reported" if not np.isfinite(auroc) else f"AUROC {auroc:.3f}"
    ax.plot(
        fpr.numpy(),
        tpr.numpy(),
        color=colour,
        linestyle=style,
        lw=1.6,
        label=f"model vs {reference} ({value}; {positives} positives)",
    )


def plot_expert_roc_curves(scores: ExpertScores, folder: str | Path, reader_points: pd.DataFrame | None = None) -> list[Path]:
    """Write one ROC figure per scored finding of ``scores`` into ``folder``; returns the files written.

    ``reader_points``: :func:`~cxr_lightning.evaluation.expert.readers.reader_operating_points`
    of the same set (best computed on the images the run shares: ``images=`` of each curve);
    a reader with fewer than :data:`~cxr_lightning.evaluation.subgroups.MIN_POSITIVES` reference
    positives or negatives is not drawn (the legend counts them).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    table = scores.table.set_index("finding")
    written = []
    for finding, curves in scores.curves.items():
        fig = Figure(figsize=(6.4, 6), dpi=120)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        _curve(ax, curves.probs, curves.expert, table.at[finding, "expert_auroc"], _EXPERT_COLOUR, "-", "radiologists")
        _curve(ax, curves.probs, curves.nih, table.at[finding, "nih_auroc"], _NIH_COLOUR, "--", "NIH labels")
        left_out = 0
        if reader_points is not None:
            points = reader_points[reader_points["finding"] == finding]
            enough = [not too_few(p.positives, p.tn + p.fp) for p in points.itertuples(index=False)]
            left_out = len(points) - sum(enough)
            for k, point in enumerate(points[enough].itertuples(index=False)):
                ax.plot(1 - point.specificity, point.sensitivity, linestyle="none", marker=_READER_MARKERS[k % len(_READER_MARKERS)],
                        markersize=7, markerfacecolor="white", markeredgecolor=_READER_COLOUR,
                        label=f"radiologist {point.reader} vs the others ({point.positives} positives)")  # fmt: skip
        if left_out:  # an invisible line carries the count into the legend
            ax.plot(
                [],
                [],
                linestyle="none",
                label=f"{left_out} radiologist(s) with fewer than {MIN_POSITIVES} positives or negatives: not drawn",
            )
        ax.plot([0, 1], [0, 1], color="0.6", lw=0.8, linestyle=":")
        ax.set(xlabel="False positive rate (1 - specificity)", ylabel="True positive rate (sensitivity)", xlim=(0, 1), ylim=(0, 1.01),
               title=f"{finding}: {scores.set_name} ({len(curves.probs)} images)")  # fmt: skip
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6.5, loc="lower right")
        fig.tight_layout()
        path = folder / _file_name(scores.set_name, finding)
        fig.savefig(path)
        written.append(path)
    return written
