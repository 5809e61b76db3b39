"""Inference over a whole tensor split in large batches, with no host synchronisation until the end."""

from __future__ import annotations

import torch
import torch.nn as nn

from stn_ablation.device import autocast
from stn_ablation.faults import fault_point


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int, amp: torch.dtype | None = None) -> torch.Tensor:
    """Predicted class of every image in `x` (N x C x H x W on the model's device), as an N-long tensor there."""
    fault_point("evaluate")
    was_training = model.training
    model.eval()
    with autocast(x.device, amp):
        preds = torch.cat([model(x[i:i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)])
    model.train(was_training)
    return preds


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int,
             amp: torch.dtype | None = None) -> float:
    """Top-1 accuracy on [0, 1]; NaN for an empty split."""
    if len(y) == 0:
        return float("nan")
    return (predict(model, x, batch_size, amp) == y).float().mean().item()


def per_class_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, num_classes: int, batch_size: int,
                       amp: torch.dtype | None = None) -> list[float]:
    """Top-1 accuracy of each true class, in class-index order."""
    hits = (predict(model, x, batch_size, amp) == y).float()
    totals = torch.bincount(y, minlength=num_classes).clamp_min(1)
    return (torch.bincount(y, weights=hits, minlength=num_classes) / totals).tolist()
