"""Pictures of what a spatial transformer does: input images beside their transformed versions."""

from __future__ import annotations

import torch
import torch.nn as nn
from matplotlib.figure import Figure

from stn_ablation.data.datasets import DataSplits, denormalize


@torch.no_grad()
def stn_grid(model: nn.Module, data: DataSplits, n: int = 16, title: str = "") -> Figure:
    """Row pairs of the first `n` test images (top) and what the model's transformer makes of them (bottom). A bare
    Figure, drawn by Agg when saved: no pyplot, so no backend is chosen for the process and nothing needs closing."""
    was_training = model.training
    model.eval()
    x = data.test_x[:n]
    warped = model.stn(x)
    model.train(was_training)
    before, after = denormalize(x, data), denormalize(warped, data)
    cols = min(n, 8)
    rows = 2 * ((n + cols - 1) // cols)
    fig = Figure(figsize=(cols * 1.1, rows * 1.15))
    axes = fig.subplots(rows, cols, squeeze=False)
    for i in range(n):
        r, c = 2 * (i // cols), i % cols
        for row, img in ((r, before[i]), (r + 1, after[i])):
            axes[row][c].imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray")
    for ax in axes.flat:  # no frame or ticks; the first column keeps its row label
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_frame_on(False)
    for row in range(rows):
        axes[row][0].set_ylabel("input" if row % 2 == 0 else "transformed", fontsize=8)
    fig.suptitle(title or "input (upper row) / transformed (lower row)", fontsize=9)
    fig.tight_layout()
    return fig
