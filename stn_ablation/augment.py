"""Data augmentation as pure functions on whole batches (B x C x H x W, any dtype, on any device).

Randomness comes only from the `torch.Generator` passed in, which lives on the batch's device: the same generator
state gives the same batch, and no per-sample Python or PIL work is done.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from stn_ablation.errors import ConfigError


def hflip(x: torch.Tensor) -> torch.Tensor:
    """Mirror every image left-right."""
    return x.flip(-1)


def random_hflip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Mirror each image with probability 1/2."""
    flip = torch.rand(x.shape[0], device=x.device, generator=generator) < 0.5
    return torch.where(flip[:, None, None, None], hflip(x), x)


def shift(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, pad: int) -> torch.Tensor:
    """Crop each image b of the zero-padded batch at offset (dy[b], dx[b]) in [0, 2*pad]: a translation by
    (pad - dy, pad - dx) pixels that fills uncovered pixels with zero (the mean colour once normalized)."""
    b, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))  # B x C x H+2p x W+2p
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None].expand(b, c, h, w + 2 * pad)
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :].expand(b, c, h, w)
    return padded.gather(2, rows).gather(3, cols)  # B x C x H x W


def random_crop(x: torch.Tensor, pad: int, generator: torch.Generator) -> torch.Tensor:
    """The standard CIFAR crop: pad by `pad` pixels, cut a random H x W window from each image."""
    offsets = torch.randint(0, 2 * pad + 1, (2, x.shape[0]), device=x.device, generator=generator)
    return shift(x, offsets[0], offsets[1], pad)


def augment(x: torch.Tensor, kind: str, generator: torch.Generator, *, flip: bool = True) -> torch.Tensor:
    """Apply augmentation `kind` ("none" or "standard") to a training batch. `flip=False` for data whose classes
    are not mirror-symmetric (digits)."""
    if kind == "none":
        return x
    if kind == "standard":
        x = random_crop(x, 4, generator)
        return random_hflip(x, generator) if flip else x
    raise ConfigError(f"unknown augmentation {kind!r}; choose none or standard")
