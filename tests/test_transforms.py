"""The transformation families: identity at init, known maps move a marked pattern where the sampling convention
(output -> input, as affine_grid) says, finite gradients, and the exact relations between families."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from stn_ablation.errors import ConfigError
from stn_ablation.transforms import (FAMILIES, decompose, family, identity_grid, rts_theta, tps_control_points,
                                     warp)

SIZE = 32  # test images are SIZE x SIZE pixels


def pattern(rows: slice, cols: slice, batch: int = 1) -> torch.Tensor:
    """batch x 1 x SIZE x SIZE zeros with ones in the given rows and columns."""
    x = torch.zeros(batch, 1, SIZE, SIZE)
    x[:, :, rows, cols] = 1
    return x


def centroid(x: torch.Tensor) -> tuple[float, float]:
    """Mass-weighted (column, row) of the first image, in pixels."""
    img = x[0, 0]
    idx = torch.arange(SIZE, dtype=torch.float32)
    return (img.sum(0) @ idx / img.sum()).item(), (img.sum(1) @ idx / img.sum()).item()


def params(name: str, *values: float) -> torch.Tensor:
    return torch.tensor([values], dtype=torch.float32).expand(1, FAMILIES[name].n_params)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_identity_parameters_give_the_identity_grid_and_return_the_input(name):
    fam = family(name)
    theta = torch.tensor([fam.identity]).expand(3, -1)
    grid = fam.grid(theta, (SIZE, 24))
    assert grid.shape == (3, SIZE, 24, 2)
    torch.testing.assert_close(grid, identity_grid((SIZE, 24)).expand(3, -1, -1, -1), atol=1e-6, rtol=0)
    x = torch.rand(3, 2, SIZE, SIZE)
    torch.testing.assert_close(warp(x, theta, fam), x, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_gradients_with_respect_to_the_parameters_are_finite_and_nonzero(name):
    fam = family(name)
    theta = (torch.tensor([fam.identity]) + 0.05 * torch.randn(4, fam.n_params,
                                                               generator=torch.Generator().manual_seed(0)))
    theta.requires_grad_(True)
    x = torch.rand(4, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    (warp(x, theta, fam) * torch.linspace(0, 1, SIZE)).sum().backward()
    assert torch.isfinite(theta.grad).all() and theta.grad.abs().sum() > 0


@pytest.mark.parametrize("name", list(FAMILIES))
def test_describe_gives_one_finite_value_per_image(name):
    fam = family(name)
    stats = fam.describe(torch.tensor([fam.identity]).expand(5, -1))
    assert stats and all(v.shape == (5,) and torch.isfinite(v).all() for v in stats.values())
    assert stats["identity_dist"].abs().max() == 0


def test_unknown_family_names_the_choices():
    with pytest.raises(ConfigError, match="translation, attention, rts, affine, projective, tps"):
        family("elastic")


def test_translation_by_half_a_width_moves_content_8_pixels_left_on_32_pixels():
    x = pattern(slice(10, 11), slice(20, 21))  # one bright pixel at column 20, row 10
    out = warp(x, params("translation", 0.5, 0.0), "translation")
    assert out[0, 0].argmax().item() == 10 * SIZE + 12  # column 20 - 8 (output x samples input x + 0.5)
    assert out.max().item() == pytest.approx(1.0, abs=1e-5)
    down = warp(x, params("translation", 0.0, -0.25), "translation")
    assert down[0, 0].argmax().item() == 14 * SIZE + 20  # ty = -0.25 samples 4 pixels up: content moves down


def test_rotation_by_90_degrees_turns_content_counter_clockwise_on_screen():
    x = pattern(slice(4, 5), slice(20, 21))  # row 4 (near the top), column 20 (right of centre)
    out = warp(x, params("rts", math.pi / 2, 1.0, 0.0, 0.0), "rts")
    # output (x, y) samples input (-y, x): the pixel at normalized (x0, y0) lands at (y0, -x0); with pixel
    # centres symmetric about the middle, column c, row r -> column r, row SIZE - 1 - c
    assert out[0, 0].argmax().item() == (SIZE - 1 - 20) * SIZE + 4
    assert out.max().item() == pytest.approx(1.0, abs=1e-4)
    assert decompose(rts_theta(params("rts", math.pi / 2, 1.0, 0.0, 0.0)))["rotation_deg"].item() == \
        pytest.approx(90.0)


def test_isotropic_scale_below_one_zooms_in_about_the_centre():
    x = pattern(slice(18, 20), slice(20, 22))  # a 2 x 2 square centred at (20.5, 18.5) px
    out = warp(x, params("attention", 0.5, 0.0, 0.0), "attention")
    centre = (SIZE - 1) / 2
    cx, cy = centroid(out)
    assert cx == pytest.approx(centre + 2 * (20.5 - centre), abs=0.05)
    assert cy == pytest.approx(centre + 2 * (18.5 - centre), abs=0.05)
    assert out.sum().item() == pytest.approx(4 * x.sum().item(), rel=0.02)  # area grows by 1/s^2


def test_affine_grid_is_exactly_affine_grid():
    theta = torch.randn(5, 6, generator=torch.Generator().manual_seed(2))
    expected = F.affine_grid(theta.view(-1, 2, 3), [5, 3, 20, SIZE], align_corners=False)
    assert torch.equal(FAMILIES["affine"].grid(theta, (20, SIZE)), expected)


def test_subsets_of_affine_are_the_affine_matrices_they_name():
    angle, s, tx, ty = 0.3, 0.8, 0.1, -0.2
    cos, sin = math.cos(angle) * s, math.sin(angle) * s
    cases = {"translation": ((tx, ty), (1, 0, tx, 0, 1, ty)),
             "attention": ((s, tx, ty), (s, 0, tx, 0, s, ty)),
             "rts": ((angle, s, tx, ty), (cos, -sin, tx, sin, cos, ty))}
    for name, (own, affine) in cases.items():
        torch.testing.assert_close(FAMILIES[name].grid(params(name, *own), (SIZE, SIZE)),
                                   FAMILIES["affine"].grid(params("affine", *affine), (SIZE, SIZE)))
        stats = FAMILIES[name].describe(params(name, *own))
        assert stats.keys() == decompose(torch.zeros(1, 2, 3)).keys()
    stats = FAMILIES["rts"].describe(params("rts", angle, s, tx, ty))
    assert stats["rotation_deg"].item() == pytest.approx(math.degrees(angle), abs=1e-4)
    assert stats["scale"].item() == pytest.approx(s, abs=1e-6)


def test_projective_with_no_perspective_is_the_affine_grid_to_the_bit():
    theta = torch.randn(4, 6, generator=torch.Generator().manual_seed(3))
    projective = torch.cat([theta, torch.zeros(4, 2)], 1)
    assert torch.equal(FAMILIES["projective"].grid(projective, (SIZE, 20)), FAMILIES["affine"].grid(theta, (SIZE, 20)))


def test_projective_moves_a_marked_square_where_the_inverse_homography_says():
    h = torch.tensor([[1.1, 0.1, 0.05, -0.05, 0.9, 0.1, 0.3, -0.2]])
    x = pattern(slice(7, 9), slice(22, 24))  # 2 x 2 square centred at column 22.5, row 7.5
    out = warp(x, h, "projective")
    # the output point q with H q ~ p, p the square's normalized centre
    p = torch.tensor([(2 * 22.5 + 1) / SIZE - 1, (2 * 7.5 + 1) / SIZE - 1, 1.0], dtype=torch.float64)
    matrix = torch.cat([h[0].double(), torch.ones(1, dtype=torch.float64)]).view(3, 3)
    q = torch.linalg.solve(matrix, p)
    qx, qy = (q[:2] / q[2]).tolist()
    cx, cy = centroid(out)
    assert cx == pytest.approx(((qx + 1) * SIZE - 1) / 2, abs=0.3)
    assert cy == pytest.approx(((qy + 1) * SIZE - 1) / 2, abs=0.3)
    stats = FAMILIES["projective"].describe(h)
    assert (stats["px"].item(), stats["py"].item()) == pytest.approx((0.3, -0.2))


def test_projective_points_beyond_the_horizon_sample_zero_not_a_mirror_image():
    h = params("projective", 1, 0, 0, 0, 1, 0, 2.0, 0)  # w = 1 + 2x: w <= 0 for x <= -0.5
    x = torch.ones(1, 1, SIZE, SIZE)
    out = warp(x, h, "projective")
    assert torch.isfinite(out).all()
    assert out[0, 0, :, :SIZE // 4 - 1].abs().max() == 0  # the quarter left of x = -0.5


def test_tps_with_every_control_point_shifted_alike_is_that_translation():
    shift = torch.tensor([0.3, -0.1])
    tps = shift.repeat(16).view(1, 32)
    torch.testing.assert_close(FAMILIES["tps"].grid(tps, (SIZE, 24)),
                               FAMILIES["translation"].grid(shift.view(1, 2), (SIZE, 24)), atol=1e-5, rtol=0)
    stats = FAMILIES["tps"].describe(tps)
    assert stats["displacement"].item() == pytest.approx(shift.norm().item())
    assert (stats["tx"].item(), stats["ty"].item()) == pytest.approx((0.3, -0.1))


def test_tps_reproduces_an_affine_map_exactly():
    theta = torch.tensor([[0.9, 0.2, 0.1], [-0.15, 1.1, -0.05]])
    points = tps_control_points(torch.float32)  # 16 x 2
    moved = points @ theta[:, :2].T + theta[:, 2]
    tps = (moved - points).reshape(1, 32)
    torch.testing.assert_close(FAMILIES["tps"].grid(tps, (SIZE, SIZE)),
                               FAMILIES["affine"].grid(theta.view(1, 6), (SIZE, SIZE)), atol=1e-5, rtol=0)


def test_tps_moving_one_control_point_bends_only_near_it():
    tps = torch.zeros(1, 32)
    tps[0, 2 * 5] = 0.2  # control point 5: column 1, row 1, at normalized (-1/3, -1/3); moved right
    grid = FAMILIES["tps"].grid(tps, (SIZE, SIZE)) - identity_grid((SIZE, SIZE))
    near, far = grid[0, 10, 10, 0].item(), grid[0, 26, 26, 0].item()  # pixel (10, 10) is at about (-1/3, -1/3)
    assert near == pytest.approx(0.2, abs=0.03) and abs(far) < 0.03


def test_warp_runs_in_fp32_under_autocast_and_returns_the_input_dtype():
    x = torch.rand(2, 1, SIZE, SIZE).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = warp(x, torch.tensor([FAMILIES["tps"].identity]).expand(2, -1), "tps", size=(16, 16))
    assert out.dtype == torch.bfloat16 and out.shape == (2, 1, 16, 16)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_theta_stats_and_the_before_after_picture_work_for_every_family(name):
    """What a run records of its transformer: the family's own statistics (theta_stats) and the before/after
    picture (visualize.stn_grid), whose lower row is what the transformer makes of the upper one."""
    import matplotlib.pyplot as plt

    from stn_ablation.models.registry import create_model
    from stn_ablation.training.robustness import theta_stats
    from stn_ablation.tracking.pictures import stn_grid

    torch.manual_seed(0)
    model = create_model("tutorial_stn", in_shape=(1, SIZE, SIZE), transform=name)
    with torch.no_grad():  # off the identity, so the picture shows a transform
        model.stn.regressor[-1].weight.normal_(0, 0.05)
    x = torch.randn(8, 1, SIZE, SIZE)
    stats = theta_stats(model, x, batch_size=3)
    parts = FAMILIES[name].describe(model.stn.theta(x))
    assert set(stats) == {f"theta/{k}_{s}" for k in parts for s in ("mean", "std")}
    assert all(math.isfinite(v) for v in stats.values())
    data = type("Splits", (), {"test_x": x, "mean": (0.5,), "std": (0.25,)})()  # what stn_grid reads of DataSplits
    fig = stn_grid(model, data, n=8)
    images = [ax.images[0].get_array() for ax in fig.axes if ax.images]
    assert len(images) == 16
    with torch.no_grad():
        after = (model.stn(x[:1]) * 0.25 + 0.5).clamp(0, 1)[0, 0].numpy()
    assert torch.allclose(torch.from_numpy(images[8].data), torch.from_numpy(after).float(), atol=1e-5)
    plt.close(fig)
