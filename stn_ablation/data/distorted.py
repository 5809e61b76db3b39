"""The STN paper's distorted MNIST (Jaderberg et al., 2015, section 4.1 and appendix) and a CIFAR-10 analogue of
its RTS set, generated deterministically from the uint8 originals, cached under the data root.

Each set draws its distortion per image from a generator seeded by (seed, set, split) alone, never torch's global
RNG, maps the draws to the parameters of a `transforms` family (rts, projective or tps) and samples whole batches
with that family's grid: the same maps the spatial transformers learn, written once. The result is cached as
`<root>/distorted/<name>-v<VERSION>.pt` (uint8 images, labels, the per-image draws, and `record`: the generation
parameters with a digest of the base set and of the result, which a run logs), written atomically and reused while
its version, seed and base digest match.

The sets, as the paper describes them:
- mnist_r: rotation uniform in [-90, +90] degrees.
- mnist_rts: rotation uniform in [-45, +45] degrees, scale uniform in [0.7, 1.2], placed at a uniformly random
  position in a 42 x 42 canvas.
- mnist_p: scale uniform in [0.75, 1.0], then each corner of the frame moved by a normal offset (sd 5 px): a
  projective warp.
- mnist_e: scale uniform in [0.75, 1.0], then an elastic warp: a thin-plate spline through a 4 x 4 grid of control
  points moved by normal offsets (sd 1.5 px).
- cifar10_rts: RTS on CIFAR-10 (rotation +-45 degrees, scale 0.7-1.2) in a 48 x 48 canvas (issue 16, section 4).

Where the paper is not certain we chose, and the catalog's CHOICES says what; each set's base, canvas, family and
settings are its catalog entry.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from stn_ablation.catalog import CATALOG, GENERATION_VERSION, Dataset
from stn_ablation.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from stn_ablation.data.releases import DataError, RawDataset, default_data_root, digest, load_release
from stn_ablation.transforms import TPS_SIDE, tps_control_points, warp

log = logging.getLogger(__name__)

VERSION = GENERATION_VERSION
SEED = 2015  # the default seed; each (set, split) draws from a generator seeded by a hash of (seed, set, split)
BATCH = 4096  # images warped at once: a 42 x 42 grid for them is 58 MB of float32
CORNERS = ((-1.0, -1.0), (1.0, -1.0), (1.0, 1.0), (-1.0, 1.0))  # the frame's outer corners, normalized (x, y)

Draw = Callable[[torch.Tensor, torch.Generator, int], torch.Tensor]  # (uint8 images, gen, canvas) -> N x k draws
ToParams = Callable[[torch.Tensor, int, int], torch.Tensor]  # (N x k draws, input side, canvas) -> N x n params


@dataclass(frozen=True)
class Distortion:
    """How a generated set is drawn; what it is (base, canvas, family, settings) is its entry in the catalog."""

    name: str
    columns: tuple[str, ...]  # the per-image draws, in pixels and degrees
    draw: Draw
    params: ToParams

    @property
    def facts(self) -> Dataset:
        return CATALOG[self.name]

    @property
    def base(self) -> str:
        return self.facts.base

    @property
    def canvas(self) -> int:
        return self.facts.side

    @property
    def family(self) -> str:
        return self.facts.family

    @property
    def settings(self) -> dict:
        return self.facts.settings


def _uniform(n: int, low: float, high: float, gen: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, dtype=torch.float64, generator=gen)


def _rotation(angle_deg: torch.Tensor) -> torch.Tensor:
    """N x 2 x 2 matrices R(a) = [[cos, -sin], [sin, cos]] of angles in degrees."""
    a = angle_deg * (math.pi / 180)
    cos, sin = torch.cos(a), torch.sin(a)
    return torch.stack([torch.stack([cos, -sin], 1), torch.stack([sin, cos], 1)], 1)


def _bounding_corners(images: torch.Tensor) -> torch.Tensor:
    """N x 4 x 2: the corners (x, y) of each image's box of nonzero pixels, at pixel edges, in pixels from the
    image centre (the whole frame for an empty image)."""
    h, w = images.shape[-2:]
    mask = images.amax(1) > 0  # N x H x W

    def extent(any_: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        first = any_.int().argmax(1)
        last = size - 1 - any_.flip(1).int().argmax(1)
        return first.double() - size / 2, last.double() + 1 - size / 2

    x0, x1 = extent(mask.any(1), w)
    y0, y1 = extent(mask.any(2), h)
    return torch.stack([torch.stack([x0, y0], 1), torch.stack([x1, y0], 1),
                        torch.stack([x1, y1], 1), torch.stack([x0, y1], 1)], 1)


def _rts_draw(degrees: float, scale: tuple[float, float]) -> Draw:
    def draw(images: torch.Tensor, gen: torch.Generator, canvas: int) -> torch.Tensor:
        n = len(images)
        angle, s = _uniform(n, -degrees, degrees, gen), _uniform(n, *scale, gen)
        u = torch.rand(n, 2, dtype=torch.float64, generator=gen)
        # image -> canvas, before translation: q = s R(a)^T p, for p the box corners (row vectors: p @ R)
        placed = s[:, None, None] * (_bounding_corners(images) @ _rotation(angle))  # N x 4 x 2, px
        low, high = -canvas / 2 - placed.amin(1), canvas / 2 - placed.amax(1)  # N x 2: the translations that fit
        fits = low <= high
        shift = torch.where(fits, low + u * (high - low), (low + high) / 2)
        return torch.stack([angle, s, shift[:, 0], shift[:, 1]], 1)
    return draw


def _rts_params(draws: torch.Tensor, side: int, canvas: int) -> torch.Tensor:
    """(angle_deg, scale, tx_px, ty_px) -> rts parameters from canvas to input coordinates: an input point p (px
    from the centre) lands at q = s R(a)^T p + t, so the canvas point q_n samples the input at
    (canvas / side / s) R(a) q_n - (2 / side / s) R(a) t."""
    angle, s, shift = draws[:, 0], draws[:, 1], draws[:, 2:]
    back = -(2 / side) / s[:, None] * (_rotation(angle) @ shift[:, :, None])[:, :, 0]  # N x 2, normalized
    return torch.stack([angle * (math.pi / 180), canvas / side / s, back[:, 0], back[:, 1]], 1)


def _rotation_draw(degrees: float) -> Draw:
    def draw(images: torch.Tensor, gen: torch.Generator, canvas: int) -> torch.Tensor:
        n = len(images)
        zero = torch.zeros(n, dtype=torch.float64)
        return torch.stack([_uniform(n, -degrees, degrees, gen), zero + 1, zero, zero], 1)
    return draw


def _offsets_draw(scale: tuple[float, float], points: int, sd_px: float) -> Draw:
    """(scale, then `points` (dx, dy) normal offsets with sd `sd_px` pixels)."""
    def draw(images: torch.Tensor, gen: torch.Generator, canvas: int) -> torch.Tensor:
        n = len(images)
        s = _uniform(n, *scale, gen)
        return torch.cat([s[:, None], sd_px * torch.randn(n, 2 * points, dtype=torch.float64, generator=gen)], 1)
    return draw


def _projective_params(draws: torch.Tensor, side: int, canvas: int) -> torch.Tensor:
    """(scale, 4 corner offsets in px) -> the homography that samples corner c_i + n_i of the output at c_i / s of
    the input (the forward map scales by s, then moves each corner c_i by n_i), solved from the four pairs."""
    s, offsets = draws[:, 0], draws[:, 1:].view(-1, 4, 2) * (2 / canvas)  # normalized
    corners = torch.tensor(CORNERS, dtype=torch.float64)
    src = corners + offsets  # N x 4 x 2, output
    dst = corners / s[:, None, None]  # N x 4 x 2, input
    x, y, u, v = src[..., 0], src[..., 1], dst[..., 0], dst[..., 1]  # N x 4 each
    one, zero = torch.ones_like(x), torch.zeros_like(x)
    # u (h31 x + h32 y + 1) = h11 x + h12 y + h13, and likewise v with h21..h23: two rows per corner
    rows_u = torch.stack([x, y, one, zero, zero, zero, -x * u, -y * u], 2)
    rows_v = torch.stack([zero, zero, zero, x, y, one, -x * v, -y * v], 2)
    system = torch.cat([rows_u, rows_v], 1)  # N x 8 x 8
    return torch.linalg.solve(system, torch.cat([u, v], 1))  # N x 8


def _in_view(draws: torch.Tensor, canvas: int) -> torch.Tensor:
    """Per row of P's draws: whether the frame shows one unfolded view with the digit in it. Where the homography's w
    is not positive somewhere in the frame (as in every draw whose moved corners make no convex quad) the frame
    samples the plane folded through infinity, and where the input's centre (MNIST centres each digit there) falls
    outside the frame, it shows the digit's surroundings: either way the image comes out blank or nearly so."""
    h = _projective_params(draws, canvas, canvas)
    matrix = torch.cat([h, torch.ones(len(h), 1, dtype=h.dtype)], 1).view(-1, 3, 3)  # output -> input
    w = matrix[:, 2, :2] @ torch.tensor(CORNERS, dtype=h.dtype).T + 1  # N x 4: linear, so the corners bound it
    centre = torch.linalg.inv(matrix)[:, :, 2]  # the output point that samples the input's centre, homogeneous
    return (w > 0).all(1) & (centre[:, :2] / centre[:, 2:]).abs().lt(1).all(1)


