"""The one trainer every variant shares: a model, its config and data in, per-epoch statistics out.

It knows nothing of Optuna or MLflow: they listen to its three events (start, with the epochs a resumed checkpoint
already holds; each epoch; end, with the result and its model), and an epoch's listener may raise to stop a run
(pruning). Every epoch ends with an atomic checkpoint, so a killed run resumes where it was, bit for bit on the CPU;
the trainer is the only reader of that checkpoint.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from stn_ablation.training.allocator import keep_freed_memory
from stn_ablation.data.augment import augment
from stn_ablation.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from stn_ablation.config import TrainConfig
from stn_ablation.data.datasets import DataSplits
from stn_ablation.device import (autocast, autocast_dtype, channels_last, deterministic_kernels, eval_batch_size,
                                 precision_flag, precision_name)
from stn_ablation.training.evaluate import accuracy
from stn_ablation.faults import fault_point


@dataclass(frozen=True)
class EpochStats:
    epoch: int  # 1-based
    train_loss: float  # mean cross-entropy (with label smoothing) over the epoch's batches
    train_acc: float  # on the augmented training batches, in train mode
    val_acc: float  # on the held-out validation split; NaN when val_size is 0
    test_acc: float  # on the test split; logged, never used to choose anything
    lr: float  # classifier learning rate at the end of the epoch
    seconds: float  # wall time of the epoch, training and evaluation
    images_per_s: float  # training images per second of training time


@dataclass
class TrainResult:
    config: TrainConfig
    status: str  # "finished" or "diverged"
    reason: str  # empty when finished, else why it stopped
    history: list[EpochStats]
    model: nn.Module

    @property
    def test_acc(self) -> float:
        return self.history[-1].test_acc if self.history else float("nan")

    @property
    def best_epoch(self) -> int:
        """Epoch of the highest validation accuracy (the test set is not looked at); 0 before any epoch."""
        scored = [(s.val_acc if not math.isnan(s.val_acc) else s.train_acc, s.epoch) for s in self.history]
        return max(scored)[1] if scored else 0


StartHook = Callable[[list[EpochStats]], None]  # the epochs the checkpoint already holds; none for a fresh run
EpochHook = Callable[[EpochStats, nn.Module], None]  # after the epoch's checkpoint; may raise StopRun
EndHook = Callable[[TrainResult], None]  # finished or diverged, with the model


@dataclass(frozen=True)
class Hooks:
    """One listener on the trainer's events (MLflow logging, the progress bar, a tuner's reporting): whatever it
    does not listen to is None. `train` takes one callable per event; `fan_out` calls several listeners in order."""

    on_start: StartHook | None = None
    on_epoch: EpochHook | None = None
    on_end: EndHook | None = None


def fan_out(listeners: Sequence[Hooks]) -> dict[str, Callable[..., None]]:
    """`train`'s keyword hooks for `listeners`: each event calls every listener of it, in the order given."""

    def event(name: str) -> Callable[..., None]:
        calls = [hook for hook in (getattr(listener, name) for listener in listeners) if hook is not None]

        def call(*args) -> None:
            for hook in calls:
                hook(*args)
        return call
    return {name: event(name) for name in ("on_start", "on_epoch", "on_end")}


class StopRun(Exception):
    """Raised by an `on_epoch` hook to end a run early on purpose (a tuner's pruning); the message says why.
    The checkpoint of the last epoch is on disk, so nothing about the run is lost."""


DIVERGED_LOSS = 100  # a mean training loss above this many times chance level (ln classes) counts as diverged


def lr_factor(step: int, total: int, schedule: str, warmup: float) -> float:
    """Learning-rate multiplier at optimizer step `step` of `total`."""
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * step / total))
    rise = max(1, round(warmup * total))  # one-cycle: linear up to the peak, linear down to zero
    return (step + 1) / rise if step < rise else max(0.0, (total - step) / max(1, total - rise))


