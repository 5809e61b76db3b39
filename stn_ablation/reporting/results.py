"""A study as its report sees it: the `Run`s and the `Study` built from run records (records.py reads them from
MLflow or from a runs file: never Optuna, never the checkpoints). Kept apart from report.py, which writes the files,
so that the tables (tables.py), the pictures (figures.py) and the study's summary metrics (study/summary.py) share
one model of a study without importing the report or each other."""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass, field
from typing import Sequence

from stn_ablation.config import AUGMENTATIONS, GRID_AXES
from stn_ablation.errors import UsageError

RUNNING = "running/incomplete"  # a child without a status tag: still running, or its process died unannounced


@dataclass(frozen=True)
class Run:
    """One child run (one trial), reduced to what the report uses."""

    id: str
    name: str
    dataset: str
    variant: str
    transform: str  # the transformer's family; "" for a variant without a transformer
    aug: str
    seed: int
    trial: int
    status: str  # finished | diverged | pruned | failed | RUNNING
    reason: str
    start: int  # ms since the epoch
    end: int | None
    tags: dict[str, str]
    params: dict[str, str]
    metrics: dict[str, float]  # each metric's latest value
    history: dict[str, dict[int, float]]  # val_acc / test_acc -> epoch -> value
    pictures: dict[str, str] = field(default_factory=dict)  # artifact path -> base64 PNG, for the report's picture

    @property
    def short(self) -> str:
        return self.id[:8]

    @property
    def stn(self) -> bool:
        return self.tags.get("stn") == "true"

    @property
    def model(self) -> str:
        """What the report compares: the variant, and for one with a transformer its family (tutorial_stn/affine),
        so that each family of one variant is its own cell and pairs with the same no-STN twin."""
        return f"{self.variant}/{self.transform}" if self.transform else self.variant


@dataclass
class Study:
    """The newest version of a study: its parent run, the child runs under it, and which of them count."""

    name: str
    parent_id: str
    parent_tags: dict[str, str]
    parent_params: dict[str, str]
    parent_end: int | None
    runs: list[Run]  # every child, sorted by dataset, model, augmentation, seed, trial
    older: list[tuple[str, str]]  # (run id, study digest) of older versions' parent runs
    models: list[str]  # Run.model labels: the study file's order of variants and transforms, then any other seen
    augs: list[str]
    grid: dict[str, list[str]]  # axis -> values, from the parent's grid.* params
    phase: str  # "grid" or "tune"
    counted: dict[tuple[str, str], list[Run]] = field(default_factory=dict)  # (model, aug) -> finished runs, of
    # every dataset: a study over several is read through per_dataset
    superseded: list[Run] = field(default_factory=list)  # finished runs of a grid cell that has a newer one

    @property
    def datasets(self) -> list[str]:
        """The datasets of its runs, in the grid's order (one for a study without a dataset axis; for a parent run
        that logged no base config, its runs')."""
        base = self.parent_params.get("base.dataset") or next((r.dataset for r in self.runs), "cifar10")
        return _ordered({r.dataset for r in self.runs}, self.grid.get("dataset", [base]))

    def per_dataset(self) -> list[tuple[str, Study]]:
        """(dataset, the study restricted to it) for each dataset: the report's tables, pairings and pictures are
        per dataset, as a comparison never pools images of different kinds. A study with one dataset is itself."""
        if len(self.datasets) == 1:
            return [(self.datasets[0], self)]
        grid = {a: v for a, v in self.grid.items() if a != "dataset"}
        return [(d, dataclasses.replace(
            self, parent_params={**self.parent_params, "base.dataset": d}, grid=grid,
            runs=[r for r in self.runs if r.dataset == d],
            counted={c: kept for c, runs in self.counted.items() if (kept := [r for r in runs if r.dataset == d])},
            superseded=[r for r in self.superseded if r.dataset == d])) for d in self.datasets]

    def cells(self) -> list[tuple[tuple[str, str], list[Run]]]:
        """((model, aug), finished runs by seed) for every cell with at least one, in report order."""
        return [((m, a), self.counted[(m, a)]) for m in self.models for a in self.augs if (m, a) in self.counted]

    def expected_cells(self) -> list[tuple[str, str, int]]:
        """Every (model, aug, seed) the grid asks for; an axis not in the grid takes the base config's value. A
        variant counts as one with a transformer, one cell per transform, when a run of it, on any of the study's
        datasets, says so (the report imports no model code); one without any run is listed once, by its name."""
        base = {"transform": "affine"}  # a study from before transform families logged no base.transform
        axes = {a: self.grid.get(a) or [self.parent_params.get(f"base.{a}", base.get(a, "?"))] for a in GRID_AXES}
        stn = {m.split("/")[0] for m in self.models if "/" in m}  # `models` spans every dataset (per_dataset)
        models = [f"{v}/{t}" if v in stn else v for v in axes["variant"] for t in axes["transform"]]
        return [(m, a, _int(s)) for m in dict.fromkeys(models) for a in axes["aug"] for s in axes["seed"]]