def _projective_draw(scale: tuple[float, float], sd_px: float) -> Draw:
    """P's draws: `_offsets_draw`'s, where each row that `_in_view` rejects draws its four offsets again, from the
    same generator after all first draws, so the set stays a function of the seed and a subset its prefix."""
    first = _offsets_draw(scale, 4, sd_px)

    def draw(images: torch.Tensor, gen: torch.Generator, canvas: int) -> torch.Tensor:
        draws = first(images, gen, canvas)
        while not (ok := _in_view(draws, canvas)).all():
            draws[~ok, 1:] = sd_px * torch.randn(int((~ok).sum()), 8, dtype=torch.float64, generator=gen)
        return draws
    return draw


def _tps_params(draws: torch.Tensor, side: int, canvas: int) -> torch.Tensor:
    """(scale, 16 control-point offsets in px) -> tps offsets: output control point P_k samples (P_k + n_k) / s."""
    s, offsets = draws[:, 0], draws[:, 1:].view(-1, TPS_SIDE ** 2, 2) * (2 / canvas)
    points = tps_control_points()
    return ((points + offsets) / s[:, None, None] - points).flatten(1)


RTS_COLUMNS = ("angle_deg", "scale", "tx_px", "ty_px")
DISTORTIONS: dict[str, Distortion] = {d.name: d for d in (
    Distortion("mnist_r", RTS_COLUMNS, _rotation_draw(90.0), _rts_params),
    Distortion("mnist_rts", RTS_COLUMNS, _rts_draw(45.0, (0.7, 1.2)), _rts_params),
    Distortion("mnist_p", ("scale", *(f"{c}{k}_px" for k in range(4) for c in "xy")),
               _projective_draw((0.75, 1.0), 5.0), _projective_params),
    Distortion("mnist_e", ("scale", *(f"{c}{k}_px" for k in range(TPS_SIDE ** 2) for c in "xy")),
               _offsets_draw((0.75, 1.0), TPS_SIDE ** 2, 1.5), _tps_params),
    Distortion("cifar10_rts", RTS_COLUMNS, _rts_draw(45.0, (0.7, 1.2)), _rts_params),
)}


