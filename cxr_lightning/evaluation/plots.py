"""Figures people look at: per-label ROC curves (the paper's Figure 1).

Figures are drawn on their own ``Figure`` with an Agg canvas, never through ``pyplot``: the
package must not switch the user's matplotlib backend (a notebook's inline one, say) nor keep
figures open in pyplot's registry.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torchmetrics.functional.classification import binary_auroc, binary_roc


def plot_roc_curves(probs: np.ndarray, targets: np.ndarray, label_names: list[str], path: str | Path, title: str = "") -> Path:
    """One ROC curve per label with its AUROC in the legend; saved as PNG at ``path``."""
    fig = Figure(figsize=(7, 6), dpi=120)
    FigureCanvasAgg(fig)  # attaches itself to fig: savefig renders PNG without any backend switch
    ax = fig.add_subplot()
    colors = matplotlib.colormaps["tab20"](np.linspace(0, 1, len(label_names)))
    for i, name in enumerate(label_names):
        y = torch.as_tensor(targets[:, i]).long()
        if y.numel() == 0 or y.min() == y.max():
            continue  # ROC undefined with one class (or none: every image skipped)
        p = torch.as_tensor(probs[:, i]).float()
        fpr, tpr, _ = binary_roc(p, y)
        auc = binary_auroc(p, y).item()
        ax.plot(fpr.numpy(), tpr.numpy(), color=colors[i], lw=1.3, label=f"{name} ({auc:.3f})")
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.set(xlabel="False positive rate", ylabel="True positive rate", xlim=(0, 1), ylim=(0, 1.01), title=title or "Per-label ROC curves (test)")
    if ax.get_legend_handles_labels()[0]:  # no curve at all when every label is single-class
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    return path
