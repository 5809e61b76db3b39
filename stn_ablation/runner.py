"""One config -> one tracked, resumable MLflow run. Shared by `stn-ablate train` and every study trial, so both
record exactly the same things."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn as nn

from stn_ablation.checkpoint import load_checkpoint
from stn_ablation.config import RobustnessConfig, TrainConfig
from stn_ablation.data import DataSplits
from stn_ablation.device import autocast_dtype, precision_name
from stn_ablation.evaluate import score
from stn_ablation.registry import get_variant
from stn_ablation.robustness import sweep_accuracy, theta_stats
from stn_ablation.tracking import DatasetRecord, Tracker
from stn_ablation.train import EpochHook, EpochStats, StopRun, TrainResult, train


class Progress:
    """One live line per run: label, epoch k/N, loss, accuracy, ETA."""

    def __init__(self, label: str, epochs: int, done: int = 0):
        from tqdm import tqdm

        self.bar = tqdm(total=epochs, initial=done, desc=label, unit="epoch", dynamic_ncols=True, leave=True)

    def __call__(self, stats: EpochStats, model: nn.Module) -> None:
        self.bar.set_postfix(loss=f"{stats.train_loss:.3f}", train=f"{stats.train_acc:.3f}",
                             val=f"{stats.val_acc:.3f}", refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


def grid_epochs(epochs: int) -> set[int]:
    """Epochs at which an STN's before/after picture is saved: first, middle and last."""
    return {1, (epochs + 1) // 2, epochs}


def run_tracked(cfg: TrainConfig, data: DataSplits, device: torch.device, tracker: Tracker, experiment_id: str, *,
                key: str, run_name: str, checkpoint: Path, tags: dict[str, str] | None = None,
                parent_run_id: str | None = None, hooks: Sequence[EpochHook] = (), progress_label: str | None = None,
                on_start: Callable[[str], None] | None = None, reuse_finished: bool = False,
                robustness: RobustnessConfig = RobustnessConfig(), precision: str = "auto"
                ) -> tuple[str, TrainResult]:
    """Train `cfg` as the MLflow run identified by `key`. A killed run re-run with the same key continues its
    checkpoint in the same MLflow run, with no gap and no duplicate step. A hook's `StopRun` (pruning) closes the
    run as pruned and propagates; so does any other error, closing it as failed. A finished run is then evaluated
    under the `robustness` sweeps."""
    run_id = tracker.open_run(
        experiment_id, key, run_name, parent_run_id=parent_run_id, params=_params(cfg),
        reuse_finished=reuse_finished,
        tags={"variant": cfg.variant, "augmentation": cfg.aug, "seed": str(cfg.seed), "dataset": cfg.dataset,
              "device": str(device), "data_provenance": data.provenance, **_ablation_tags(cfg.variant),
              "precision": precision_name(autocast_dtype(device, precision)), **(tags or {})})
    if on_start:
        on_start(run_id)
    tracker.log_datasets(run_id, dataset_records(data))
    resumed = checkpointed_history(checkpoint)
    tracker.log_epochs(run_id, resumed)  # fills what a kill between checkpoint and logging left out
    if resumed:
        tracker.set_tags(run_id, {"resumed_from_epoch": str(len(resumed))})
    progress = Progress(progress_label or run_name, cfg.epochs, len(resumed))
    pictures = grid_epochs(cfg.epochs)

    def record(stats: EpochStats, model: nn.Module) -> None:
        tracker.log_epochs(run_id, [stats])
        if getattr(model, "stn", None) is not None and stats.epoch in pictures:
            from stn_ablation.visualize import stn_grid

            fig = stn_grid(model, data, title=f"{cfg.variant}, epoch {stats.epoch}")
            tracker.log_figure(run_id, fig, f"stn/epoch_{stats.epoch:03d}.png")
            import matplotlib.pyplot as plt

            plt.close(fig)

    start = time.perf_counter()
    try:
        with tracker.system_metrics(run_id, resumed=bool(resumed)):
            result = train(cfg, data, device, checkpoint=checkpoint, on_epoch=_chain(record, progress, *hooks),
                           precision=precision)
    except StopRun as e:
        tracker.end_run(run_id, "pruned", str(e))
        raise
    except Exception as e:  # Ctrl-C and kill leave the run open: the same command resumes it
        tracker.end_run(run_id, "failed", f"{type(e).__name__}: {e}")
        raise
    finally:
        progress.close()
    _finish(tracker, run_id, result, data, time.perf_counter() - start, robustness, precision)
    return run_id, result


def _finish(tracker: Tracker, run_id: str, result: TrainResult, data: DataSplits, seconds: float,
            robustness: RobustnessConfig, precision: str) -> None:
    """Final metrics, robustness sweeps and artifacts, then close the run with the trainer's status. Safe to run
    twice (a worker killed before closing the run finishes it again on the re-run): every metric is logged once."""
    model, cfg = result.model, result.config
    history = result.history
    final = {"n_params": sum(p.numel() for p in model.parameters()), "wall_seconds_this_process": seconds}
    if history:
        best = history[result.best_epoch - 1]
        final.update(final_test_acc=result.test_acc, final_val_acc=history[-1].val_acc,
                     best_epoch=result.best_epoch, best_val_acc=best.val_acc,
                     train_seconds=sum(s.seconds for s in history),
                     mean_images_per_s=sum(s.images_per_s for s in history) / len(history))
    tracker.log_metrics_once(run_id, {k: v for k, v in final.items() if math.isfinite(v)}, step=len(history))
    tracker.log_dict(run_id, cfg.as_dict(), "config.json")
    if result.status == "finished":
        amp = autocast_dtype(data.test_x.device, precision)
        test = score(model, data.test_x, data.test_y, data.num_classes, cfg.eval_batch_size, amp)
        tracker.log_dict(run_id, dict(zip(data.classes, test.per_class())), "per_class_test_acc.json")
        tracker.log_metrics_once(run_id, {
            **sweep_accuracy(model, data.test_x, data.test_y, robustness, cfg.eval_batch_size, amp),
            **theta_stats(model, data.test_x, cfg.eval_batch_size)})
        tracker.log_model(run_id, model, data.test_x[:2])
    tracker.end_run(run_id, result.status, result.reason)


def dataset_records(data: DataSplits) -> list[DatasetRecord]:
    """The splits a run reads, with their content digests, for MLflow's dataset inputs (an empty validation split,
    val_size = 0, is left out)."""
    sizes = {"train": len(data.train_y), "validation": len(data.val_y), "test": len(data.test_y)}
    return [DatasetRecord(f"{data.name}-{split}", split, data.digests[split], data.source, rows, data.official)
            for split, rows in sizes.items() if rows]


def _params(cfg: TrainConfig) -> dict:
    """The config as MLflow params; a model without a transformer has no localization-net rate to log."""
    params = cfg.as_dict()
    if get_variant(cfg.variant).twin is None:
        params.pop("loc_lr_mult")
    return params


def checkpointed_history(path: Path) -> list[EpochStats]:
    """The epochs a checkpoint already holds (none if there is no checkpoint)."""
    state = load_checkpoint(path)
    return [EpochStats(**h) for h in state["history"]] if state else []


def _ablation_tags(variant: str) -> dict[str, str]:
    """Tags that let the report pair an STN run with its twin's without importing any model code."""
    twin = get_variant(variant).twin
    return {"stn": "true", "twin": twin} if twin else {"stn": "false"}


def _chain(*hooks: EpochHook) -> EpochHook:
    def call(stats: EpochStats, model: nn.Module) -> None:
        for hook in hooks:
            hook(stats, model)
    return call