def make_optimizer(model: nn.Module, cfg: TrainConfig, fused: bool = False) -> torch.optim.Optimizer:
    """Four parameter groups: {classifier, localization net} x {weights, no-decay}. Biases and norms are not
    decayed; the transformer's last bias *is* the identity transform, and decaying it would shrink every image.
    `fused`: one fused kernel per step that reads a GradScaler's inf flag on the device; with a plain optimizer
    the scaler reads that flag on the host (`.item()`), a host-device synchronisation every fp16 step. Only the
    scaled (fp16) path asks for it, so fp32 and bf16 keep the for-each kernels and their results bit for bit."""
    stn_ids = {id(p) for p in model.stn.parameters()} if getattr(model, "stn", None) is not None else set()
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for p in model.parameters():
        groups.setdefault((id(p) in stn_ids, p.ndim > 1), []).append(p)
    params = [
        {"params": ps, "name": "localization" if is_stn else "classifier",
         "lr": cfg.lr * (cfg.loc_lr_mult if is_stn else 1.0), "weight_decay": cfg.weight_decay if decay else 0.0}
        for (is_stn, decay), ps in sorted(groups.items())
    ]
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, betas=(cfg.momentum, 0.999), fused=fused or None)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0,
                           fused=fused or None)


def train(model: nn.Module, cfg: TrainConfig, data: DataSplits, device: torch.device, *,
          checkpoint: Path | None = None,
          on_start: StartHook | None = None, on_epoch: EpochHook | None = None, on_end: EndHook | None = None,
          precision: str = "auto", deterministic: bool = False) -> TrainResult:
    """Train `model` (built for `cfg`: models.build_model) on `data` (already on `device`) for `cfg.epochs`, resuming
    from `checkpoint` if it holds an unfinished run of the same config. A non-finite loss ends the run as "diverged",
    not with an exception. `precision` (see device.autocast_dtype) changes speed, not what is compared;
    `deterministic` runs on deterministic kernels only (device.deterministic_kernels), for bit-identical repeats on
    CUDA. The hooks hear the run start (with the epochs resumed from the checkpoint, so they can replay them), each
    new epoch, and its end; none of them changes the run's random numbers."""
    with deterministic_kernels(deterministic):
        return _train(model, cfg, data, device, checkpoint, on_start, on_epoch, on_end, precision)


def _train(model, cfg, data, device, checkpoint, on_start, on_epoch, on_end, precision) -> TrainResult:
    amp = autocast_dtype(device, precision)
    if device.type == "cpu":
        keep_freed_memory()
    model = model.to(device)
    if channels_last(device):
        model = model.to(memory_format=torch.channels_last)
    if device.type == "cuda" and not torch.backends.cudnn.deterministic:
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest kernels once
    scaler = torch.amp.GradScaler(device.type, enabled=amp is torch.float16)
    optimizer = make_optimizer(model, cfg, fused=scaler.is_enabled())
    steps_per_epoch = max(1, len(data.train_y) // cfg.batch_size)  # the last partial batch is dropped
    total = steps_per_epoch * cfg.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(min(step, total - 1), total, cfg.schedule, cfg.warmup))
    generator = torch.Generator(device).manual_seed(cfg.seed)  # shuffling and augmentation
    history: list[EpochStats] = []
    eval_batch = eval_batch_size(device, cfg.eval_batch_size)

    numerics = {"device": device.type, "precision": precision_name(amp)}  # what a resume must not change
    state = load_checkpoint(checkpoint) if checkpoint else None
    if state is not None:
        if state["config_digest"] != cfg.digest():
            raise CheckpointError(f"checkpoint {checkpoint} belongs to another config; delete it or use another --home")
        _check_numerics(checkpoint, state.get("numerics", {}), numerics)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        history = [EpochStats(**h) for h in state["history"]]
        _set_rng(state["rng"], generator)
    if on_start:
        rng = _get_rng(generator)
        on_start(list(history))
        _set_rng(rng, generator)

    status, reason = "finished", ""
    for epoch in range(len(history) + 1, cfg.epochs + 1):
        start = time.perf_counter()
        loss, acc, seen = _train_epoch(model, data, cfg, optimizer, scheduler, scaler, generator, amp,
                                       steps_per_epoch)
        train_seconds = time.perf_counter() - start
        if not math.isfinite(loss) or loss > DIVERGED_LOSS * math.log(data.num_classes):
            status, reason = "diverged", f"diverged at epoch {epoch}: train loss is {loss:.4g}"
            break
        val_acc = accuracy(model, data.val_x, data.val_y, eval_batch, amp)
        test_acc = accuracy(model, data.test_x, data.test_y, eval_batch, amp)
        lr = next(g["lr"] for g in optimizer.param_groups if g["name"] == "classifier")
        stats = EpochStats(epoch, loss, acc, val_acc, test_acc, lr, time.perf_counter() - start, seen / train_seconds)
        history.append(stats)
        rng = _get_rng(generator)
        if checkpoint:
            save_checkpoint({
                "config_digest": cfg.digest(), "numerics": numerics, "model": model.state_dict(),
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                "history": [asdict(h) for h in history], "rng": rng}, checkpoint)
        if on_epoch:
            on_epoch(stats, model)
            _set_rng(rng, generator)  # a hook that draws random numbers must not change the run
    result = TrainResult(cfg, status, reason, history, model)
    if on_end:
        on_end(result)
    return result


