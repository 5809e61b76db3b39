"""The distorted MNIST sets of the STN paper and CIFAR-10 RTS: shapes, labels, determinism, the cache, and that each
distortion is the one it names. Generated on subsets (a prefix of the full set), one full set at most."""

from __future__ import annotations

import logging
import math

import pytest
import torch

import stn_ablation.data.distorted as distorted
from stn_ablation.config import DATASETS
from stn_ablation.catalog import CATALOG
from stn_ablation.data.datasets import load_dataset
from stn_ablation.data.distorted import CORNERS, DISTORTIONS, cache_path, distort, generate, load, split_seed
from stn_ablation.transforms import FAMILIES, warp

MNIST_SETS = ("mnist_r", "mnist_rts", "mnist_p", "mnist_e")
N = 300  # images per split in the subset tests


@pytest.fixture
def counted_generate(monkeypatch):
    """distorted.generate, counting its calls."""
    calls = []

    def counting(*args, **kwargs):
        calls.append(args[0])
        return generate(*args, **kwargs)
    monkeypatch.setattr(distorted, "generate", counting)
    return calls


def test_every_set_is_a_dataset_with_its_spec():
    assert set(DISTORTIONS) <= set(DATASETS) and set(DISTORTIONS) <= set(CATALOG)
    assert not CATALOG["mnist_rts"].mirror_symmetric and CATALOG["cifar10_rts"].mirror_symmetric


@pytest.mark.parametrize("name", MNIST_SETS)
def test_subset_shapes_labels_and_record(name, data_root, mnist_raw, tmp_path):
    raw = load(name, data_root, download=False, n=N, cache=tmp_path)
    side = 42 if name == "mnist_rts" else 28
    assert raw.name == name and raw.classes == mnist_raw.classes
    assert raw.train_x.shape == (N, 1, side, side) and raw.test_x.shape == (N, 1, side, side)
    assert raw.train_x.dtype == torch.uint8
    assert torch.equal(raw.train_y, mnist_raw.train_y[:N]) and torch.equal(raw.test_y, mnist_raw.test_y[:N])
    record = raw.generation
    assert record["dataset"] == name and record["version"] == distorted.VERSION and record["n"] == N
    assert record["canvas"] == side and record["family"] == DISTORTIONS[name].family
    assert record["split_seeds"] == {s: split_seed(name, s) for s in ("train", "test")}
    assert set(record["digest"]) == {"train", "test"} and set(record["base_digest"]) == {"train", "test"}
    assert raw.source == str(cache_path(tmp_path, name, n=N))
    assert raw.train_x.float().mean() > 10  # digits, not an empty canvas


def test_same_seed_same_bytes_other_seed_other_bytes(mnist_raw):
    x = mnist_raw.test_x
    first, draws = distort("mnist_e", x, seed=7, n=200)
    again, _ = distort("mnist_e", x, seed=7, n=200)
    other, _ = distort("mnist_e", x, seed=8, n=200)
    assert torch.equal(first, again) and not torch.equal(first, other)
    torch.manual_seed(0)
    unaffected, _ = distort("mnist_e", x, seed=7, n=200)  # torch's global RNG plays no part
    assert torch.equal(first, unaffected)
    assert draws.shape == (200, len(DISTORTIONS["mnist_e"].columns))
    assert split_seed("mnist_e", "train") != split_seed("mnist_e", "test") != split_seed("mnist_r", "test")


