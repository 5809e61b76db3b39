"""What a trained model does under distortion, and what its transformer learned: test accuracy along rotation,
scale and translation sweeps, and statistics of the transforms the localization net regresses, in its family's
own terms (transforms.Family.describe)."""

from __future__ import annotations

import torch
import torch.nn as nn

from stn_ablation.data.augment import affine_warp
from stn_ablation.config import RobustnessConfig
from stn_ablation.training.evaluate import accuracy


def sweep_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, settings: RobustnessConfig,
                   batch_size: int, amp: torch.dtype | None = None) -> dict[str, float]:
    """`robust/<kind>/<value>` accuracies and `robust/<kind>/mean` over each sweep, on the first
    `settings.images` test images."""
    if settings.images == 0:
        return {}
    x, y = x[:settings.images], y[:settings.images]
    sweeps = {
        "rotate": lambda v: affine_warp(x, degrees=v),
        "scale": lambda v: affine_warp(x, scale=v),
        "translate": lambda v: affine_warp(x, shift_px=(v, v)),
    }
    out: dict[str, float] = {}
    for kind, distort in sweeps.items():
        values = getattr(settings, kind)
        accs = [accuracy(model, distort(float(v)), y, batch_size, amp) for v in values]
        out.update({f"robust/{kind}/{v:g}": a for v, a in zip(values, accs)})
        if accs:
            out[f"robust/{kind}/mean"] = sum(accs) / len(accs)
    return out


@torch.no_grad()
def theta_stats(model: nn.Module, x: torch.Tensor, batch_size: int) -> dict[str, float]:
    """Mean and standard deviation of each part of the transform (its family's `describe`: scale, rotation, ...
    for affine and its subsets, plus the perspective terms for projective, the control-point displacement for tps)
    over the images `x`; empty for a model without STN."""
    stn = getattr(model, "stn", None)
    if stn is None:
        return {}
    was_training = model.training
    model.eval()
    theta = torch.cat([stn.theta(x[i:i + batch_size]).float() for i in range(0, len(x), batch_size)])
    model.train(was_training)
    out = {}
    for name, values in stn.family.describe(theta).items():
        out[f"theta/{name}_mean"] = values.mean().item()
        out[f"theta/{name}_std"] = values.std().item() if len(values) > 1 else 0.0
    return out
