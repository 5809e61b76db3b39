"""Batch augmentation: pure functions of the batch and a torch.Generator."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from stn_ablation.config import AUGMENTATIONS, TrainConfig
from stn_ablation.data.augment import VERSIONS as AUGMENT_VERSIONS
from stn_ablation.data.augment import affine_warp, augment, hflip, random_crop, random_hflip
from stn_ablation.errors import ConfigError
from stn_ablation.tracking import identity
from stn_ablation.tracking.identity import run_identity

RANDOM_KINDS = [kind for kind in AUGMENTATIONS if kind != "none"]


def _batch(dtype: torch.dtype, b: int = 6, c: int = 3, h: int = 32, w: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if dtype == torch.uint8:
        # 1..255 so that no pixel is zero and the zero fill of a shift is unambiguous
        return torch.randint(1, 256, (b, c, h, w), generator=g, dtype=torch.uint8)
    return torch.rand(b, c, h, w, generator=g, dtype=dtype) + 0.5


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _shifted(img: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """`img` (C x H x W) translated by (dy, dx) pixels, uncovered pixels zero: reference implementation."""
    c, h, w = img.shape
    out = torch.zeros_like(img)
    ys, xs = slice(max(dy, 0), h + min(dy, 0)), slice(max(dx, 0), w + min(dx, 0))
    src_ys, src_xs = slice(max(-dy, 0), h + min(-dy, 0)), slice(max(-dx, 0), w + min(-dx, 0))
    out[:, ys, xs] = img[:, src_ys, src_xs]
    return out


def test_reference_shift_is_a_translation():
    img = torch.arange(1, 17, dtype=torch.float32).view(1, 4, 4)
    assert torch.equal(_shifted(img, 0, 0), img)
    down_right = _shifted(img, 1, 2)
    assert down_right[0, 1, 2] == img[0, 0, 0] and down_right[0, 3, 3] == img[0, 2, 1]
    assert (down_right[0, 0] == 0).all() and (down_right[0, :, :2] == 0).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.uint8])
@pytest.mark.parametrize("kind", AUGMENTATIONS)
def test_augment_keeps_shape_and_dtype(dtype, kind):
    x = _batch(dtype)
    out = augment(x, kind, _gen(0))
    assert out.shape == x.shape
    assert out.dtype == dtype
    assert out.device == x.device


@pytest.mark.parametrize("dtype", [torch.float32, torch.uint8])
def test_hflip_mirrors_and_twice_restores(dtype):
    x = _batch(dtype)
    flipped = hflip(x)
    assert not torch.equal(flipped, x)
    assert torch.equal(flipped[..., 0], x[..., -1])
    assert torch.equal(hflip(flipped), x)


@pytest.mark.parametrize("dtype", [torch.float32, torch.uint8])
def test_random_hflip_flips_each_image_or_not(dtype):
    x = _batch(dtype, b=32)
    out = random_hflip(x, _gen(1))
    flipped = [torch.equal(o, hflip(i)) for o, i in zip(out, x)]
    kept = [torch.equal(o, i) for o, i in zip(out, x)]
    assert all(f or k for f, k in zip(flipped, kept))
    assert 0 < sum(flipped) < len(x)  # some of each among 32 images (fails with probability 2**-31)


@pytest.mark.parametrize("dtype", [torch.float32, torch.uint8])
def test_random_crop_is_a_zero_filled_shift_within_pad(dtype):
    x = _batch(dtype, b=8)
    out = random_crop(x, 4, _gen(3))
    assert out.shape == x.shape and out.dtype == dtype
    shifts = []
    for img, res in zip(x, out):
        matches = [(dy, dx) for dy in range(-4, 5) for dx in range(-4, 5) if torch.equal(res, _shifted(img, dy, dx))]
        assert len(matches) == 1, f"output is not a unique shift of its input: {matches}"
        shifts.append(matches[0])
    assert len(set(shifts)) > 1  # the offsets are drawn per image


def test_random_crop_covers_every_shift():
    """A 1-pixel image probe: each output shows where the pixel went, so all 81 offsets must be reachable."""
    x = torch.zeros(4000, 1, 9, 9)
    x[:, 0, 4, 4] = 1
    out = random_crop(x, 4, _gen(0))
    where = out.flatten(1).argmax(1)
    assert (out.flatten(1).sum(1) == 1).all()  # a shift of at most 4 keeps the centre pixel inside
    assert len(set(where.tolist())) == 81


def test_random_crop_matches_padded_window():
    x = _batch(torch.float32, b=4)
    g = _gen(7)
    offsets = torch.randint(0, 9, (2, 4), generator=_gen(7))  # what random_crop draws from the same state
    out = random_crop(x, 4, g)
    padded = F.pad(x, (4, 4, 4, 4))
    for b in range(4):
        dy, dx = offsets[0, b].item(), offsets[1, b].item()
        assert torch.equal(out[b], padded[b, :, dy:dy + 32, dx:dx + 32])


@pytest.mark.parametrize("dtype", [torch.float32, torch.uint8])
def test_standard_is_padded_window_then_mirror(dtype):
    """"standard" crops and flips in one gather: it must equal the two-step definition (pad, cut the window drawn
    first, then mirror where the flip bit drawn second is set), image by image, over all 81 offsets."""
    x = _batch(dtype, b=512)
    g = _gen(11)
    offsets = torch.randint(0, 9, (2, 512), generator=g)
    mirror = torch.rand(512, generator=g) < 0.5
    out = augment(x, "standard", _gen(11))
    padded = F.pad(x, (4, 4, 4, 4))
    for b in range(512):
        dy, dx = offsets[0, b].item(), offsets[1, b].item()
        window = padded[b, :, dy:dy + 32, dx:dx + 32]
        assert torch.equal(out[b], hflip(window) if mirror[b] else window)
    assert mirror.any() and not mirror.all() and len(set(map(tuple, offsets.T.tolist()))) == 81


@pytest.mark.parametrize("kind", RANDOM_KINDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.uint8])
def test_same_seed_same_batch_different_seed_different(dtype, kind):
    x = _batch(dtype, b=16)
    a = augment(x, kind, _gen(42))
    b = augment(x, kind, _gen(42))
    c = augment(x, kind, _gen(43))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert torch.equal(x, _batch(dtype, b=16))  # the input is not modified in place


@pytest.mark.parametrize("kind", RANDOM_KINDS)
def test_generator_state_advances(kind):
    x = _batch(torch.float32, b=16)
    g = _gen(5)
    assert not torch.equal(augment(x, kind, g), augment(x, kind, g))


def test_none_is_identity():
    x = _batch(torch.float32)
    g = _gen(0)
    state = g.get_state()
    assert torch.equal(augment(x, "none", g), x)
    assert torch.equal(g.get_state(), state)  # draws nothing


def test_flip_false_never_mirrors():
    x = _batch(torch.float32, b=64)
    out = augment(x, "standard", _gen(9), flip=False)
    for img, res in zip(x, out):
        assert any(torch.equal(res, _shifted(img, dy, dx)) for dy in range(-4, 5) for dx in range(-4, 5))
    # with the same generator state and flip=True, some images do come out mirrored
    mirrored = augment(x, "standard", _gen(9), flip=True)
    assert any(not torch.equal(m, o) for m, o in zip(mirrored, out))


def test_unknown_kind_raises_config_error():
    with pytest.raises(ConfigError, match="autoaugment"):
        augment(_batch(torch.float32), "autoaugment", _gen(0))


@pytest.mark.parametrize("channels", [3, 1])
@pytest.mark.parametrize("kind", RANDOM_KINDS)
def test_a_channels_last_batch_stays_channels_last_with_the_same_values(kind, channels):
    """The data set is kept channels_last for the model; a batch that came back NCHW would be copied into
    channels_last again by the first convolution, every step."""
    x = _batch(torch.float32, c=channels)
    nhwc = x.contiguous(memory_format=torch.channels_last)
    out = augment(nhwc, kind, _gen(3))
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(out, augment(x, kind, _gen(3)))
    assert augment(x, kind, _gen(3)).is_contiguous()  # and NCHW stays NCHW


@pytest.mark.parametrize("sweep, value", [("degrees", 30.0), ("scale", 1.25), ("shift_px", (4.0, 4.0))])
def test_a_robustness_sweeps_warp_is_its_plain_matrix_to_the_bit(sweep, value):
    """The sweeps go through the "rts" family's matrix; one motion at a time it must equal the matrix written out
    (rotation, 1/zoom, or a shift of -2 px / width), so the logged robustness numbers do not move."""
    x = _batch(torch.float32, b=4)
    angle = torch.tensor(value if sweep == "degrees" else 0.0) * (torch.pi / 180)
    s = 1 / torch.tensor(value if sweep == "scale" else 1.0)
    tx = -2 * torch.tensor(value[0] if sweep == "shift_px" else 0.0) / 32
    cos, sin = torch.cos(angle) * s, torch.sin(angle) * s
    theta = torch.stack([torch.stack([cos, -sin, tx]), torch.stack([sin, cos, tx])]).expand(4, 2, 3)
    expected = F.grid_sample(x, F.affine_grid(theta, list(x.shape), align_corners=False), align_corners=False)
    assert torch.equal(affine_warp(x, **{sweep: value}), expected)


def test_only_an_augmentation_with_a_version_moves_the_run_identity(monkeypatch):
    """A run's identity carries an augmentation's version where it has one: "affine" runs of the old matrix are not
    reused, and every other run keeps the identity its committed records hold."""
    data = SimpleNamespace(digests={"train": "a", "val": "b", "test": "c"}, generation={})
    ids = lambda aug: run_identity(TrainConfig(variant="tutorial_stn", aug=aug), data, "cpu", "fp32")  # noqa: E731
    with_versions = {aug: ids(aug) for aug in AUGMENTATIONS}
    monkeypatch.setattr(identity, "AUGMENT_VERSIONS", {})
    without = {aug: ids(aug) for aug in AUGMENTATIONS}
    assert {aug for aug in AUGMENTATIONS if with_versions[aug] != without[aug]} == set(AUGMENT_VERSIONS) == {"affine"}