def test_second_load_reads_the_cache_and_a_changed_seed_or_corrupt_file_regenerates(
        data_root, tmp_path, counted_generate, caplog):
    first = load("mnist_p", data_root, download=False, n=50, cache=tmp_path)
    path = cache_path(tmp_path, "mnist_p", n=50)
    mtime = path.stat().st_mtime_ns
    second = load("mnist_p", data_root, download=False, n=50, cache=tmp_path)
    assert counted_generate == ["mnist_p"] and path.stat().st_mtime_ns == mtime
    assert torch.equal(first.train_x, second.train_x) and first.generation == second.generation
    load("mnist_p", data_root, download=False, n=50, cache=tmp_path, seed=3)
    assert cache_path(tmp_path, "mnist_p", seed=3, n=50).is_file() and len(counted_generate) == 2
    path.write_bytes(b"not a torch file")
    with caplog.at_level(logging.WARNING):
        third = load("mnist_p", data_root, download=False, n=50, cache=tmp_path)
    assert "generating it again" in caplog.text and len(counted_generate) == 3
    assert torch.equal(third.train_x, first.train_x)
    assert not list(tmp_path.glob("*.tmp"))  # written atomically, nothing left beside it


def test_unwritable_cache_still_loads_with_a_warning(data_root, tmp_path, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache folder should be")
    with caplog.at_level(logging.WARNING):
        raw = load("mnist_r", data_root, download=False, n=20, cache=blocker / "distorted")
    assert raw.train_x.shape == (20, 1, 28, 28) and "could not cache" in caplog.text


def test_load_dataset_dispatches_to_the_generator(monkeypatch, tmp_path):
    monkeypatch.setattr(distorted, "load", lambda name, root, download: ("generated", name, root, download))
    assert load_dataset("mnist_rts", tmp_path, download=False) == ("generated", "mnist_rts", tmp_path.resolve(), False)


def test_full_rts_set_subset_is_its_prefix_and_specs_hold_its_statistics(mnist_raw):
    full, _ = distort("mnist_rts", mnist_raw.train_x, split_seed("mnist_rts", "train"))
    subset, _ = distort("mnist_rts", mnist_raw.train_x, split_seed("mnist_rts", "train"), n=100)
    assert full.shape == (60000, 1, 42, 42) and torch.equal(full[:100], subset)
    x = full.double() / 255
    assert x.mean().item() == pytest.approx(CATALOG["mnist_rts"].mean[0], abs=2e-4)
    assert x.std().item() == pytest.approx(CATALOG["mnist_rts"].std[0], abs=2e-4)


def test_rts_keeps_the_digit_inside_the_canvas_and_scales_its_mass(mnist_raw):
    out, draws = distort("mnist_rts", mnist_raw.test_x, seed=1, n=N)
    mass = out.double().sum((1, 2, 3))
    # the same draws on a 62 x 62 canvas, room for any digit: nothing was cut off if the 42 x 42 mass equals it
    roomy = warp(mnist_raw.test_x[:N].float(), DISTORTIONS["mnist_rts"].params(draws, 28, 62), "rts", (62, 62))
    torch.testing.assert_close(mass, roomy.double().sum((1, 2, 3)), rtol=2e-3, atol=0)
    ratio = mass / (mnist_raw.test_x[:N].double().sum((1, 2, 3)) * draws[:, 1] ** 2)  # area scales by s^2
    assert ratio.median().item() == pytest.approx(1.0, abs=0.03) and ratio.min() > 0.85 and ratio.max() < 1.15
    angle, scale = draws[:, 0], draws[:, 1]
    assert angle.abs().max() <= 45 and angle.abs().max() > 40 and scale.min() >= 0.7 and scale.max() <= 1.2
    # positions spread over the canvas: the digits' centres of mass move by several pixels
    cols = torch.arange(42, dtype=torch.float64)
    centre_x = (out[:, 0].double().sum(1) @ cols) / mass
    assert centre_x.std() > 3


def _correlation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a, b = a.flatten(1).double(), b.flatten(1).double()
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))


