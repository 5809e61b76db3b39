"""What a trained model does under distortion, and what its transformer learned: test accuracy along rotation,
scale and translation sweeps, and statistics of the affine matrices the localization net regresses."""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from stn_ablation.augment import affine_warp
from stn_ablation.config import RobustnessConfig
from stn_ablation.evaluate import accuracy


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


def decompose(theta: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-image parts of B x 2 x 3 affine matrices, with A = R(rotation) @ [[sx, shear], [0, sy]].

    theta maps output to input coordinates (affine_grid's convention), so scale < 1 means the transformer zooms in.
    """
    a, b, tx = theta[:, 0, 0], theta[:, 0, 1], theta[:, 0, 2]
    c, d, ty = theta[:, 1, 0], theta[:, 1, 1], theta[:, 1, 2]
    rotation = torch.atan2(c, a)
    cos, sin = torch.cos(rotation), torch.sin(rotation)
    identity = torch.tensor([[1.0, 0, 0], [0, 1.0, 0]], device=theta.device)
    return {
        "scale": (a * d - b * c).abs().sqrt(),
        "sx": torch.hypot(a, c),
        "sy": d * cos - b * sin,
        "rotation_deg": rotation * (180 / math.pi),
        "shear": b * cos + d * sin,
        "tx": tx,
        "ty": ty,
        "identity_dist": (theta - identity).flatten(1).norm(dim=1),
    }


@torch.no_grad()
def theta_stats(model: nn.Module, x: torch.Tensor, batch_size: int) -> dict[str, float]:
    """Mean and standard deviation of each transform part over the images `x`; empty for a model without STN."""
    stn = getattr(model, "stn", None)
    if stn is None:
        return {}
    was_training = model.training
    model.eval()
    theta = torch.cat([stn.theta(x[i:i + batch_size]).float() for i in range(0, len(x), batch_size)])
    model.train(was_training)
    out = {}
    for name, values in decompose(theta).items():
        out[f"theta/{name}_mean"] = values.mean().item()
        out[f"theta/{name}_std"] = values.std().item() if len(values) > 1 else 0.0
    return out
