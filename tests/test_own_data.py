"""Your own data: an ImageFolder tree and an .npz file, written here from the real CIFAR-10 and MNIST, load with
their class names, one size, a fixed split and content digests; each bad input is one line saying what to do."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from stn_ablation import cli
from stn_ablation.config import TrainConfig
from stn_ablation.data.datasets import load_dataset, prepare
from stn_ablation.data.releases import DataError

CPU = torch.device("cpu")


def _tree(folder, raw, classes: dict[str, int], per_class: int, sizes=((32, 32),)) -> None:
    """`per_class` training images of each of `classes` (name -> CIFAR-10 label) as PNGs under folder/<name>/,
    cycling through `sizes` (resized by PIL where a size differs from 32 x 32)."""
    for name, label in classes.items():
        (folder / name).mkdir(parents=True)
        for k, i in enumerate((raw.train_y == label).nonzero().flatten()[:per_class].tolist()):
            image = Image.fromarray(raw.train_x[i].permute(1, 2, 0).numpy())
            size = sizes[k % len(sizes)]
            (image if size == (32, 32) else image.resize(size[::-1])).save(folder / name / f"{i}.png")


def test_an_imagefolder_tree_loads_with_its_class_names_a_held_out_test_fifth_and_digests(cifar_raw, tmp_path,
                                                                                          monkeypatch):
    monkeypatch.chdir(tmp_path)
    _tree(tmp_path / "pets", cifar_raw, {"cat": 3, "dog": 5, "frog": 6}, per_class=20)
    raw = load_dataset("folder:pets")  # a relative path: from the current folder
    assert raw.classes == ("cat", "dog", "frog") and raw.source == str(tmp_path / "pets")
    assert (len(raw.train_y), len(raw.test_y)) == (48, 12) and raw.train_x.shape[1:] == (3, 32, 32)
    assert raw.train_x.dtype == torch.uint8 and sorted(torch.cat([raw.train_y, raw.test_y]).bincount()) == [20] * 3
    assert raw.provenance == "own data" and raw.spec.channels == 3 and not raw.spec.mirror_symmetric
    assert raw.spec.mean == tuple(round(v, 4) for v in (raw.train_x.float() / 255).mean((0, 2, 3)).tolist())
    data = prepare(raw, CPU, val_size=8)
    assert (len(data.train_y), len(data.val_y), data.num_classes, data.name) == (40, 8, 3, "folder:pets")
    again = prepare(load_dataset("folder:pets"), CPU, val_size=8)
    assert data.digests == again.digests and len(set(data.digests.values())) == 3  # fixed, one per split
    assert abs(data.train_x.mean().item()) < 0.2  # normalized by its own measured mean and std


def test_mixed_sizes_need_image_size_which_resizes_them_all(cifar_raw, tmp_path):
    _tree(tmp_path / "mixed", cifar_raw, {"ship": 8, "truck": 9}, per_class=6, sizes=((32, 32), (40, 30)))
    with pytest.raises(DataError, match=r"images are not one square size \(32x32, 30x40\): set image_size"):
        load_dataset(f"folder:{tmp_path / 'mixed'}")
    raw = load_dataset(f"folder:{tmp_path / 'mixed'}", image_size=24)
    assert raw.train_x.shape[1:] == raw.test_x.shape[1:] == (3, 24, 24) and raw.classes == ("ship", "truck")


def test_an_npz_set_loads_with_its_class_names_its_test_split_and_digests(mnist_raw, tmp_path):
    path = tmp_path / "digits.npz"
    keep = mnist_raw.train_y < 3
    np.savez(path, x_train=mnist_raw.train_x[keep][:150, 0].numpy(), y_train=mnist_raw.train_y[keep][:150].numpy(),
             x_test=mnist_raw.test_x[:50, 0].numpy(), y_test=mnist_raw.test_y[:50].numpy().clip(0, 2),
             classes=np.array(["zero", "one", "two"]))
    raw = load_dataset(f"npz:{path}")
    assert raw.classes == ("zero", "one", "two") and raw.train_x.shape == (150, 1, 28, 28)
    assert len(raw.test_y) == 50 and raw.spec.channels == 1
    data = prepare(raw, CPU, val_size=30)
    assert data.in_shape == (1, 28, 28) and data.num_classes == 3 and set(data.digests) == {"train", "validation",
                                                                                           "test"}
    assert load_dataset(f"npz:{path}", image_size=14).train_x.shape[1:] == (1, 14, 14)


@pytest.mark.parametrize("make, dataset, message", [
    (lambda d: None, "folder:{d}/absent", r"folder:.*/absent: no folder .*/absent; make it an ImageFolder tree"),
    (lambda d: (d / "t" / "cat").mkdir(parents=True), "folder:{d}/t",
     r"class folder .*/t/cat has no images \(.png, .jpg, .*\): add some or remove the folder"),
    (lambda d: np.savez(d / "b.npz", x_train=np.zeros((4, 8, 8), np.uint8), y_train=np.array([0, 1, 2, 3]),
                        classes=np.array(["a", "b", "c"])), "npz:{d}/b.npz",
     r"labels out of range \(0 to 3\); they must lie in 0 to 2, one per name in classes \(3\)"),
    (lambda d: np.savez(d / "f.npz", x_train=np.zeros((4, 8, 8)), y_train=np.arange(4)), "npz:{d}/f.npz",
     r"x_train is float64 of shape \(4, 8, 8\); it must be uint8 images"),
])
def test_bad_own_data_is_one_line_saying_what_to_do(tmp_path, capsys, make, dataset, message):
    import re

    make(tmp_path)
    code = cli.main(["train", "--variant", "tutorial_cnn", "--dataset", dataset.format(d=tmp_path), "--epochs", "1",
                     "--home", str(tmp_path / "home"), "--device", "cpu"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and re.search(message, err), err


def test_a_dataset_name_and_image_size_are_checked_in_the_config():
    with pytest.raises(ValueError, match="or your own: folder:DIR .* or npz:FILE, got 'imagenet'"):
        TrainConfig(dataset="imagenet")
    with pytest.raises(ValueError, match="image_size resizes your own data"):
        TrainConfig(dataset="cifar10", image_size=24)
    assert TrainConfig(dataset="npz:x.npz", image_size=24).as_dict()["image_size"] == 24
    assert "image_size" not in TrainConfig().as_dict()  # the shipped studies' digests and run identities stay
