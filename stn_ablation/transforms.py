"""Transformation families of a spatial transformer, as pure functions: parameters -> sampling grid.

Every family maps each output pixel to the input point it samples, in the normalized [-1, 1] coordinates of
`F.affine_grid` / `F.grid_sample` with align_corners=False (x right, y down, -1 and +1 the outer edges of the
image). The parameters therefore describe the *sampling* map, output -> input: a translation by +0.5 in x samples
half an image-width to the right, so the content moves left. One `grid_sample` (`warp`) samples for every family.

A family is its identity parameters (what a localization net's last bias starts at, with zero weight, so an STN
starts as the identity), its grid function and its `describe` function (named per-image statistics of what a
transformer learned, for the report). Adding a family is one grid function and one line in FAMILIES.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from stn_ablation.errors import ConfigError

Size = tuple[int, int]  # output H x W in pixels
GridFn = Callable[[torch.Tensor, Size], torch.Tensor]  # B x n params -> B x H x W x 2 sampling grid
DescribeFn = Callable[[torch.Tensor], dict[str, torch.Tensor]]  # B x n params -> name -> B values


@dataclass(frozen=True)
class Family:
    name: str
    identity: tuple[float, ...]  # the parameters of the identity map; their count is the family's
    grid: GridFn
    describe: DescribeFn

    @property
    def n_params(self) -> int:
        return len(self.identity)


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


def identity_grid(size: Size, device: torch.device | str = "cpu") -> torch.Tensor:
    """1 x H x W x 2: the normalized (x, y) centre of every output pixel, exactly as `F.affine_grid` computes it."""
    theta = torch.tensor([[[1.0, 0, 0], [0, 1.0, 0]]], device=device)
    return F.affine_grid(theta, [1, 1, *size], align_corners=False)


# --- the affine family and its subsets: parameters -> B x 2 x 3 matrix, then affine_grid ---

def translation_theta(p: torch.Tensor) -> torch.Tensor:
    """(tx, ty) -> [[1, 0, tx], [0, 1, ty]]."""
    one, zero = torch.ones_like(p[:, 0]), torch.zeros_like(p[:, 0])
    return torch.stack([torch.stack([one, zero, p[:, 0]], 1), torch.stack([zero, one, p[:, 1]], 1)], 1)


def attention_theta(p: torch.Tensor) -> torch.Tensor:
    """(s, tx, ty) -> [[s, 0, tx], [0, s, ty]]: the STN paper's attention; s < 1 zooms in."""
    zero = torch.zeros_like(p[:, 0])
    return torch.stack([torch.stack([p[:, 0], zero, p[:, 1]], 1), torch.stack([zero, p[:, 0], p[:, 2]], 1)], 1)


def rts_theta(p: torch.Tensor) -> torch.Tensor:
    """(angle in radians, s, tx, ty) -> [[s cos, -s sin, tx], [s sin, s cos, ty]]. A positive angle samples
    rotated clockwise on screen (y points down), so the content turns counter-clockwise; s < 1 zooms in."""
    cos, sin = torch.cos(p[:, 0]) * p[:, 1], torch.sin(p[:, 0]) * p[:, 1]
    return torch.stack([torch.stack([cos, -sin, p[:, 2]], 1), torch.stack([sin, cos, p[:, 3]], 1)], 1)


def affine_theta(p: torch.Tensor) -> torch.Tensor:
    """Six parameters, row-major, are the 2 x 3 matrix itself."""
    return p.view(-1, 2, 3)


def affine_family(name: str, identity: tuple[float, ...], theta: Callable[[torch.Tensor], torch.Tensor]) -> Family:
    """A family whose map is a 2 x 3 matrix built from its parameters: gridded by `F.affine_grid`, described by
    `decompose` (so every subset of affine reports the same statistics as affine)."""
    return Family(
        name, identity,
        lambda p, size: F.affine_grid(theta(p), [p.shape[0], 1, *size], align_corners=False),
        lambda p: decompose(theta(p)))


# --- projective: a homography, h33 fixed at 1 ---

HORIZON = 1e-3  # smallest homogeneous coordinate w kept; points at or beyond the horizon (w <= 0) sample nothing


def projective_grid(p: torch.Tensor, size: Size) -> torch.Tensor:
    """(h11, h12, h13, h21, h22, h23, h31, h32) -> H = [[h11, h12, h13], [h21, h22, h23], [h31, h32, 1]];
    each output point (x, y) samples (H @ [x, y, 1]) divided by its third coordinate. The first two rows are an
    affine_grid, so with h31 = h32 = 0 the grid is the affine one to the bit (w = 1 exactly). w is clamped at
    HORIZON: a point beyond the horizon maps far outside the image and samples the zero padding, not a mirror."""
    base = identity_grid(size, p.device)  # 1 x H x W x 2
    w = 1 + p[:, 6, None, None] * base[..., 0] + p[:, 7, None, None] * base[..., 1]  # B x H x W
    # contiguous: affine_grid's batched matmul on a strided view is 3x slower on the CPU
    affine = F.affine_grid(affine_theta(p[:, :6].contiguous()), [p.shape[0], 1, *size], align_corners=False)
    return affine / w.clamp(min=HORIZON)[..., None]


