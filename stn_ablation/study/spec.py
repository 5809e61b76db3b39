"""Study files (`studies/*.toml`) -> validated `StudySpec`s. Every mistake is reported as one line that names the
file, the key and what is allowed, before anything trains."""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stn_ablation.config import GRID_AXES, RobustnessConfig, TrainConfig
from stn_ablation.errors import ConfigError, UsageError
from stn_ablation.models.registry import UnknownVariantError, get_variant
from stn_ablation.plugins import load_plugins

STUDIES_DIR = Path(__file__).resolve().parents[2] / "studies"
SAMPLERS = ("tpe", "random")
PRUNERS = ("median", "none")
METRICS = ("val_acc", "test_acc")
TOP_KEYS = {"name", "description", "plugins", "metric", "n_trials", "sampler", "pruner", "grid", "search", "train",
            "robustness"}


class StudyFileError(UsageError):
    """A study file that cannot be used; the message names the file and the key."""


@dataclass(frozen=True)
class Param:
    """One dimension of a tuning search space."""

    name: str  # a TrainConfig field
    kind: str  # float | int | categorical
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple[Any, ...] = ()


@dataclass(frozen=True)
class StudySpec:
    name: str
    description: str
    path: Path
    file_sha256: str  # of the file's bytes: tags every run so results trace to the exact file
    base: TrainConfig  # the defaults with the file's [train] deltas and the command line's overrides applied
    grid: dict[str, tuple[Any, ...]]  # axis -> values; empty for a tuning study
    search: tuple[Param, ...]  # empty for a grid study
    n_trials: int  # grid: number of cells; tuning: total trials across all workers
    sampler: str
    pruner: str
    metric: str  # the Optuna value: val_acc, or test_acc for a grid study without a validation split (recorded
    # under its own name; a grid study selects nothing, and a tuning study may not use it)
    robustness: RobustnessConfig  # distortion sweeps run after each finished trial

    @property
    def phase(self) -> str:
        return "grid" if self.grid else "tune"

    def cells(self) -> list[dict[str, Any]]:
        """The grid cells as dicts of axis -> value, in GRID_AXES order (dataset slowest, seed fastest);
        `--n-trials N` keeps the first N."""
        return grid_cells(self.grid, self.base)[:self.n_trials]

    def config(self, params: dict[str, Any]) -> TrainConfig:
        return self.base.with_overrides(**params)

    @property
    def datasets(self) -> list[str]:
        """The datasets the study's trials train on, in grid order (a tuning study: its base's one)."""
        return list(dict.fromkeys(self.config(cell).dataset for cell in self.cells()))

    @property
    def digest(self) -> str:
        """Hash of everything that decides the study's results: a changed file or override is a new study."""
        payload = {"base": self.base.as_dict(), "grid": {k: list(v) for k, v in self.grid.items()},
                   "search": [dataclasses.asdict(p) for p in self.search], "n_trials": self.n_trials,
                   "sampler": self.sampler, "pruner": self.pruner, "metric": self.metric,
                   "robustness": dataclasses.asdict(self.robustness)}
        return hashlib.sha256(json.dumps(payload, sort_keys=True, default=list).encode()).hexdigest()[:10]

    @property
    def argument(self) -> str:
        """What `--study` names it by: a shipped study's name, any other study's file path as it was given."""
        return self.name if self.path.parent == STUDIES_DIR else str(self.path)

    @property
    def storage_name(self) -> str:
        """The Optuna study name: the study's name plus its digest."""
        return f"{self.name}-{self.digest}"


def grid_cells(grid: dict[str, tuple[Any, ...]], base: TrainConfig) -> list[dict[str, Any]]:
    """Every combination of the grid's axes, in GRID_AXES order, except that a variant without a transformer has no
    transform: it gets one cell without that axis, not one identical run per family, and so pairs with each of its
    STN twin's transforms (the report's pairing)."""
    axes = [a for a in GRID_AXES if a in grid]
    cells = []
    for values in itertools.product(*(grid[a] for a in axes)):
        cell = dict(zip(axes, values))
        if "transform" in cell and not get_variant(cell.get("variant", base.variant)).has_transformer:
            del cell["transform"]
        if cell not in cells:
            cells.append(cell)
    return cells


