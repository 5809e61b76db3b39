"""One config -> one tracked, resumable MLflow run. Shared by `stn-ablate train` and every study trial, so both
record exactly the same things."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import torch
import torch.nn as nn

from stn_ablation.catalog import IMAGE_WIDTH_TAG
from stn_ablation.config import RobustnessConfig, TrainConfig
from stn_ablation.data.datasets import DataSplits
from stn_ablation.device import autocast_dtype, device_model, precision_name
from stn_ablation.tracking.identity import IDENTITY_TAG, NUMERICS_TAG, NUMERICS_VERSION, run_identity, training_params
from stn_ablation.models.registry import build_model, get_variant
from stn_ablation.tracking.tracker import DatasetRecord, Tracker, TrackingError, metric_key
from stn_ablation.training.final import final_evaluation
from stn_ablation.training.train import EpochStats, Hooks, StopRun, TrainResult, fan_out, train

ROBUSTNESS_TAG = "robustness"  # the sweeps a run was evaluated under (robustness_tag)


class Progress:
    """One live line per run: label, epoch k/N, loss, accuracy, ETA. The bar starts when training does, at the
    epochs a resumed run already has."""

    def __init__(self, label: str, epochs: int):
        self.label, self.epochs, self.bar = label, epochs, None
        self.hooks = Hooks(on_start=self.start, on_epoch=self.update, on_end=lambda result: self.close())

    def start(self, resumed: list[EpochStats]) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=self.epochs, initial=len(resumed), desc=self.label, unit="epoch", dynamic_ncols=True,
                        leave=True)

    def update(self, stats: EpochStats, model: nn.Module) -> None:
        postfix = {"loss": f"{stats.train_loss:.3f}", "train": f"{stats.train_acc:.3f}"}
        if not math.isnan(stats.val_acc):  # NaN: trained on every training image (val_size = 0), nothing to show
            postfix["val"] = f"{stats.val_acc:.3f}"
        self.bar.set_postfix(postfix, refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def grid_epochs(epochs: int) -> set[int]:
    """Epochs at which an STN's before/after picture is saved: first, middle and last."""
    return {1, (epochs + 1) // 2, epochs}


@dataclass(frozen=True)
class TrackedRun:
    """What `run_tracked` trains and how MLflow files it; built by `stn-ablate train` and by each study trial."""

    cfg: TrainConfig
    experiment_id: str
    key: str  # the unit of work across re-runs of the same command (tracking.KEY_TAG)
    run_name: str
    checkpoint: Path
    tags: Mapping[str, str] = field(default_factory=dict)  # on top of the config's own (variant, seed, ...)
    parent_run_id: str | None = None
    progress_label: str | None = None  # the progress bar's label; default the run name
    reuse_finished: bool = False  # a finished run of `key` is returned as it is (see Tracker.open_run)
    robustness: RobustnessConfig = RobustnessConfig()
    precision: str = "auto"
    deterministic: bool = False  # deterministic kernels only (train's `deterministic`), tagged on the run


def run_tracked(run: TrackedRun, data: DataSplits, device: torch.device, tracker: Tracker, *,
                hooks: Sequence[Hooks] = (), on_open: Callable[[str], None] | None = None
                ) -> tuple[str, TrainResult]:
    """Train `run.cfg` as the MLflow run identified by `run.key`. A killed run re-run with the same key continues
    its checkpoint in the same MLflow run, with no gap and no duplicate step (a new run when the logged epochs are
    not the checkpoint's: Recorder.start). `on_open` gets the run id before training, and again for a new run;
    `hooks` listen to the trainer after the MLflow logging and the progress bar. A hook's `StopRun` (pruning)
    closes the run as pruned and propagates; so does any other error, closing it as failed. A finished run is then
    evaluated under the `robustness` sweeps."""
    cfg = run.cfg
    precision = precision_name(autocast_dtype(device, run.precision))
    tags = {"variant": cfg.variant, "augmentation": cfg.aug, "seed": str(cfg.seed), "dataset": cfg.dataset,
            "device": str(device), "device_model": device_model(device), "data_provenance": data.provenance,
            IMAGE_WIDTH_TAG: str(data.in_shape[-1]), **_ablation_tags(cfg.variant),
            "precision": precision, "deterministic": str(run.deterministic).lower(),
            IDENTITY_TAG: run_identity(cfg, data, device.type, precision), NUMERICS_TAG: str(NUMERICS_VERSION),
            ROBUSTNESS_TAG: robustness_tag(run.robustness), **run.tags}

    def open_run() -> str:
        run_id = tracker.open_run(run.experiment_id, run.key, run.run_name, parent_run_id=run.parent_run_id,
                                  params=training_params(cfg), reuse_finished=run.reuse_finished, tags=tags)
        if on_open:
            on_open(run_id)
        tracker.log_datasets(run_id, dataset_records(data))
        _log_generation(tracker, run_id, data.generation)
        return run_id

    progress = Progress(run.progress_label or run.run_name, cfg.epochs)
    sampling = contextlib.ExitStack()
    recorder = Recorder(tracker, open_run, run, data, sampling)
    try:
        with sampling:
            result = train(build_model(cfg, data.in_shape, data.num_classes), cfg, data, device,
                           checkpoint=run.checkpoint, precision=run.precision, deterministic=run.deterministic,
                           **fan_out([progress.hooks, recorder.hooks, *hooks]))
    except StopRun as e:
        tracker.end_run(recorder.run_id, "pruned", str(e))
        raise
    except Exception as e:  # Ctrl-C and kill leave the run open: the same command resumes it
        # so do an error while finishing (the re-run finishes it, see _finish) and a server that stayed away
        if not recorder.finishing and not isinstance(e, TrackingError):
            tracker.end_run(recorder.run_id, "failed", f"{type(e).__name__}: {e}")
        raise
    finally:
        progress.close()
    return recorder.run_id, result


class Recorder:
    """The trainer's events as one MLflow run: resumed epochs replayed, each epoch's metrics (and an STN's
    pictures), system metrics while training, then the final metrics, the robustness sweeps and the model."""

    def __init__(self, tracker: Tracker, open_run: Callable[[], str], run: TrackedRun, data: DataSplits,
                 sampling: contextlib.ExitStack):
        self.tracker, self.open_run, self.run, self.data, self.sampling = tracker, open_run, run, data, sampling
        self.run_id = open_run()
        self.pictures = grid_epochs(run.cfg.epochs)
        self.started = time.perf_counter()
        self.finishing = False
        self.hooks = Hooks(on_start=self.start, on_epoch=self.epoch, on_end=self.end)

    def start(self, resumed: list[EpochStats]) -> None:
        """A reopened unfinished run continues only if its logged epochs are the checkpoint's: epochs of an attempt
        whose checkpoint is gone (another machine's, an imported runs file's) would splice two trainings into one
        history. Such a run is closed as failed, saying why, and the cell starts a new run. A finished run (reused,
        `reuse_finished`) keeps its result: nothing new is logged into it."""
        logged = self.tracker.metric_history(self.run_id, "train_loss")
        finished = bool(logged) and self.tracker.client.get_run(self.run_id).info.status == "FINISHED"
        if not finished and any(m.step > len(resumed) or m.value != resumed[m.step - 1].train_loss for m in logged):
            epochs = max(m.step for m in logged)
            self.tracker.set_aside(self.run_id, self.run.key, f"its logged epochs 1-{epochs} are not those of this "
                                   f"worker's checkpoint (it holds {len(resumed)}): trained again in a new run")
            self.run_id = self.open_run()
        self.tracker.log_epochs(self.run_id, resumed)  # fills what a kill between checkpoint and logging left out
        if resumed:
            self.tracker.set_tags(self.run_id, {"resumed_from_epoch": str(len(resumed))})
        self.sampling.enter_context(self.tracker.system_metrics(self.run_id, resumed=bool(resumed)))

    def epoch(self, stats: EpochStats, model: nn.Module) -> None:
        self.tracker.log_epochs(self.run_id, [stats])
        if getattr(model, "stn", None) is not None and stats.epoch in self.pictures:
            from stn_ablation.tracking.pictures import stn_grid

            fig = stn_grid(model, self.data, title=f"{self.run.cfg.variant}, epoch {stats.epoch}")
            self.tracker.log_figure(self.run_id, fig, f"stn/epoch_{stats.epoch:03d}.png")

    def end(self, result: TrainResult) -> None:
        self.sampling.close()  # system metrics describe training, not the evaluation below
        self.finishing = True
        _finish(self.tracker, self.run_id, result, self.data, time.perf_counter() - self.started,
                self.run.robustness, self.run.precision)


def _finish(tracker: Tracker, run_id: str, result: TrainResult, data: DataSplits, seconds: float,
            robustness: RobustnessConfig, precision: str) -> None:
    """Final metrics, robustness sweeps and artifacts, then close the run with the trainer's status. A finished
    run's model is logged first, so that its final metrics are the logged model's too. Safe to run twice (a worker
    killed before closing the run finishes it again on the re-run): every metric is logged once."""
    model, cfg = result.model, result.config
    history = result.history
    final = {"n_params": sum(p.numel() for p in model.parameters()), "wall_seconds_this_process": seconds}
    if history:
        best = history[result.best_epoch - 1]
        final.update(final_test_acc=result.test_acc, final_val_acc=history[-1].val_acc,
                     best_epoch=result.best_epoch, best_val_acc=best.val_acc,
                     train_seconds=sum(s.seconds for s in history),
                     mean_images_per_s=sum(s.images_per_s for s in history) / len(history))
    tracker.log_dict(run_id, cfg.as_dict(), "config.json")
    model_id = evaluation = None
    if result.status == "finished":
        evaluation = final_evaluation(model, cfg, data, robustness, precision)
        tracker.log_dict(run_id, evaluation.per_class_test_acc, "per_class_test_acc.json")
        model_id = tracker.log_model(run_id, model, data.test_x[:2], step=len(history))
    tracker.log_metrics_once(run_id, {k: v for k, v in final.items() if math.isfinite(v)}, step=len(history),
                             model_id=model_id)
    if evaluation is not None:
        by_class = {f"class_test_acc/{metric_key(c)}": v for c, v in evaluation.per_class_test_acc.items()
                    if math.isfinite(v)}  # the report's per-class table, by class name (a class without images: NaN)
        tracker.log_metrics_once(run_id, {**evaluation.metrics, **by_class}, model_id=model_id)
    tracker.end_run(run_id, result.status, result.reason)


def dataset_records(data: DataSplits) -> list[DatasetRecord]:
    """The splits a run reads, with their content digests, for MLflow's dataset inputs (an empty validation split,
    val_size = 0, is left out)."""
    sizes = {"train": len(data.train_y), "validation": len(data.val_y), "test": len(data.test_y)}
    return [DatasetRecord(f"{data.name}-{split}", split, data.digests[split], data.source, rows, data.official)
            for split, rows in sizes.items() if rows]


def _log_generation(tracker: Tracker, run_id: str, generation: dict) -> None:
    """A generated set's record (distorted.generate) as `data/generation.json`, with its version and seed as tags to
    filter by in MLflow's UI: the dataset's name alone does not say how its images were drawn (the dataset inputs
    hold the digests of the splits the run read). A plain set has no record and logs nothing; a resumed run logs the
    same record again, which overwrites the artifact and the tags."""
    if not generation:
        return
    tracker.log_dict(run_id, generation, "data/generation.json")
    tracker.set_tags(run_id, {"data_generation_version": str(generation["version"]),
                              "data_generation_seed": str(generation["seed"])})


def robustness_tag(robustness: RobustnessConfig) -> str:
    """The sweeps a run was evaluated under, as its `robustness` tag: a study with other sweeps re-evaluates it."""
    return json.dumps(dataclasses.asdict(robustness), sort_keys=True)


def _ablation_tags(variant: str) -> dict[str, str]:
    """Tags that let the report pair an STN run with its twin's without importing any model code."""
    found = get_variant(variant)
    if found.twin:
        return {"stn": "true", "twin": found.twin}
    return {"stn": "false", "frozen_of": found.controls} if found.controls else {"stn": "false"}