def test_r_images_are_the_originals_rotated_by_the_recorded_angle(mnist_raw):
    original = mnist_raw.test_x[:N]
    out, draws = distort("mnist_r", mnist_raw.test_x, seed=1, n=N)
    assert draws[:, 0].min() < -80 and draws[:, 0].max() > 80 and draws[:, 0].abs().max() <= 90
    zero = torch.zeros(N, dtype=torch.float64)
    back = torch.stack([-draws[:, 0] * (math.pi / 180), zero + 1, zero, zero], 1)  # rts parameters
    undone = warp(out.float(), back, "rts")
    assert _correlation(undone, original).min() > 0.8 and _correlation(undone, original).mean() > 0.95
    assert _correlation(out, original).mean() < 0.6  # rotated, they differ from the originals


@pytest.mark.parametrize("name", tuple(DISTORTIONS))
def test_no_image_of_a_whole_test_split_is_blank(name, mnist_raw, cifar_raw):
    """Every image keeps at least 5% of its source's ink (for CIFAR-10, of its departure from the fill colour), and
    P's redrawn offsets keep a subset a prefix of the set. Version 1's P left 25 of its 10,000 test images entirely
    blank: their homographies folded the plane through infinity inside the frame."""
    base = DISTORTIONS[name].base
    x = (cifar_raw if base == "cifar10" else mnist_raw).test_x
    mean = CATALOG[base].mean if base == "cifar10" else (0.0,)
    fill = 255 * torch.tensor(mean, dtype=torch.float64).view(1, -1, 1, 1)
    out, _ = distort(name, x, split_seed(name, "test"))
    kept = (out.double() - fill).abs().sum((1, 2, 3)) / (x.double() - fill).abs().sum((1, 2, 3))
    assert kept.min() > 0.05, f"{int((kept <= 0.05).sum())} of {len(x)} images nearly blank"
    assert torch.equal(distort(name, x, split_seed(name, "test"), n=50)[0], out[:50])


def test_projective_draws_map_moved_corners_to_the_scaled_ones():
    draws = torch.tensor([[0.8, 3, -2, 1, 4, -5, 0, 2, 2], [1.0, 0, 0, 0, 0, 0, 0, 0, 0]], dtype=torch.float64)
    h = DISTORTIONS["mnist_p"].params(draws, 28, 28)
    corners = torch.tensor(CORNERS, dtype=torch.float64)
    src = corners + draws[0, 1:].view(4, 2) * (2 / 28)  # corner offsets in px -> normalized
    matrix = torch.cat([h[0], torch.ones(1, dtype=torch.float64)]).view(3, 3)
    mapped = torch.cat([src, torch.ones(4, 1, dtype=torch.float64)], 1) @ matrix.T
    torch.testing.assert_close(mapped[:, :2] / mapped[:, 2:], corners / 0.8)
    torch.testing.assert_close(h[1], torch.tensor(FAMILIES["projective"].identity, dtype=torch.float64))


def test_elastic_without_offsets_is_a_pure_scale():
    draws = torch.cat([torch.tensor([[0.8]], dtype=torch.float64), torch.zeros(1, 32, dtype=torch.float64)], 1)
    grid = FAMILIES["tps"].grid(DISTORTIONS["mnist_e"].params(draws, 28, 28).float(), (28, 28))
    torch.testing.assert_close(grid, FAMILIES["attention"].grid(torch.tensor([[1 / 0.8, 0.0, 0.0]]), (28, 28)))


def test_cifar10_rts_is_48_pixels_with_the_mean_colour_around_it(data_root, cifar_raw, tmp_path):
    raw = load("cifar10_rts", data_root, download=False, n=64, cache=tmp_path)
    assert raw.train_x.shape == (64, 3, 48, 48) and torch.equal(raw.train_y, cifar_raw.train_y[:64])
    fill = torch.tensor([round(255 * m) for m in CATALOG["cifar10"].mean], dtype=torch.uint8)
    corner_is_fill = (raw.train_x[:, :, 0, 0] == fill).all(1)  # a canvas corner: outside almost every image
    assert corner_is_fill.float().mean() > 0.9
    assert raw.generation["fill"] == [round(255 * m, 2) for m in CATALOG["cifar10"].mean]