def _train_epoch(model, data, cfg, optimizer, scheduler, scaler, generator, amp, steps) -> tuple[float, float, int]:
    """One pass over a fresh permutation: (mean loss, accuracy, images seen). Loss and hits accumulate on the
    device and are read once at the end: no step waits for the device (the fp16 scaler's inf check included, see
    make_optimizer), so the host queues the next batch while the GPU runs this one."""
    model.train()
    device = data.train_x.device
    order = torch.randperm(len(data.train_y), device=device, generator=generator)
    loss_sum = torch.zeros((), device=device)
    hits = torch.zeros((), device=device, dtype=torch.long)
    seen = 0
    for i in range(steps):
        idx = order[i * cfg.batch_size:(i + 1) * cfg.batch_size]
        x = augment(data.train_x[idx], cfg.aug, generator, flip=data.mirror_symmetric)  # B x C x H x W
        y = data.train_y[idx]
        seen += len(y)
        fault_point("step")
        with autocast(device, amp):
            logits = model(x)  # B x num_classes
        loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        loss_sum += loss.detach()
        hits += (logits.argmax(1) == y).sum()
    return loss_sum.item() / steps, hits.item() / seen, seen


def _check_numerics(path: Path, saved: dict, now: dict) -> None:
    """A run continues on the device type and in the precision it started in: a resume that changed them would
    splice two numerics into one result (and the scaler and RNG states of one do not load into the other)."""
    if saved != now:
        device, precision = saved.get("device", "?"), saved.get("precision", "?")
        raise CheckpointError(
            f"checkpoint {path} was written on {device} in {precision}, this run is on {now['device']} in "
            f"{now['precision']}; re-run with --device {device} --precision {precision_flag(precision)}, "
            "or delete the checkpoint to start this run over")


def _get_rng(generator: torch.Generator) -> dict:
    """The global CPU generator, the run's own generator, and the current CUDA device's generator (dropout on a
    GPU draws from it); only the device the run uses, so the state loads whatever the number of visible GPUs."""
    rng = {"torch": torch.get_rng_state(), "generator": generator.get_state()}
    if generator.device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(generator.device)
    return rng


def _set_rng(rng: dict, generator: torch.Generator) -> None:
    torch.set_rng_state(rng["torch"])
    generator.set_state(rng["generator"])
    if "cuda" in rng:
        torch.cuda.set_rng_state(rng["cuda"], generator.device)
