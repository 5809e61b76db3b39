"""Data augmentation as pure functions on whole batches (B x C x H x W, any dtype, on any device).

Randomness comes only from the `torch.Generator` passed in, which lives on the batch's device: the same generator
state gives the same batch, and no per-sample Python or PIL work is done. Every function returns its batch in the
memory layout it was given (NCHW, or channels_last where the data set is kept so for the model): a layout change
here would make the model's first convolution copy the batch back every step.
"""

from __future__ import annotations

import math

import torch

from stn_ablation.errors import ConfigError
from stn_ablation.transforms import warp


def _is_channels_last(x: torch.Tensor) -> bool:
    """True for a batch stored NHWC (with one channel both layouts are the same, and NCHW is answered)."""
    return not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


def hflip(x: torch.Tensor) -> torch.Tensor:
    """Mirror every image left-right."""
    return x.flip(-1)


def random_hflip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Mirror each image with probability 1/2."""
    flip = torch.rand(x.shape[0], device=x.device, generator=generator) < 0.5
    return torch.where(flip[:, None, None, None], hflip(x), x)


def crop(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, pad: int,
         mirror: torch.Tensor | None = None) -> torch.Tensor:
    """Cut from each image b of the batch, zero-padded by `pad`, the H x W window at offset (dy[b], dx[b]) in
    [0, 2*pad] (a translation by (pad - dy, pad - dx) pixels, uncovered pixels zero, the mean colour once
    normalized), mirrored left-right where `mirror[b]`. One gather from the unpadded batch with clamped indices and
    a mask: no padded copy, no second gather, no pass for the flip. A channels_last batch is gathered as
    B x H*W x C, whole pixels at a time, and stays channels_last."""
    b, c, h, w = x.shape
    rows = dy[:, None] - pad + torch.arange(h, device=x.device)  # B x H source rows
    cols = dx[:, None] - pad + torch.arange(w, device=x.device)  # B x W source columns
    if mirror is not None:
        cols = torch.where(mirror[:, None], cols.flip(1), cols)
    inside = ((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :]  # B x H x W
    index = rows.clamp(0, h - 1)[:, :, None] * w + cols.clamp(0, w - 1)[:, None, :]  # B x H x W, into H*W
    if _is_channels_last(x):
        pixels = x.permute(0, 2, 3, 1).reshape(b, h * w, c)  # a view of the NHWC storage
        out = pixels.gather(1, index.view(b, h * w, 1).expand(b, h * w, c)).view(b, h, w, c).permute(0, 3, 1, 2)
    else:
        out = x.flatten(2).gather(2, index.view(b, 1, h * w).expand(b, c, h * w)).view(b, c, h, w)
    return out.masked_fill_(~inside[:, None], 0)


def random_crop(x: torch.Tensor, pad: int, generator: torch.Generator, *, flip: bool = False) -> torch.Tensor:
    """The standard CIFAR crop: pad by `pad` pixels, cut a random H x W window from each image; with `flip`, also
    mirror each image with probability 1/2 (drawn after the offsets, as `random_hflip` would draw it)."""
    offsets = torch.randint(0, 2 * pad + 1, (2, x.shape[0]), device=x.device, generator=generator)
    mirror = torch.rand(x.shape[0], device=x.device, generator=generator) < 0.5 if flip else None
    return crop(x, offsets[0], offsets[1], pad, mirror)


def affine_warp(x: torch.Tensor, degrees: torch.Tensor | float = 0.0, scale: torch.Tensor | float = 1.0,
                shift_px: tuple[torch.Tensor | float, torch.Tensor | float] = (0.0, 0.0)) -> torch.Tensor:
    """Rotate by `degrees` (counter-clockwise), zoom by `scale` (> 1 enlarges the content) and move by `shift_px`
    pixels (right, down), per image or for the whole batch, through the "rts" family's warp: bilinear, filling with
    zero (the mean colour once normalized), the same fill for every model, so no variant is favoured by the border."""
    b, _, h, w = x.shape
    as_batch = lambda v: torch.as_tensor(v, dtype=torch.float32, device=x.device).expand(b)  # noqa: E731
    angle, s = as_batch(degrees) * (math.pi / 180), 1 / as_batch(scale)
    # The rts map samples output -> input: the inverse of the wanted motion, whose shift turns with the rotation
    tx, ty = -2 * as_batch(shift_px[0]) / w, -2 * as_batch(shift_px[1]) / h
    cos, sin = torch.cos(angle) * s, torch.sin(angle) * s
    params = torch.stack([angle, s, cos * tx - sin * ty, sin * tx + cos * ty], 1)
    layout = torch.channels_last if _is_channels_last(x) else torch.contiguous_format
    return warp(x, params, "rts").contiguous(memory_format=layout)


# Bumped when an augmentation's numbers change (the run identity carries it for runs that use it): "affine" is 2
# since its matrix is built as the "rts" family's, which moves its warps by a few float ulps.
VERSIONS = {"affine": 2}

AFFINE_DEGREES = 30.0  # "affine" augmentation: rotation uniform in +-30 degrees,
AFFINE_SCALE = (0.8, 1.2)  # zoom uniform in [0.8, 1.2],
AFFINE_SHIFT = 4.0  # and translation uniform in +-4 pixels on each axis


def random_affine(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random rotation, zoom and translation per image: the distortions a spatial transformer can undo."""
    u = torch.rand(4, x.shape[0], device=x.device, generator=generator)
    degrees = (2 * u[0] - 1) * AFFINE_DEGREES
    scale = AFFINE_SCALE[0] + u[1] * (AFFINE_SCALE[1] - AFFINE_SCALE[0])
    return affine_warp(x, degrees, scale, ((2 * u[2] - 1) * AFFINE_SHIFT, (2 * u[3] - 1) * AFFINE_SHIFT))


def augment(x: torch.Tensor, kind: str, generator: torch.Generator, *, flip: bool = True) -> torch.Tensor:
    """Apply augmentation `kind` to a training batch: "none"; "standard" (4-pixel crop + flip); "affine" (random
    rotation, zoom and shift + flip). `flip=False` for data whose classes are not mirror-symmetric (digits)."""
    if kind == "none":
        return x
    if kind == "standard":
        return random_crop(x, 4, generator, flip=flip)
    if kind == "affine":
        x = random_affine(x, generator)
        return random_hflip(x, generator) if flip else x
    raise ConfigError(f"unknown augmentation {kind!r}; choose none, standard or affine")