def list_studies() -> list[str]:
    return sorted(p.stem for p in STUDIES_DIR.glob("*.toml"))


def find_study(name_or_path: str) -> Path:
    """A shipped study's name or a path to a TOML file."""
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.exists():
        if not path.is_file():
            raise StudyFileError(f"study file {path} does not exist")
        return path
    shipped = STUDIES_DIR / f"{name_or_path}.toml"
    if not shipped.is_file():
        raise StudyFileError(f"unknown study {name_or_path!r}; choose one of: {', '.join(list_studies())} "
                             "(or pass a path to a .toml file)")
    return shipped


def load_spec(name_or_path: str, **overrides: Any) -> StudySpec:
    """Read and validate a study file; `overrides` (epochs, subset, n_trials, ...) win over the file."""
    path = find_study(name_or_path)
    raw_bytes = path.read_bytes()
    try:
        doc = tomllib.loads(raw_bytes.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise StudyFileError(f"{path}: invalid TOML: {e}") from None
    return _parse(path, doc, hashlib.sha256(raw_bytes).hexdigest(), overrides)


def _parse(path: Path, doc: dict[str, Any], sha: str, overrides: dict[str, Any]) -> StudySpec:
    def fail(key: str, message: str) -> StudyFileError:
        return StudyFileError(f"{path}: {key}: {message}")

    unknown = sorted(set(doc) - TOP_KEYS)
    if unknown:
        raise fail(unknown[0], f"unknown key; allowed: {', '.join(sorted(TOP_KEYS))}")
    for key in ("name", "description"):
        if not isinstance(doc.get(key), str) or not doc[key].strip():
            raise fail(key, "required, a non-empty string")
    plugins = doc.get("plugins", [])
    if not isinstance(plugins, list) or not all(isinstance(m, str) and m for m in plugins):
        raise fail("plugins", 'a list of module names, e.g. ["my_models"] for my_models.py beside the study file')
    load_plugins(plugins, path.parent, f"{path}: plugins")  # before any variant name is looked up
    if ("grid" in doc) == ("search" in doc):
        raise fail("grid/search", "a study has exactly one of [grid] (an ablation) or [search] (tuning)")
    n_trials_override = overrides.pop("n_trials", None)

    train = doc.get("train", {})
    if not isinstance(train, dict):
        raise fail("train", "must be a table of TrainConfig fields")
    try:
        base = TrainConfig().with_overrides(**train).with_overrides(**overrides)
        get_variant(base.variant)
    except (ConfigError, UnknownVariantError) as e:
        raise fail("train", str(e)) from None

    grid: dict[str, tuple[Any, ...]] = {}
    search: tuple[Param, ...] = ()
    if "grid" in doc:
        grid = _parse_grid(doc["grid"], base, fail)
        n_trials = len(grid_cells(grid, base))
    else:
        search = _parse_search(doc["search"], base, fail)
        n_trials = doc.get("n_trials")
        if not isinstance(n_trials, int) or n_trials < 1:
            raise fail("n_trials", "a tuning study needs n_trials, an integer >= 1")
    if n_trials_override is not None:
        if n_trials_override < 1:
            raise ConfigError(f"--n-trials must be at least 1, got {n_trials_override}")
        n_trials = n_trials_override if search else min(n_trials, n_trials_override)

    sampler = doc.get("sampler", "tpe")
    pruner = doc.get("pruner", "median" if search else "none")
    metric = doc.get("metric", "val_acc")
    for key, value, allowed in (("sampler", sampler, SAMPLERS), ("pruner", pruner, PRUNERS),
                                ("metric", metric, METRICS)):
        if value not in allowed:
            raise fail(key, f"{value!r} is not allowed; choose one of {', '.join(allowed)}")
    if search and metric == "test_acc":
        raise fail("metric", "a tuning study optimizes val_acc: the test set is for final numbers only")
    if metric == "val_acc" and base.val_size == 0:
        raise fail("metric", 'there is no validation split (val_size = 0): set metric = "test_acc" (a grid study '
                             "only records it, nothing is chosen by it) or keep a validation split")
    robustness = doc.get("robustness", {})
    allowed_sweeps = {f.name for f in dataclasses.fields(RobustnessConfig)}
    if not isinstance(robustness, dict) or set(robustness) - allowed_sweeps:
        raise fail("robustness", f"must be a table with keys among {', '.join(sorted(allowed_sweeps))}")
    try:
        sweeps = RobustnessConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in robustness.items()})
    except (ConfigError, TypeError) as e:
        raise fail("robustness", str(e)) from None
    return StudySpec(doc["name"], doc["description"].strip(), path, sha, base, grid, search, n_trials, sampler,
                     pruner, metric, sweeps)


