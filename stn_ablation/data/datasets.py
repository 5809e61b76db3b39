"""Any dataset as tensors on the training device: a release (releases.py), a generated set (distorted.py) or a
user's own (own.py), loaded once, normalized once, split once (a fixed train/validation split, 45k/5k by default;
the test set is only ever evaluated)."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from stn_ablation.catalog import CATALOG, own_data
from stn_ablation.data import distorted
from stn_ablation.data.own import load_own
from stn_ablation.data.releases import DATA_ENV, DataError, RawDataset, default_data_root, digest, load_release
from stn_ablation.device import channels_last
from stn_ablation.errors import ConfigError

SPLIT_SEED = 20150605  # fixes the train/validation split and the subset order for every run and every seed


@dataclass(frozen=True)
class DataSplits:
    """Normalized float32 splits on the training device; batches are index slices of these tensors."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    mirror_symmetric: bool
    provenance: str
    name: str  # the dataset: a catalog name, or own data's "folder:DIR" or "npz:FILE"
    source: str  # the folder (or file) it was loaded from
    digests: dict[str, str]  # split (train, validation, test) -> sha256 prefix of its uint8 images and labels
    generation: dict = field(default_factory=dict)  # RawDataset.generation, for the run to log; {} for a plain set

    @property
    def official(self) -> bool:
        return self.provenance == "official"

    @property
    def in_shape(self) -> tuple[int, int, int]:
        return tuple(self.train_x.shape[1:])

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def load_dataset(name: str, root: Path | str | None = None, download: bool = True, image_size: int | None = None
                 ) -> RawDataset:
    """Load `name` from `root` (default: `default_data_root()`), downloading it when it is absent and the network
    allows; own data (own.py) from its own path, resized to `image_size` where given."""
    if own_data(name):
        return load_own(name, image_size)
    if name not in CATALOG:
        raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(CATALOG)}")
    return _load_cached(name, Path(root).expanduser().resolve() if root else default_data_root().resolve(), download)


@functools.lru_cache(maxsize=4)
def _load_cached(name: str, root: Path, download: bool) -> RawDataset:
    """Cached per process and root: a generated set is read and checked against its base once."""
    if root.exists() and not root.is_dir():
        raise DataError(f"data root {root} is a file, not a folder; pass --data-root DIR or set {DATA_ENV}")
    if CATALOG[name].base:
        return distorted.load(name, root, download)
    return load_release(name, root, download)


def split_indices(n: int, val_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed shuffle of range(n): (train indices, validation indices). Same for every run and seed."""
    if not 0 <= val_size < n:
        raise ConfigError(f"val_size must be in [0, {n - 1}], got {val_size}: the training set has {n} images; set "
                          f"val_size (a study's [train], train's --val-size) to a part of them, e.g. {n // 10}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(SPLIT_SEED))
    return order[val_size:], order[:val_size]


def prepare(raw: RawDataset, device: torch.device, *, val_size: int = 5000, subset: int | None = None) -> DataSplits:
    """Normalize once, split, move to `device`. `subset` keeps the first N training images of the fixed shuffle.
    The images are stored in the layout the model runs in (channels_last where device.channels_last says so), so
    neither a training batch, which indexing and augmentation keep in that layout, nor an evaluation batch is
    copied into it by the first convolution every step; the values, and so every result, are the same."""
    train_idx, val_idx = split_indices(len(raw.train_y), val_size)
    if subset is not None:
        if subset > len(train_idx):
            raise ConfigError(f"--subset {subset} is larger than the {len(train_idx)} training images "
                             f"({len(raw.train_y)} minus {val_size} for validation); use at most {len(train_idx)}")
        train_idx = train_idx[:subset]
    spec = raw.spec or CATALOG[raw.name]
    mean = torch.tensor(spec.mean, device=device).view(1, -1, 1, 1)
    std = torch.tensor(spec.std, device=device).view(1, -1, 1, 1)

    layout = torch.channels_last if channels_last(device) else torch.contiguous_format

    def normalize(x: torch.Tensor) -> torch.Tensor:
        x = x.to(device, non_blocking=True).float().div_(255).contiguous(memory_format=layout)
        return (x - mean).div_(std)

    def labels(y: torch.Tensor) -> torch.Tensor:
        return y.to(device, non_blocking=True)

    splits = {"train": (raw.train_x[train_idx], raw.train_y[train_idx]),
              "validation": (raw.train_x[val_idx], raw.train_y[val_idx]), "test": (raw.test_x, raw.test_y)}
    return DataSplits(
        *(t for x, y in splits.values() for t in (normalize(x), labels(y))),
        raw.classes, spec.mean, spec.std, spec.mirror_symmetric, raw.provenance, raw.name, raw.source,
        {name: digest(x, y) for name, (x, y) in splits.items()}, raw.generation)


def denormalize(x: torch.Tensor, splits: DataSplits) -> np.ndarray:
    """Normalized B x C x H x W -> B x H x W x C floats on [0, 1], for plotting."""
    mean = torch.tensor(splits.mean, device=x.device).view(1, -1, 1, 1)
    std = torch.tensor(splits.std, device=x.device).view(1, -1, 1, 1)
    return (x.float() * std + mean).clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()