def describe_projective(p: torch.Tensor) -> dict[str, torch.Tensor]:
    """The affine part's decomposition, the perspective terms h31 and h32 (how fast w changes along x and y; 0 for
    an affine map), and the distance of all eight parameters from the identity."""
    identity = torch.tensor(FAMILIES["projective"].identity, device=p.device)
    return {**decompose(affine_theta(p[:, :6])), "px": p[:, 6], "py": p[:, 7],
            "identity_dist": (p - identity).norm(dim=1)}


# --- thin-plate spline: a 4 x 4 grid of control points ---

TPS_SIDE = 4  # control points per side, evenly spaced over [-1, 1] (at the image's edges and thirds)


def tps_control_points(dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """16 x 2 control points (x, y), row by row: point k sits at column k % 4 and row k // 4."""
    ticks = torch.linspace(-1, 1, TPS_SIDE, dtype=dtype)
    y, x = torch.meshgrid(ticks, ticks, indexing="ij")
    return torch.stack([x.flatten(), y.flatten()], 1)


def _tps_kernel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """U(r) = r^2 log r^2 between every point of a (N x 2) and of b (M x 2): N x M, with U(0) = 0."""
    r2 = (a[:, None] - b[None]).square().sum(-1)
    return r2 * torch.log(r2.clamp(min=1e-30))


@functools.lru_cache(maxsize=16)
def _tps_basis(size: Size, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """HW x 16 matrix M such that the spline through the control points P, moved to P + D, maps the output pixel
    centres Q to Q + M @ D. Solved once per output size in float64: the spline is linear in its targets, and since
    it reproduces affine maps exactly (M @ P = Q), D = 0 gives the identity grid to the bit."""
    points = tps_control_points()
    n = len(points)
    system = torch.zeros(n + 3, n + 3, dtype=torch.float64)
    system[:n, :n] = _tps_kernel(points, points)
    system[:n, n] = system[n, :n] = 1
    system[:n, n + 1:] = points
    system[n + 1:, :n] = points.T
    query = identity_grid(size).double().view(-1, 2)  # HW x 2
    features = torch.cat([_tps_kernel(query, points), torch.ones(len(query), 1, dtype=torch.float64), query], 1)
    return (features @ torch.linalg.inv(system)[:, :n]).to(device, dtype)  # HW x 16


def tps_grid(p: torch.Tensor, size: Size) -> torch.Tensor:
    """32 parameters: the (dx, dy) offset of each control point, point by point, in normalized units. The spline
    maps control point k of the output to P_k + D_k of the input, with the least bending in between."""
    offsets = p.view(-1, TPS_SIDE ** 2, 2)  # B x 16 x 2
    basis = _tps_basis(tuple(size), p.device, p.dtype)  # HW x 16
    return identity_grid(size, p.device).to(p.dtype) + (basis @ offsets).view(-1, *size, 2)


def describe_tps(p: torch.Tensor) -> dict[str, torch.Tensor]:
    """Mean control-point displacement (normalized units), the control points' mean offset as tx and ty, and the
    distance of all offsets from the identity (zero). tx and ty are not the spline's translation: the shift of its
    affine part differs from the mean offset wherever the spline bends (its bending term does not average out)."""
    offsets = p.view(-1, TPS_SIDE ** 2, 2)
    mean = offsets.mean(1)  # B x 2
    return {"displacement": offsets.norm(dim=2).mean(1), "tx": mean[:, 0], "ty": mean[:, 1],
            "identity_dist": p.norm(dim=1)}


FAMILIES: dict[str, Family] = {family.name: family for family in (
    affine_family("translation", (0.0, 0.0), translation_theta),
    affine_family("attention", (1.0, 0.0, 0.0), attention_theta),
    affine_family("rts", (0.0, 1.0, 0.0, 0.0), rts_theta),
    affine_family("affine", (1.0, 0.0, 0.0, 0.0, 1.0, 0.0), affine_theta),
    Family("projective", (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0), projective_grid, describe_projective),
    Family("tps", (0.0,) * 2 * TPS_SIDE ** 2, tps_grid, describe_tps),
)}


def family(name: str) -> Family:
    """The registered family `name`; a ConfigError names the choices."""
    if name not in FAMILIES:
        raise ConfigError(f"unknown transform family {name!r}; choose one of {', '.join(FAMILIES)}")
    return FAMILIES[name]


def warp(x: torch.Tensor, params: torch.Tensor, fam: Family | str, size: Size | None = None) -> torch.Tensor:
    """Sample the B x C x H x W batch `x` through `fam`'s map with B x n `params`, into an output of `size`
    (default: x's own H x W), bilinear, zero outside the input. Runs in fp32 whatever the autocast: bilinear
    interpolation in bf16/fp16 loses visible precision and the grid op is cheap."""
    fam = family(fam) if isinstance(fam, str) else fam
    with torch.autocast(x.device.type, enabled=False):
        xf = x.float()
        grid = fam.grid(params.float(), tuple(size or xf.shape[-2:]))  # B x H' x W' x 2
        return F.grid_sample(xf, grid, align_corners=False).to(x.dtype)  # B x C x H' x W'