def _parse_grid(grid: Any, base: TrainConfig, fail) -> dict[str, tuple[Any, ...]]:
    if not isinstance(grid, dict) or not grid:
        raise fail("grid", f"must be a table with at least one of {', '.join(GRID_AXES)}")
    unknown = sorted(set(grid) - set(GRID_AXES))
    if unknown:
        raise fail(f"grid.{unknown[0]}", f"unknown axis; allowed: {', '.join(GRID_AXES)}")
    for axis, values in grid.items():
        if not isinstance(values, list) or not values:
            raise fail(f"grid.{axis}", "must be a non-empty list (an empty axis makes an empty grid)")
        if len(set(values)) != len(values):
            raise fail(f"grid.{axis}", "lists a value twice")
        for value in values:
            try:
                if axis == "variant":
                    get_variant(value)
                base.with_overrides(**{axis: value})
            except (UnknownVariantError, ConfigError) as e:
                raise fail(f"grid.{axis}", str(e)) from None
    return {axis: tuple(grid[axis]) for axis in GRID_AXES if axis in grid}


def _parse_search(search: Any, base: TrainConfig, fail) -> tuple[Param, ...]:
    if not isinstance(search, dict) or not search:
        raise fail("search", "must be a table of [search.FIELD] tables")
    params = []
    fields = set(base.as_dict())
    for name, spec in search.items():
        key = f"search.{name}"
        if name not in fields:
            raise fail(key, f"not a training setting; allowed: {', '.join(sorted(fields))}")
        if not isinstance(spec, dict):
            raise fail(key, "must be a table with type and low/high or choices")
        kind = spec.get("type")
        allowed = {"float": {"type", "low", "high", "log"}, "int": {"type", "low", "high", "log"},
                   "categorical": {"type", "choices"}}
        if kind not in allowed:
            raise fail(f"{key}.type", "must be float, int or categorical")
        extra = sorted(set(spec) - allowed[kind])
        if extra:
            raise fail(f"{key}.{extra[0]}", f"unknown key for type {kind}; allowed: {', '.join(sorted(allowed[kind]))}")
        if kind == "categorical":
            choices = spec.get("choices")
            if not isinstance(choices, list) or not choices:
                raise fail(f"{key}.choices", "must be a non-empty list")
            probes = choices
            param = Param(name, kind, choices=tuple(choices))
        else:
            low, high, log = spec.get("low"), spec.get("high"), spec.get("log", False)
            number = (int,) if kind == "int" else (int, float)
            if not isinstance(low, number) or not isinstance(high, number) or isinstance(low, bool):
                raise fail(key, f"needs numeric low and high of type {kind}")
            if not low < high:
                raise fail(key, f"bad range: low ({low}) must be below high ({high})")
            if log and low <= 0:
                raise fail(key, f"bad range: a log scale needs low > 0, got {low}")
            probes = [low, high]
            param = Param(name, kind, float(low) if kind == "float" else low,
                          float(high) if kind == "float" else high, bool(log))
        for value in probes:
            try:
                base.with_overrides(**{name: value})
            except ConfigError as e:
                raise fail(key, str(e)) from None
        params.append(param)
    return tuple(params)