def numerics(run: Run) -> str:
    """Device type and autocast precision, e.g. cpu/bfloat16: runs that differ in it are not pooled."""
    return f"{run.tags.get('device', '?').split(':')[0]}/{run.tags.get('precision', '?')}"


def study_from_records(name: str, parent: dict, children: list[dict], only: str | None = None) -> Study:
    """The Study of a parent run and its children, given as run records (records.py: read from MLflow or from a
    runs file, the same either way); UsageError when the finished runs mix device types or precisions and `only`
    (a `numerics` value) does not pick one."""
    params = parent["params"]
    grid = {a: params[f"grid.{a}"].split(",") for a in GRID_AXES if f"grid.{a}" in params}
    runs = [r for r in map(run_of, children) if only is None or numerics(r) == only]
    mixed = Counter(numerics(r) for r in runs if r.status == "finished")
    if len(mixed) > 1:
        counts = ", ".join(f"{k}: {n}" for k, n in sorted(mixed.items()))
        raise UsageError(f"study {name!r} has finished runs in more than one device/precision ({counts}); a mean "
                         f"over them would pool different numerics: pass --numerics {mixed.most_common(1)[0][0]} "
                         "(or another of them) to report one")
    variants = _ordered({r.variant for r in runs}, grid.get("variant", []))
    transforms = _ordered({r.transform for r in runs if r.transform}, grid.get("transform", []))
    models = [m for v in variants for m in _models(v, transforms, runs)]
    augs = _ordered({r.aug for r in runs}, grid.get("aug", []) + list(AUGMENTATIONS))
    datasets = _ordered({r.dataset for r in runs}, grid.get("dataset", []))
    runs.sort(key=lambda r: (datasets.index(r.dataset), models.index(r.model), augs.index(r.aug), r.seed, r.trial,
                             r.start, r.id))
    tuning = any(r.tags.get("phase") == "tune" for r in runs) or not grid
    older = [tuple(pair) for pair in parent.get("older_versions", [])]
    study = Study(name, parent["id"], parent["tags"], params, parent["end"], runs, older, models, augs, grid,
                  "tune" if tuning else "grid")
    for run in runs:
        if run.status != "finished" or "final_test_acc" not in run.metrics:
            continue
        cell = study.counted.setdefault((run.model, run.aug), [])
        same = next((r for r in cell if (r.dataset, r.seed) == (run.dataset, run.seed)), None) if not tuning else None
        if same is None:
            cell.append(run)
        else:  # two finished runs of one grid cell: the newer counts, the other is listed
            keep, drop = (run, same) if (run.start, run.id) > (same.start, same.id) else (same, run)
            cell[cell.index(same)] = keep
            study.superseded.append(drop)
    return study


def run_of(record: dict) -> Run:
    """A run record (records.py) as the report reads it."""
    tags, params = record["tags"], record["params"]
    history = {key: {step: value for step, value, _ in record["history"][key]} for key in ("val_acc", "test_acc")
               if record["history"].get(key)}
    stn = tags.get("stn") == "true"  # a run from before transform families was affine, and logged no transform
    return Run(record["id"], record["name"], tags.get("dataset", params.get("dataset", "cifar10")),
               tags.get("variant", params.get("variant", "?")),
               params.get("transform", "affine") if stn else "", tags.get("augmentation", params.get("aug", "?")),
               _int(tags.get("seed", params.get("seed"))),
               _int(tags.get("trial")), tags.get("status", RUNNING), tags.get("status_reason", ""),
               record["start"] or 0, record["end"], tags, params, record["metrics"], history,
               record.get("pictures", {}))


def picture_runs(study: Study) -> list[Run]:
    """The runs whose last-epoch transformer picture the report shows: per dataset, STN model and augmentation, the
    lowest seed (the best trial of a tuning study)."""
    return [min(runs, key=lambda r: (r.seed, -r.metrics.get("best_val_acc", 0.0), r.trial, r.id))
            for _, part in study.per_dataset() for _, runs in part.cells() if runs[0].stn]


def _int(value: str | None) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return -1


def _models(variant: str, transforms: list[str], runs: list[Run]) -> list[str]:
    """`variant`'s Run.model labels in `transforms` order: one per family its runs used, or the bare name for a
    variant without a transformer (or without runs)."""
    seen = {r.transform for r in runs if r.variant == variant and r.transform}
    return [f"{variant}/{t}" for t in transforms if t in seen] or [variant]


def _ordered(seen: set[str], preferred: Sequence[str]) -> list[str]:
    """`preferred` (the study file's order) first, then anything else seen, sorted."""
    return list(dict.fromkeys(preferred)) + sorted(seen - set(preferred))


def objective(run: Run) -> float | None:
    """What a tuning study maximizes and its report ranks by: validation accuracy after the run's last epoch."""
    history = run.history.get("val_acc", {})
    return run.metrics.get("final_val_acc", history[max(history)] if history else None)
