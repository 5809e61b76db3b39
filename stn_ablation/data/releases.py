"""The official releases, CIFAR-10 and MNIST, from a torchvision data root: downloaded when absent (where the network
allows), md5-checked against the official files (a local copy that differs loads, with a warning and its
provenance), decoded to uint8 tensors once per process. Also the content digest every split is named by."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import pickle
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import torch

from stn_ablation.catalog import CATALOG, Dataset
from stn_ablation.errors import UsageError

log = logging.getLogger(__name__)

DATA_ENV = "STN_ABLATE_DATA"


class DataError(UsageError):
    """Data that cannot be found or read; the message says where it was looked for and what to put there."""


@dataclass(frozen=True)
class RawDataset:
    """A whole dataset as uint8 N x C x H x W images and int64 labels, on the CPU."""

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: tuple[str, ...]
    provenance: str  # "official" or what differs from the official release
    source: str  # the folder it was loaded from
    generation: dict = field(default_factory=dict)  # a generated set's parameters and digests (distorted.py)
    spec: Dataset | None = None  # own data's description, measured (own.py); None for a set of the catalog


def default_data_root() -> Path:
    """`$STN_ABLATE_DATA`, else a per-user cache folder."""
    if os.environ.get(DATA_ENV):
        return Path(os.environ[DATA_ENV]).expanduser()
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "stn-ablate" / "data"


@functools.lru_cache(maxsize=4)
def load_release(name: str, root: Path, download: bool) -> RawDataset:
    """Release `name` (cifar10 or mnist) under `root`; cached per process and root: the CIFAR pickles take a second
    to decode, and a generated set reads its base again."""
    return (_load_cifar10 if name == "cifar10" else _load_mnist)(root, download)


def _missing(root: Path, name: str, cause: str) -> DataError:
    spec = CATALOG[name]
    return DataError(
        f"{name} not found under {root} ({cause}); put {spec.layout} in that folder, "
        f"or pass --data-root DIR / set {DATA_ENV}"
    )


def _describe(absent: list[str], files: list) -> str:
    return "no CIFAR-10 files there" if len(absent) == len(files) else f"missing {', '.join(absent)}"


def _cifar10_class():
    """torchvision's CIFAR10 with the md5 check moved out of the constructor, so a local copy whose md5s differ
    from the official release loads (`_load_cifar10` checks the md5s itself and warns)."""
    from torchvision.datasets import CIFAR10

    class LocalCIFAR10(CIFAR10):
        meta = {**CIFAR10.meta, "md5": None}  # None: torchvision checks only that the file exists

        def _check_integrity(self) -> bool:
            folder = Path(self.root) / self.base_folder
            return all((folder / name).is_file() for name, _ in self.train_list + self.test_list)

    return CIFAR10, LocalCIFAR10


def _load_cifar10(root: Path, download: bool) -> RawDataset:
    from torchvision.datasets.utils import check_integrity

    official, local = _cifar10_class()
    folder = root / CATALOG["cifar10"].folder
    files = official.train_list + official.test_list + [[official.meta["filename"], official.meta["md5"]]]
    absent = [name for name, _ in files if not (folder / name).is_file()]
    if absent and download:
        log.info("CIFAR-10 is not under %s; downloading it there (170 MB)", root)
        try:
            with _network_timeout(30):
                official(str(root), train=True, download=True)
        except Exception as e:  # no network, a proxy, a bad archive: all mean "could not download"
            raise _missing(root, "cifar10", f"{_describe(absent, files)}; download failed: {e}") from None
        absent = [name for name, _ in files if not (folder / name).is_file()]
    if absent:
        raise _missing(root, "cifar10", _describe(absent, files))
    mismatched = [name for name, md5 in files if not check_integrity(str(folder / name), md5)]
    if mismatched:
        log.warning("CIFAR-10 at %s: md5 differs from the official release for %s; loading it as a local copy",
                    folder, ", ".join(mismatched))
    try:
        train, test = local(str(root), train=True), local(str(root), train=False)
    except (pickle.UnpicklingError, EOFError, ValueError, KeyError, RuntimeError) as e:
        raise DataError(
            f"CIFAR-10 batch files under {folder} are truncated or corrupt ({type(e).__name__}: {e}); "
            "delete the folder and download or unpack it again") from None
    if train.data.shape != (50000, 32, 32, 3) or test.data.shape != (10000, 32, 32, 3):
        raise DataError(f"CIFAR-10 under {folder} has {len(train.data)} training and {len(test.data)} test images, "
                        "not 50000 and 10000; delete the folder and download or unpack it again")
    provenance = "official" if not mismatched else f"local copy, md5 differs from official: {', '.join(mismatched)}"
    return RawDataset(
        "cifar10",
        torch.from_numpy(train.data).permute(0, 3, 1, 2).contiguous(), torch.tensor(train.targets),
        torch.from_numpy(test.data).permute(0, 3, 1, 2).contiguous(), torch.tensor(test.targets),
        tuple(train.classes), provenance, str(folder))


# md5 of the original uncompressed idx files (torchvision lists the .gz archives' md5s, which differ by re-packing)
MNIST_MD5 = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}


def _load_mnist(root: Path, download: bool) -> RawDataset:
    from torchvision.datasets import MNIST
    from torchvision.datasets.utils import check_integrity

    try:
        with _network_timeout(30):
            train = MNIST(str(root), train=True, download=download)
            test = MNIST(str(root), train=False, download=download)
    except RuntimeError as e:
        if str(e).startswith("Dataset not found"):
            raise _missing(root, "mnist", "no MNIST files there") from None
        if str(e).startswith("Error downloading"):  # every mirror failed; the message lists each, over lines
            raise _missing(root, "mnist", f"download failed: {_last_line(e)}") from None
        raise DataError(f"MNIST files under {root / 'MNIST' / 'raw'} are truncated or corrupt ({e}); delete "
                        "them and download or unpack them again") from None
    except Exception as e:  # download attempted and failed
        raise _missing(root, "mnist", f"download failed: {e}") from None
    folder = Path(train.raw_folder)
    mismatched = [name for name, md5 in MNIST_MD5.items() if not check_integrity(str(folder / name), md5)]
    if mismatched:
        log.warning("MNIST at %s: md5 differs from the original files for %s; loading it as a local copy",
                    folder, ", ".join(mismatched))
    provenance = "official" if not mismatched else f"local copy, md5 differs from official: {', '.join(mismatched)}"
    return RawDataset("mnist", train.data[:, None].contiguous(), train.targets.long(),
                      test.data[:, None].contiguous(), test.targets.long(), tuple(train.classes), provenance,
                      str(folder))


def _last_line(error: Exception) -> str:
    """The last non-empty line of a multi-line message: its cause, for a one-line error."""
    return next((line for line in reversed(str(error).splitlines()) if line.strip()), type(error).__name__)


@contextlib.contextmanager
def _network_timeout(seconds: float) -> Iterator[None]:
    """torchvision opens its download URLs without a timeout; on a network that drops packets that would hang."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def digest(x: torch.Tensor, y: torch.Tensor) -> str:
    """Content hash of a split: equal digests mean the same images with the same labels in the same order."""
    h = hashlib.sha256(x.contiguous().numpy().tobytes())
    h.update(y.numpy().tobytes())
    return h.hexdigest()[:16]