def _fill(spec: Distortion) -> tuple[float, ...]:
    """Per-channel value (0-255) outside the warped image: MNIST's background; CIFAR-10's mean colour."""
    return tuple(255 * m for m in CATALOG[spec.base].mean) if spec.base == "cifar10" else (0.0,)


def split_seed(name: str, split: str, seed: int = SEED) -> int:
    """The generator seed of one set's split: a hash, so sets and splits draw independent streams."""
    return int.from_bytes(hashlib.sha256(f"{seed}/{name}/{split}".encode()).digest()[:8], "little") >> 1


def distort(name: str, images: torch.Tensor, seed: int, n: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(uint8 distorted images, float64 per-image draws) for the first `n` of `images` (default all). The draws are
    made for all images before the first n are kept, so a subset is a prefix of the full set."""
    spec = DISTORTIONS[name]
    draws = spec.draw(images, torch.Generator().manual_seed(seed), spec.canvas)[:n]
    images = images[:n]
    fill = torch.tensor(_fill(spec)).view(1, -1, 1, 1)
    out = torch.empty(len(images), images.shape[1], spec.canvas, spec.canvas, dtype=torch.uint8)
    for i in range(0, len(images), BATCH):
        params = spec.params(draws[i:i + BATCH], images.shape[-1], spec.canvas)
        warped = warp(images[i:i + BATCH].float() - fill, params, spec.family, (spec.canvas, spec.canvas)) + fill
        out[i:i + BATCH] = warped.round_().clamp_(0, 255).to(torch.uint8)
    return out, draws


def generate(name: str, base: RawDataset, seed: int = SEED, n: int | None = None) -> dict:
    """The cache file's content for set `name` from `base`: uint8 images and labels per split, the float32 draws,
    and `record`, the generation parameters with digests of the base and of the result."""
    spec = DISTORTIONS[name]
    start = time.perf_counter()
    content: dict = {}
    for split in ("train", "test"):
        x, y = getattr(base, f"{split}_x"), getattr(base, f"{split}_y")
        content[f"{split}_x"], draws = distort(name, x, split_seed(name, split, seed), n)
        content[f"{split}_y"] = y[:n].clone()
        content[f"{split}_draws"] = draws.float()
    content["record"] = {
        "dataset": name, "version": VERSION, "base": spec.base, "base_provenance": base.provenance,
        "base_digest": _basedigest(base), "seed": seed, "n": n,
        "split_seeds": {split: split_seed(name, split, seed) for split in ("train", "test")},
        "canvas": spec.canvas, "family": spec.family, **spec.settings,
        "sampling": "bilinear grid_sample (align_corners=False), rounded to uint8",
        "fill": [round(v, 2) for v in _fill(spec)], "draw_columns": list(spec.columns),
        "digest": {split: digest(content[f"{split}_x"], content[f"{split}_y"]) for split in ("train", "test")},
        "generation_s": round(time.perf_counter() - start, 2), "torch": str(torch.__version__),
    }
    return content


def _basedigest(base: RawDataset) -> dict[str, str]:
    return {split: digest(getattr(base, f"{split}_x"), getattr(base, f"{split}_y")) for split in ("train", "test")}


def cache_path(folder: Path, name: str, seed: int = SEED, n: int | None = None) -> Path:
    """`<folder>/<name>-v<VERSION>[-seed<seed>][-n<n>].pt`: the default seed and the full set need no suffix."""
    suffix = (f"-seed{seed}" if seed != SEED else "") + (f"-n{n}" if n is not None else "")
    return folder / f"{name}-v{VERSION}{suffix}.pt"


def load(name: str, root: Path | str | None = None, download: bool = True, *, seed: int = SEED,
         n: int | None = None, cache: Path | str | None = None) -> RawDataset:
    """Set `name` (one of DISTORTIONS) from its cache in `cache` (default `<root>/distorted`), generated from the
    base set under `root` when the cache is absent, unreadable or stale (another version, seed or base). Where the
    cache cannot be written (a read-only data root) the set is generated in memory each time, with a warning.
    `n` keeps the first n images of each split (a prefix of the full set). `record` is in `.generation`."""
    if name not in DISTORTIONS:
        raise DataError(f"unknown distorted dataset {name!r}; choose one of {', '.join(DISTORTIONS)}")
    root = Path(root).expanduser().resolve() if root else default_data_root().resolve()
    base = load_release(DISTORTIONS[name].base, root, download)
    path = cache_path(Path(cache) if cache else root / "distorted", name, seed, n)
    content = _read_cache(path, _basedigest(base), seed, n)
    if content is None:
        content = generate(name, base, seed, n)
        log.info("generated %s in %.1f s", name, content["record"]["generation_s"])
        try:
            save_checkpoint(content, path)
        except (CheckpointError, OSError) as e:  # OSError: the folder cannot be made
            log.warning("could not cache %s at %s (%s); using it from memory, generated again on each load",
                        name, path, e.__cause__ or e)
    return RawDataset(name, content["train_x"], content["train_y"], content["test_x"], content["test_y"],
                      base.classes, base.provenance, str(path), content["record"])


def _read_cache(path: Path, base_digest: dict[str, str], seed: int, n: int | None) -> dict | None:
    """The cached content at `path` when it was generated by this VERSION from this base with this seed and n;
    None (regenerate) otherwise."""
    try:
        content = load_checkpoint(path)
    except CheckpointError as e:
        log.warning("%s; generating it again", e)
        return None
    if content is None:
        return None
    record = content["record"]
    wanted = {"version": VERSION, "base_digest": base_digest, "seed": seed, "n": n}
    stale = [key for key, value in wanted.items() if record.get(key) != value]
    if stale:
        log.info("cache %s differs in %s; generating it again", path, ", ".join(stale))
        return None
    return content
