"""Figures people look at: per-label ROC curves (the paper's Figure 1)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def plot_roc_curves(probs: np.ndarray, targets: np.ndarray, label_names: list[str], path: str | Path, title: str = "") -> Path:
    """One ROC curve per label with its AUROC in the legend; saved as PNG at ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch
    from torchmetrics.functional.classification import binary_auroc, binary_roc

    fig, ax = plt.subplots(figsize=(7, 6), dpi=120)
    colors = plt.get_cmap("tab20")(np.linspace(0, 1, len(label_names)))
    for i, name in enumerate(label_names):
        y = torch.as_tensor(targets[:, i]).long()
        if y.min() == y.max():
            continue  # ROC undefined with one class
        p = torch.as_tensor(probs[:, i]).float()
        fpr, tpr, _ = binary_roc(p, y)
        auc = binary_auroc(p, y).item()
        ax.plot(fpr.numpy(), tpr.numpy(), color=colors[i], lw=1.3, label=f"{name} ({auc:.3f})")
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.set(xlabel="False positive rate", ylabel="True positive rate", xlim=(0, 1), ylim=(0, 1.01), title=title or "Per-label ROC curves (test)")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path
