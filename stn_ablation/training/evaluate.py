"""Inference over a whole tensor split in large batches, with no host synchronisation until the end.

Every accuracy the suite logs (per epoch, final, per class, under distortion) comes from `score`: integer hit
counts, divided in float64 on the host. So the per-class table and the final test accuracy of a run are one
computation, and MLflow shows 0.3318 rather than a float32 rounding of it."""

from __future__ import annotations

import math
from dataclasses import dataclass

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


@dataclass(frozen=True)
class Score:
    """Correct predictions and images of each true class, in class-index order."""

    correct: tuple[int, ...]
    total: tuple[int, ...]

    @property
    def accuracy(self) -> float:
        """Top-1 accuracy on [0, 1], exact to float64; NaN for an empty split."""
        n = sum(self.total)
        return sum(self.correct) / n if n else math.nan

    def per_class(self) -> list[float]:
        """Accuracy of each class (NaN for a class with no image)."""
        return [c / t if t else math.nan for c, t in zip(self.correct, self.total)]


def score(model: nn.Module, x: torch.Tensor, y: torch.Tensor, num_classes: int, batch_size: int,
          amp: torch.dtype | None = None) -> Score:
    """Hit counts of `model` on (x, y) under autocast `amp`, read from the device once."""
    if len(y) == 0:
        return Score((0,) * num_classes, (0,) * num_classes)
    hits = (predict(model, x, batch_size, amp) == y).long()
    correct = torch.zeros(num_classes, dtype=torch.long, device=y.device).index_add_(0, y, hits)
    total = torch.bincount(y, minlength=num_classes)
    counts = torch.stack([correct, total]).tolist()  # one host transfer
    return Score(tuple(counts[0]), tuple(counts[1]))


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int,
             amp: torch.dtype | None = None) -> float:
    """`score`'s top-1 accuracy, for callers that have no use for the per-class counts; NaN for an empty split."""
    return score(model, x, y, int(y.max()) + 1 if len(y) else 0, batch_size, amp).accuracy
