"""Figures people look at: per-label ROC curves (the paper's Figure 1).

Figures are drawn on their own ``Figure`` with an Agg canvas, never through ``pyplot``: the
package must not switch the user's matplotlib backend (a notebook's inline one, say) nor keep
figures open in pyplot's registry.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torchmetrics.functional.classification import binary_auroc, binary_roc

#: Ten clearly different colours, then the same ten dashed and dotted: 15 labels never share a look
#: (a continuous colour map gives neighbouring labels near-identical hues).
LINE_STYLES = ("-", "--", ":")


def line_style(i: int) -> dict:
    """Colour and dash of the ``i``-th curve of a figure."""
    return {"color": f"C{i % 10}", "linestyle": LINE_STYLES[(i // 10) % len(LINE_STYLES)]}


def plot_roc_curves(probs: np.ndarray, targets: np.ndarray, label_names: list[str], path: str | Path, title: str = "") -> Path:
    """One ROC curve per label, its AUROC and its number of positives in the legend; saved as PNG at ``path``."""
    fig = Figure(figsize=(10.5, 6.5), dpi=120)
    FigureCanvasAgg(fig)  # attaches itself to fig: savefig renders PNG without any backend switch
    ax = fig.add_subplot()
    for i, name in enumerate(label_names):
        y = torch.tensor(np.asarray(targets[:, i])).long()
        if y.numel() == 0 or y.min() == y.max():
            continue  # ROC undefined with one class (or none: every image skipped)
        p = torch.tensor(np.asarray(probs[:, i])).float()
        fpr, tpr, _ = binary_roc(p, y)
        auc = binary_auroc(p, y).item()
        ax.plot(fpr.numpy(), tpr.numpy(), lw=1.4, label=f"{name}: AUC {auc:.3f}, {int(y.sum()):,} positives", **line_style(i))
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.set(xlabel="False positive rate", ylabel="True positive rate", xlim=(0, 1), ylim=(0, 1.01), title=title or "Per-label ROC curves (test)")
    if ax.get_legend_handles_labels()[0]:  # no curve at all when every label is single-class
        # Beside the axes, not over the curves.
        ax.legend(fontsize=7, loc="lower left", bbox_to_anchor=(1.02, 0.0), title=f"{len(targets):,} images", title_fontsize=7)
    ax.set_aspect("equal")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    return path
