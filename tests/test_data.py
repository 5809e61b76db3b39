"""Loading the real CIFAR-10 and MNIST copies, the fixed split, normalization, and the one-line data errors.

`load_dataset` caches per (name, resolved root, download): every test that needs a fresh load uses its own
tmp_path root."""

from __future__ import annotations

import hashlib
import logging
import pickle
from pathlib import Path

import pytest
import torch

from stn_ablation.data.datasets import load_dataset, prepare, split_indices
from stn_ablation.data.releases import MNIST_MD5, DataError
from stn_ablation.errors import ConfigError, UsageError

CPU = torch.device("cpu")
CIFAR_FILES = ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch",
               "batches.meta"]
LAYOUT = "cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}"


def _copy_with(real_root: Path, root: Path, replace: dict[str, bytes] | None = None) -> Path:
    """A CIFAR root in `root` whose files are symlinks to the real ones, except those in `replace`."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name in CIFAR_FILES:
        if replace and name in replace:
            (folder / name).write_bytes(replace[name])
        else:
            (folder / name).symlink_to((real_root / "cifar-10-batches-py" / name).resolve())
    return root


def _md5_warnings(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "stn_ablation.data.releases" and r.levelno == logging.WARNING]


@pytest.fixture(scope="module")
def mismatched(data_root) -> set[str]:
    """The files of this CIFAR-10 copy whose md5, computed here, differs from torchvision's list of the official
    release: none for the official download, some for a local copy. The tests expect what the data actually is."""
    from torchvision.datasets import CIFAR10

    official = CIFAR10.train_list + CIFAR10.test_list + [[CIFAR10.meta["filename"], CIFAR10.meta["md5"]]]
    assert sorted(name for name, _ in official) == sorted(CIFAR_FILES)
    folder = data_root / "cifar-10-batches-py"
    return {name for name, md5 in official if hashlib.md5((folder / name).read_bytes()).hexdigest() != md5}


# --- the real CIFAR-10 copy ------------------------------------------------------------------------------------

def test_cifar10_raw_shapes_and_types(cifar_raw):
    assert cifar_raw.name == "cifar10"
    assert cifar_raw.train_x.shape == (50000, 3, 32, 32) and cifar_raw.test_x.shape == (10000, 3, 32, 32)
    assert cifar_raw.train_x.dtype == torch.uint8 and cifar_raw.test_x.dtype == torch.uint8
    assert cifar_raw.train_y.shape == (50000,) and cifar_raw.test_y.shape == (10000,)
    assert cifar_raw.train_y.dtype == torch.int64
    assert len(cifar_raw.classes) == 10 and cifar_raw.classes[0] == "airplane"
    assert set(cifar_raw.train_y.unique().tolist()) == set(range(10))
    assert torch.bincount(cifar_raw.test_y).tolist() == [1000] * 10
    assert cifar_raw.train_x.float().std() > 10  # real images, not zeros


def test_cifar10_provenance_names_exactly_the_md5_mismatches(cifar_raw, mismatched):
    """"official" for the official release; otherwise a local copy naming the files whose md5 differs."""
    assert (cifar_raw.provenance == "official") == (not mismatched)
    assert cifar_raw.provenance == "official" or "md5 differs from official" in cifar_raw.provenance
    for name in CIFAR_FILES:
        assert (name in cifar_raw.provenance) == (name in mismatched), name


def test_md5_mismatch_is_one_warning_line(data_root, cifar_raw, mismatched, tmp_path, caplog):
    """A copy whose batches.meta is re-pickled (the same class names in other bytes) differs from the official
    release whatever the real copy is: one warning line names it and every other mismatch, and it loads."""
    meta = pickle.loads((data_root / "cifar-10-batches-py" / "batches.meta").read_bytes(), encoding="latin1")
    root = _copy_with(data_root, tmp_path / "repickled", {"batches.meta": pickle.dumps(meta)})
    with caplog.at_level(logging.WARNING):
        fresh = load_dataset("cifar10", root, download=False)
    warnings = _md5_warnings(caplog)
    assert len(warnings) == 1
    text = warnings[0].getMessage()
    assert "\n" not in text and "md5" in text
    for name in CIFAR_FILES:
        assert (name in text) == (name in mismatched | {"batches.meta"}), name
    assert fresh.classes == cifar_raw.classes
    assert torch.equal(fresh.train_x, cifar_raw.train_x) and torch.equal(fresh.test_y, cifar_raw.test_y)


def test_load_is_cached_per_root(data_root, cifar_raw):
    assert load_dataset("cifar10", data_root, download=False) is cifar_raw


# --- split and prepare -------------------------------------------------------------------------------------------

def test_split_indices_fixed_and_disjoint():
    torch.manual_seed(1)
    train, val = split_indices(50000, 5000)
    torch.manual_seed(2)  # the global RNG plays no part
    train2, val2 = split_indices(50000, 5000)
    assert torch.equal(train, train2) and torch.equal(val, val2)
    assert len(train) == 45000 and len(val) == 5000
    assert torch.equal(torch.cat([train, val]).sort().values, torch.arange(50000))
    assert not set(train.tolist()) & set(val.tolist())
    assert not torch.equal(train[:100], torch.arange(5000, 5100))  # shuffled, not a slice
    # a smaller validation set takes the head of the same shuffle
    train3, val3 = split_indices(50000, 500)
    assert torch.equal(val3, val[:500])


@pytest.mark.parametrize("val_size", [-1, 50000, 60000])
def test_split_indices_rejects_bad_val_size(val_size):
    with pytest.raises(ConfigError, match="val_size"):
        split_indices(50000, val_size)


def test_prepare_normalizes_and_splits(small_cifar, cifar_raw):
    d = small_cifar
    assert d.train_x.shape == (1024, 3, 32, 32) and d.val_x.shape == (500, 3, 32, 32)
    assert d.test_x.shape == (10000, 3, 32, 32)
    assert d.train_x.dtype == torch.float32 and d.train_x.device.type == "cpu"
    assert d.in_shape == (3, 32, 32) and d.num_classes == 10 and d.mirror_symmetric
    mean = d.train_x.mean(dim=(0, 2, 3))
    std = d.train_x.std(dim=(0, 2, 3))
    assert mean.abs().max() < 0.1, mean
    assert (std - 1).abs().max() < 0.1, std
    # the labels follow the images: the validation split is the head of the fixed shuffle
    _, val_idx = split_indices(50000, 500)
    assert torch.equal(d.val_y, cifar_raw.train_y[val_idx])
    expected = (cifar_raw.train_x[val_idx[:3]].float() / 255 - torch.tensor(d.mean).view(1, 3, 1, 1)) \
        / torch.tensor(d.std).view(1, 3, 1, 1)
    assert torch.allclose(d.val_x[:3], expected, atol=1e-5)


def test_subset_is_a_prefix_of_the_fixed_shuffle(small_cifar, cifar_raw):
    smaller = prepare(cifar_raw, CPU, val_size=500, subset=100)
    assert torch.equal(smaller.train_x, small_cifar.train_x[:100])
    assert torch.equal(smaller.train_y, small_cifar.train_y[:100])


def test_subset_larger_than_training_split_raises(cifar_raw):
    with pytest.raises(ConfigError) as info:
        prepare(cifar_raw, CPU, val_size=5000, subset=45001)
    assert "45000" in str(info.value) and "\n" not in str(info.value)


# --- data errors -------------------------------------------------------------------------------------------------

def _one_line_data_error(root, name="cifar10", **kwargs) -> str:
    with pytest.raises(DataError) as info:
        load_dataset(name, root, **kwargs)
    assert isinstance(info.value, UsageError)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_missing_root_names_folder_and_layout(tmp_path):
    root = tmp_path / "nowhere"
    message = _one_line_data_error(root, download=False)
    assert str(root) in message
    assert LAYOUT in message
    assert not root.exists()  # download=False creates nothing


def test_empty_cifar_folder_is_a_data_error(tmp_path):
    (tmp_path / "empty" / "cifar-10-batches-py").mkdir(parents=True)
    message = _one_line_data_error(tmp_path / "empty", download=False)
    assert "data_batch_1" in message and LAYOUT in message


def test_files_in_the_wrong_place_is_a_data_error(data_root, tmp_path):
    root = tmp_path / "flat"
    root.mkdir()
    for name in CIFAR_FILES:  # directly in the root instead of in cifar-10-batches-py/
        (root / name).symlink_to((data_root / "cifar-10-batches-py" / name).resolve())
    message = _one_line_data_error(root, download=False)
    assert str(root) in message and LAYOUT in message


def test_root_that_is_a_file_is_a_data_error(tmp_path):
    file = tmp_path / "file"
    file.write_text("x")
    assert "is a file" in _one_line_data_error(file, download=False)


def test_unknown_dataset_is_a_data_error(tmp_path):
    assert "imagenet" in _one_line_data_error(tmp_path, name="imagenet", download=False)


def test_truncated_batch_file_is_a_data_error(data_root, tmp_path, caplog):
    real = (data_root / "cifar-10-batches-py" / "data_batch_1").read_bytes()
    root = _copy_with(data_root, tmp_path / "truncated", {"data_batch_1": real[: len(real) // 3]})
    with caplog.at_level(logging.WARNING):
        message = _one_line_data_error(root, download=False)
    assert "truncated or corrupt" in message
    assert str(root / "cifar-10-batches-py") in message
    assert len(_md5_warnings(caplog)) == 1  # the truncated file also fails the md5 check, warned once


def test_empty_batch_file_is_a_data_error(data_root, tmp_path):
    root = _copy_with(data_root, tmp_path / "zero", {"test_batch": b""})
    assert "truncated or corrupt" in _one_line_data_error(root, download=False)


def test_corrupt_meta_file_is_a_data_error(data_root, tmp_path):
    real = (data_root / "cifar-10-batches-py" / "batches.meta").read_bytes()
    root = _copy_with(data_root, tmp_path / "meta", {"batches.meta": real[:50]})
    assert "truncated or corrupt" in _one_line_data_error(root, download=False)


# --- MNIST ---------------------------------------------------------------------------------------------------------

def test_mnist_loads(mnist_raw):
    raw = mnist_raw
    assert raw.train_x.shape == (60000, 1, 28, 28) and raw.test_x.shape == (10000, 1, 28, 28)
    assert raw.train_x.dtype == torch.uint8 and raw.train_y.dtype == torch.int64
    assert len(raw.classes) == 10 and set(raw.test_y.unique().tolist()) == set(range(10))
    splits = prepare(raw, CPU, val_size=1000, subset=2000)
    assert splits.in_shape == (1, 28, 28) and not splits.mirror_symmetric
    assert abs(splits.train_x.mean().item()) < 0.1


def test_missing_mnist_is_a_data_error(tmp_path):
    message = _one_line_data_error(tmp_path / "no-mnist", name="mnist", download=False)
    assert str(tmp_path / "no-mnist") in message and "MNIST/raw/" in message


def test_mnist_provenance_is_checked_against_the_original_md5s(data_root, mnist_raw, tmp_path):
    """MNIST is called official only when its four idx files have the original files' md5s; a changed byte in a
    label file makes it a local copy that names the file."""
    raw_dir = data_root / "MNIST" / "raw"
    matches = all(hashlib.md5((raw_dir / name).read_bytes()).hexdigest() == md5 for name, md5 in MNIST_MD5.items())
    assert (mnist_raw.provenance == "official") == matches
    copy = tmp_path / "mnist" / "MNIST" / "raw"
    copy.mkdir(parents=True)
    for name in MNIST_MD5:
        data = bytearray((raw_dir / name).read_bytes())
        if name == "t10k-labels-idx1-ubyte":
            data[-1] = (data[-1] + 1) % 10  # one test label changed
        (copy / name).write_bytes(bytes(data))
    changed = load_dataset("mnist", tmp_path / "mnist", download=False)
    assert changed.provenance.startswith("local copy") and "t10k-labels-idx1-ubyte" in changed.provenance
    assert "train-images-idx3-ubyte" not in changed.provenance or not matches
