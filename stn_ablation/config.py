"""Frozen, typed configuration of one training run; every field says its unit. Studies and the CLI only ever
produce new configs with `with_overrides`, which rejects keys that do not exist."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from stn_ablation.catalog import NAMES, own_data
from stn_ablation.errors import ConfigError

AUGMENTATIONS = ("none", "standard", "affine")
DATASETS = NAMES  # the catalog's
OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("constant", "cosine", "onecycle")
REFERENCE_AUGMENTATIONS = AUGMENTATIONS[:2]  # what bench's tutorial-style reference pipeline can do too
# --device and --precision: what they mean is device.py's; named here, free of torch, so that the command line's
# choices import nothing heavy
DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
# the fields a study's grid may vary, in the order of its cells and report (the dataset slowest: a study run in
# pieces finishes whole datasets first); a variant without a transformer takes no transform (studyfile.grid_cells)
GRID_AXES = ("dataset", "variant", "transform", "aug", "seed")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a run's result. Defaults are the suite's 50-epoch recipe: one-cycle nesterov SGD with
    label smoothing, and a localization net at a tenth of the learning rate, because at the classifier's peak rate
    the localization net destabilizes (the STN paper trained it 10x slower on SVHN)."""

    variant: str = "tutorial_stn"  # registry name, see `stn-ablate list`
    transform: str = "affine"  # the transformer's family, one of transforms.FAMILIES; ignored without a transformer
    dataset: str = "cifar10"  # one of DATASETS
    aug: str = "none"  # one of AUGMENTATIONS: "standard" = 4-pixel crop + flip, "affine" = rotate/zoom/shift + flip
    epochs: int = 50  # full passes over the training split
    batch_size: int = 128  # images per optimizer step
    optimizer: str = "sgd"  # one of OPTIMIZERS
    lr: float = 0.05  # peak learning rate (one-cycle), initial (cosine) or constant, per step
    momentum: float = 0.9  # SGD momentum; AdamW uses it as beta1
    nesterov: bool = True  # SGD only
    weight_decay: float = 5e-4  # L2 factor, applied to weights only (never to biases, BatchNorm or the STN's identity)
    schedule: str = "onecycle"  # one of SCHEDULES, stepped once per batch
    warmup: float = 0.2  # one-cycle: fraction of all steps spent rising linearly to `lr`
    label_smoothing: float = 0.1  # cross-entropy target smoothing, 0 = plain cross-entropy
    loc_lr_mult: float = 0.1  # localization-net learning rate as a multiple of `lr`
    seed: int = 0  # initialization, shuffling, augmentation and dropout
    subset: int | None = None  # train on the first N images of a seeded shuffle of the training split; None = all
    val_size: int = 5000  # images held out of the training set for validation (split seed fixed, see data.py)
    eval_batch_size: int = 256  # images per evaluation forward pass (larger is slower on a CPU, fine on a GPU)
    frozen: str = ""  # a `<twin>+frozen` variant's fixed transform: "<family>:<p1>,<p2>,..." (e.g. attention:1.63,0,0)
    # or "learned" (a study sets it to the mean learned zoom and shift of its finished STN runs of the same cell)
    image_size: int | None = None  # own data (folder:, npz:): resize every image to this many pixels a side;
    # None = the images' own size, one square size for all

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value, expected = getattr(self, f.name), _TYPES[f.type]
            if not isinstance(value, expected) or (isinstance(value, bool) and bool not in expected):
                raise ConfigError(f"{f.name} must be of type {f.type}, got {value!r}")
            if f.type == "float":  # lr = 1 and lr = 1.0 are one config, with one digest
                object.__setattr__(self, f.name, float(value))
        if self.dataset not in DATASETS and not own_data(self.dataset):
            raise ConfigError(f"dataset must be one of {', '.join(DATASETS)}, or your own: folder:DIR (an ImageFolder "
                              f"tree) or npz:FILE, got {self.dataset!r}")
        from stn_ablation.transforms import FAMILIES  # here, not above: the command line's choices stay torch-free

        _check_choice("transform", self.transform, tuple(FAMILIES))
        _check_choice("aug", self.aug, AUGMENTATIONS)
        _check_choice("optimizer", self.optimizer, OPTIMIZERS)
        _check_choice("schedule", self.schedule, SCHEDULES)
        for name in ("epochs", "batch_size", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.subset is not None and self.subset < 1:
            raise ConfigError(f"subset must be at least 1 (or unset for all images), got {self.subset}")
        if not self.lr > 0 or not self.loc_lr_mult >= 0:
            raise ConfigError(f"lr must be > 0 and loc_lr_mult >= 0, got lr={self.lr}, loc_lr_mult={self.loc_lr_mult}")
        if not 0 <= self.label_smoothing < 1 or not 0 <= self.warmup < 1:
            raise ConfigError("label_smoothing and warmup must lie in [0, 1)")
        if self.val_size < 0:
            raise ConfigError(f"val_size must be >= 0, got {self.val_size}")
        if self.frozen not in ("", FROZEN_LEARNED):
            frozen_transform(self.frozen)
        if self.image_size is not None and (self.image_size < 1 or not own_data(self.dataset)):
            raise ConfigError(f"image_size resizes your own data (dataset folder:DIR or npz:FILE) and must be at least "
                              f"1; got {self.image_size} for dataset {self.dataset}")

    def with_overrides(self, **overrides: Any) -> "TrainConfig":
        """A copy with `overrides` applied; None values are ignored (an unset flag), unknown keys are an error."""
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ConfigError(f"unknown config key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(known))}")
        return dataclasses.replace(self, **{k: v for k, v in overrides.items() if v is not None})

    def as_dict(self) -> dict[str, Any]:
        """Every field, but `frozen` and `image_size` only where set: configs from before them keep their digests
        (and run keys)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in OPTIONAL or v not in OPTIONAL[k]}

    def digest(self) -> str:
        """Short hash of the config: a checkpoint is only resumed by a run with the same one."""
        return hashlib.sha256(json.dumps(self.as_dict(), sort_keys=True).encode()).hexdigest()[:16]


FROZEN_LEARNED = "learned"
OPTIONAL = {"frozen": ("",), "image_size": (None,)}  # fields as_dict leaves out at these (their defaults') values


def frozen_transform(spec: str) -> tuple[str, tuple[float, ...]]:
    """(family, parameters) of a frozen transform "<family>:<p1>,<p2>,..."; ConfigError naming the form."""
    from stn_ablation.transforms import FAMILIES

    name, _, numbers = spec.partition(":")
    try:
        params = tuple(float(v) for v in numbers.split(","))
    except ValueError:
        params = ()
    if name not in FAMILIES or len(params) != FAMILIES[name].n_params:
        raise ConfigError(f"frozen must be \"learned\" or <family>:<parameters>, e.g. attention:1.63,0,0 (a family "
                          f"of {', '.join(FAMILIES)} with its number of parameters), got {spec!r}")
    return name, params


_TYPES = {"str": (str,), "int": (int,), "float": (int, float), "bool": (bool,), "int | None": (int, type(None))}


def _check_choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")


SWEEP_KINDS = ("rotate", "scale", "translate")  # the distortions of RobustnessConfig, in report order


@dataclass(frozen=True)
class RobustnessConfig:
    """The distortion sweeps every finished trial is evaluated under: where an STN should matter. The images are
    the first `images` of the test set, identical for every variant, so results pair across models and seeds."""

    rotate: tuple[float, ...] = (-60, -45, -30, -15, 0, 15, 30, 45, 60)  # degrees, counter-clockwise
    scale: tuple[float, ...] = (0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 1.3, 1.4)  # zoom factor, > 1 enlarges
    translate: tuple[float, ...] = (-8, -6, -4, -2, 0, 2, 4, 6, 8)  # pixels, applied along both axes at once
    images: int = 2000  # test images per sweep point; 0 disables the sweeps

    def __post_init__(self) -> None:
        for name in SWEEP_KINDS:
            values = getattr(self, name)
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
                raise ConfigError(f"robustness.{name} must be a list of numbers, got {values!r}")
        if any(s <= 0 for s in self.scale):
            raise ConfigError(f"robustness.scale factors must be > 0, got {self.scale}")
        if not isinstance(self.images, int) or self.images < 0:
            raise ConfigError(f"robustness.images must be an integer >= 0, got {self.images!r}")
