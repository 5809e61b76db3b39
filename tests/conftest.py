"""Shared fixtures: the real CIFAR-10 copy, small device-resident splits of it, a throw-away state folder, and the
environment variables a test needs.

The data tests need a torchvision-layout data root in $STN_ABLATE_DATA (with cifar-10-batches-py/ and MNIST/);
the PostgreSQL tests need the server's variables that .ci/run sets. Without them the tests are skipped locally,
but fail in CI (CI=true): a CI job that silently skips them would look green while testing nothing.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest
import torch

from stn_ablation.data.datasets import DataSplits, load_dataset, prepare
from stn_ablation.data.releases import DATA_ENV
from stn_ablation.paths import HOME_ENV, StateHome

CPU = torch.device("cpu")


def skip_or_fail(message: str) -> None:
    """Skip locally, fail in CI."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message} (CI=true: these tests are never skipped in CI)", pytrace=False)
    pytest.skip(message)


@pytest.fixture
def required_env():
    """`required_env(*names, hint=...)`: the values of environment variables the test needs. If any is unset the
    test is skipped locally and fails in CI, naming the missing ones and `hint` (where they come from)."""

    def get(*names: str, hint: str) -> list[str]:
        missing = [name for name in names if not os.environ.get(name)]
        if missing:
            skip_or_fail(f"{', '.join(missing)} not set: {hint}")
        return [os.environ[name] for name in names]
    return get


@pytest.fixture(scope="session")
def data_root() -> Path:
    value = os.environ.get(DATA_ENV)
    root = Path(value).expanduser() if value else None
    if root is None or not (root / "cifar-10-batches-py").is_dir():
        why = (f"${DATA_ENV} is not set" if root is None
               else f"${DATA_ENV}={value} has no cifar-10-batches-py/ folder")
        skip_or_fail(f"{why}: point {DATA_ENV} at a torchvision data root holding cifar-10-batches-py/ "
                     "(and MNIST/raw/) to run the data tests")
    return root


@pytest.fixture(scope="session")
def cifar_raw(data_root):
    return load_dataset("cifar10", data_root, download=False)


@pytest.fixture(scope="session")
def mnist_raw(data_root):
    if not (data_root / "MNIST" / "raw").is_dir():
        skip_or_fail(f"no MNIST/raw/ folder under ${DATA_ENV}={data_root}")
    return load_dataset("mnist", data_root, download=False)


@pytest.fixture(scope="session")
def small_cifar(cifar_raw) -> DataSplits:
    """1024 training images, 500 validation images, the whole 10k test set, on the CPU."""
    return prepare(cifar_raw, CPU, val_size=500, subset=1024)


def shrink(data: DataSplits, train: int, evaluate: int) -> DataSplits:
    """The first `train` training images and the first `evaluate` validation and test images (the trainer
    evaluates both every epoch): what keeps the loc3 runs, ~1 s per small batch on a 2-core CPU, affordable."""
    return dataclasses.replace(
        data, train_x=data.train_x[:train], train_y=data.train_y[:train],
        val_x=data.val_x[:evaluate], val_y=data.val_y[:evaluate],
        test_x=data.test_x[:evaluate], test_y=data.test_y[:evaluate])


@pytest.fixture(name="shrink")
def shrink_fixture():
    """`shrink` as a fixture, so test modules need not import conftest (tests/ may or may not be a package)."""
    return shrink


@pytest.fixture
def home(tmp_path, monkeypatch) -> StateHome:
    """A fresh state folder in tmp_path, also exported as $STN_ABLATE_HOME for the CLI."""
    monkeypatch.setenv(HOME_ENV, str(tmp_path / "home"))
    return StateHome.resolve(tmp_path / "home")
