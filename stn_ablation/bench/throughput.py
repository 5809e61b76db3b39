"""`stn-ablate bench`: the trainer's speed, measured in one process run against the tutorial-style reference
pipeline (reference.py), against the FLOPs it does and this device's matmul peak (flops.py); the STN's share of a
training step; and, optionally, trials/hour with 1 vs 2 worker processes (workers.py). It prints numbers, never
asserts them: speed claims come from this output, with the command beside them.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from stn_ablation.bench.flops import FLOP_BATCH, matmul_peak, peak_dtypes, training_flops
from stn_ablation.bench.workers import synthetic_cifar, threads_word, workers_report
from stn_ablation.config import REFERENCE_AUGMENTATIONS, TrainConfig
from stn_ablation.data.datasets import DataSplits, RawDataset, load_dataset, prepare, split_indices
from stn_ablation.device import (autocast_dtype, cpu_has_native_bf16, device_model, eval_batch_size, usable_cores)
from stn_ablation.errors import ConfigError
from stn_ablation.training.evaluate import predict
from stn_ablation.models.registry import build_model, create_model, get_variant
from stn_ablation.training.train import train

log = logging.getLogger(__name__)
# stn_ablation.bench.reference (torchvision, ~2 s to import) is imported where it is used.

ROUND_S = 2.5  # target seconds of one training round of one pipeline; --seconds sets how many rounds
TRAIN_SHARE = 0.75  # fraction of each pipeline's --seconds spent in training rounds, the rest in evaluation
ROUNDS = (2, 6)  # fewest and most interleaved (trainer, reference) rounds per variant and phase
MIN_STEPS = 2  # optimizer steps in the smallest trainer epoch (warm-up and timed rounds)
MIN_EVAL = 256  # images in the smallest evaluation round
SYNTHETIC = (50_000, 10_000)  # training and test images of the synthetic CIFAR-shaped dataset
PRECISION_NAMES = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


@dataclass(frozen=True)
class Plan:
    """How one variant is measured: `rounds` interleaved (trainer, reference) pairs per phase."""

    rounds: int
    train_s: float  # target seconds of one training round of one pipeline
    eval_s: float  # target seconds of one evaluation round of one pipeline

    @classmethod
    def for_seconds(cls, seconds: float) -> "Plan":
        rounds = min(max(round(seconds * TRAIN_SHARE / ROUND_S), ROUNDS[0]), ROUNDS[1])
        return cls(rounds, seconds * TRAIN_SHARE / rounds, seconds * (1 - TRAIN_SHARE) / rounds)


@dataclass(frozen=True)
class Measured:
    """One variant's rates in images/s, one entry per round, and its counted FLOPs."""

    variant: str
    train: tuple[list[float], list[float]]  # (trainer, reference)
    evaluate: tuple[list[float], list[float]]
    eval_batch: int  # the trainer's predict() batch size (the reference's is reference.TUTORIAL_BATCH)
    flops_per_image: float  # one training image's forward+backward, as FlopCounterMode counts it
    uncounted: tuple[str, ...]  # arithmetic ops that ran but are not in that count


def run_bench(*, variants: list[str], aug: str, batch_size: int, device: torch.device, precision: str,
              seconds: float, real_data: bool, data_root: str | None, workers: bool) -> str:
    """Measure every variant (trainer and reference interleaved), the matmul peak and, with `workers`, trials/hour;
    return the report. Each variant takes about 2 x `seconds` plus warm-up."""
    if not variants or seconds <= 0 or batch_size < 1:
        raise ConfigError("bench needs at least one variant, --seconds > 0 and --batch-size >= 1")
    if aug not in REFERENCE_AUGMENTATIONS:
        raise ConfigError(f"bench compares augmentations the reference can do too: "
                          f"{' or '.join(REFERENCE_AUGMENTATIONS)}, not {aug!r}")
    for name in variants:
        get_variant(name)  # an unknown name fails before anything is measured
    amp = autocast_dtype(device, precision)
    usage = _cpu_usage()
    raw = load_dataset("cifar10", data_root) if real_data else synthetic_cifar(*SYNTHETIC)
    pool = prepare(raw, device, val_size=0)  # every variant trains on a prefix: what prepare(subset=n) would keep
    plan = Plan.for_seconds(seconds)
    peaks = {dtype: matmul_peak(device, dtype, min(1.0, seconds / 4)) for dtype in peak_dtypes(amp)}
    results = []
    for name in variants:
        log.info("bench: %s (%d rounds of %.1f s training + %.1f s evaluation per pipeline)",
                 name, plan.rounds, plan.train_s, plan.eval_s)
        results.append(measure_variant(name, raw, pool, aug, batch_size, device, precision, plan))
    lines = _header(raw, real_data, aug, batch_size, device, precision, amp, plan, peaks, _others(usage))
    lines += _report(results, peaks, amp)
    if workers:
        lines += workers_report(aug, batch_size, device, precision, seconds)
    return "\n".join(lines)


def measure_variant(name: str, raw: RawDataset, pool: DataSplits, aug: str, batch_size: int, device: torch.device,
                    precision: str, plan: Plan) -> Measured:
    """Both pipelines on one variant: training rounds, then evaluation rounds, then the FLOP count. `pool` is `raw`
    through prepare(val_size=0); the trainer takes a prefix of it, the reference the same images as PIL."""
    cfg = TrainConfig(variant=name, aug=aug, batch_size=batch_size, epochs=1, val_size=0)
    train_rates, model, ref_model = _time_training(cfg, raw, pool, device, precision, plan)
    eval_rates, eval_batch = _time_evaluation(model, ref_model, raw, pool, device, autocast_dtype(device, precision),
                                              plan, eval_batch_size(device, cfg.eval_batch_size))
    x, y = pool.test_x[:FLOP_BATCH].cpu(), pool.test_y[:FLOP_BATCH].cpu()
    flops, uncounted = training_flops(create_model(name, in_shape=pool.in_shape, num_classes=pool.num_classes), x, y)
    return Measured(name, train_rates, eval_rates, eval_batch, flops / len(x), uncounted)


def _time_training(cfg: TrainConfig, raw: RawDataset, pool: DataSplits, device: torch.device, precision: str,
                   plan: Plan) -> tuple[tuple[list[float], list[float]], nn.Module, nn.Module]:
    """Warm both up, size the trainer's epoch to `plan.train_s`, then time rounds A B A B ...: (images/s of each
    round of (trainer, reference), the trainer's last model, the reference's model). The reference trains one
    model and optimizer across its rounds, as the tutorial does across epochs. The first trainer epoch is always
    a warm-up, whatever it took: it meets every shape a timed round will (the training batch; an epoch drops the
    partial one), so one-off set-up such as cuDNN timing its kernels for each shape is charged neither to the
    rounds nor to the rate they are sized with."""
    from stn_ablation.bench import reference

    bs = cfg.batch_size
    _trainer_round(cfg, _head(pool, MIN_STEPS * bs), device, precision)  # warm-up
    rate = _trainer_round(cfg, _head(pool, MIN_STEPS * bs), device, precision)[0]
    n = min(max(round(rate * plan.train_s / bs), MIN_STEPS), len(pool.train_y) // bs) * bs
    idx = split_indices(len(raw.train_y), 0)[0][:n]  # the images prepare() put first, in the same order
    loader = reference.tutorial_loader(raw.train_x[idx], raw.train_y[idx], cfg.aug, pool.mean, pool.std, train=True)
    torch.manual_seed(cfg.seed)  # the trainer's initialization too
    ref_model = create_model(cfg.variant, in_shape=pool.in_shape, num_classes=pool.num_classes).to(device)
    optimizer = reference.tutorial_optimizer(ref_model)
    reference.train_for(ref_model, loader, optimizer, device, float("inf"), max_batches=2)  # warm-up
    rates: tuple[list[float], list[float]] = ([], [])
    for _ in range(plan.rounds):
        rate, model = _trainer_round(cfg, _head(pool, n), device, precision)
        rates[0].append(rate)
        rates[1].append(reference.train_for(ref_model, loader, optimizer, device, plan.train_s).images_per_s)
    return rates, model, ref_model


def _time_evaluation(model: nn.Module, ref_model: nn.Module, raw: RawDataset, pool: DataSplits,
                     device: torch.device, amp: torch.dtype | None, plan: Plan, batch_size: int
                     ) -> tuple[tuple[list[float], list[float]], int]:
    """Rounds A B A B ... of predict() on `m` test images in batches of up to `batch_size` (the trainer's
    eval_batch_size) and of the tutorial's test loop on the same images, `m` sized to `plan.eval_s`:
    (images/s of each round of (trainer, reference), the predict() batch size used). Before any timed round both
    run once over all `m` images, so every batch shape, the last partial one included, has met its one-off set-up
    (cuDNN timing its kernels on CUDA) outside the timed rounds."""
    from stn_ablation.bench import reference

    warm = _predict_rate(model, pool.test_x[:MIN_EVAL], MIN_EVAL, amp)  # first set-up, and the rate to size with
    m = min(max(round(warm * plan.eval_s), MIN_EVAL), len(pool.test_y))
    batch_size = min(batch_size, m)
    loader = reference.tutorial_loader(raw.test_x[:m], raw.test_y[:m], "none", pool.mean, pool.std, train=False)
    _predict_rate(model, pool.test_x[:m], batch_size, amp)  # warm-up: every shape of the timed rounds
    reference.evaluate_for(ref_model, loader, device, float("inf"))  # warm-up, to its last batch
    rates: tuple[list[float], list[float]] = ([], [])
    for _ in range(plan.rounds):
        rates[0].append(_predict_rate(model, pool.test_x[:m], batch_size, amp))
        rates[1].append(reference.evaluate_for(ref_model, loader, device, plan.eval_s).images_per_s)
    return rates, batch_size


def _head(pool: DataSplits, n: int) -> DataSplits:
    """The first `n` training images of `pool` (what prepare(subset=n) keeps) and no test split: the trainer
    evaluates its validation and test splits every epoch, and the bench times evaluation apart."""
    return dataclasses.replace(pool, train_x=pool.train_x[:n], train_y=pool.train_y[:n],
                               test_x=pool.test_x[:0], test_y=pool.test_y[:0])


def _cpu_usage() -> tuple[float, float, float] | None:
    """(wall clock, busy CPU seconds of the whole machine, CPU seconds of this process and its finished children);
    None where /proc/stat is absent (not Linux)."""
    try:
        ticks = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return None
    import resource  # Unix only; /proc/stat above already means Linux

    busy = (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait
    own = sum(getattr(resource.getrusage(who), f) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
              for f in ("ru_utime", "ru_stime"))
    return time.perf_counter(), busy, own


def _others(start: tuple[float, float, float] | None) -> float | None:
    """Cores other processes kept busy on average since `start`: what makes this run's numbers noisy."""
    end = _cpu_usage()
    if start is None or end is None:
        return None
    return max(0.0, (end[1] - start[1]) - (end[2] - start[2])) / (end[0] - start[0])


def _trainer_round(cfg: TrainConfig, data: DataSplits, device: torch.device, precision: str
                   ) -> tuple[float, nn.Module]:
    """One epoch through the real trainer: its own training-only images/s, and the trained model."""
    cfg = cfg.with_overrides(subset=len(data.train_y))
    result = train(build_model(cfg, data.in_shape, data.num_classes), cfg, data, device, precision=precision)
    if result.status != "finished":
        raise RuntimeError(f"bench: the trainer stopped on {cfg.variant}: {result.reason}")
    return result.history[-1].images_per_s, result.model


def _predict_rate(model: nn.Module, x: torch.Tensor, batch_size: int, amp: torch.dtype | None) -> float:
    start = time.perf_counter()
    int(predict(model, x, batch_size, amp)[-1])  # reading a result waits for the device
    return len(x) / (time.perf_counter() - start)


def stn_share(stn_rate: float, twin_rate: float) -> float:
    """Fraction of the STN variant's step time its twin does not spend: (t_stn - t_twin) / t_stn, t = 1 / rate."""
    return (1 / stn_rate - 1 / twin_rate) / (1 / stn_rate)


def _spread(rates: list[float]) -> str:
    return f"{(max(rates) - min(rates)) / statistics.median(rates):.0%}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    """Plain-text columns: the first left-aligned, the rest right-aligned; cells hold no spaces."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    fmt = lambda row: "  ".join(c.ljust(w) if i == 0 else c.rjust(w)  # noqa: E731
                                for i, (c, w) in enumerate(zip(row, widths)))
    return [fmt(header), *(fmt(row) for row in rows)]


def _header(raw: RawDataset, real_data: bool, aug: str, batch_size: int, device: torch.device, precision: str,
            amp: torch.dtype | None, plan: Plan, peaks: dict, others: float | None) -> list[str]:
    from stn_ablation.bench import reference

    data = f"CIFAR-10 ({raw.provenance})" if real_data else raw.provenance
    native = device.type != "cpu" or cpu_has_native_bf16()
    tf32 = " (TF32, as the convolutions)" if _tf32(device) else ""
    peak_text = "; ".join(
        f"{PRECISION_NAMES[dtype]}{tf32 if dtype is None else ''} "
        + (f"{p[0] / 1e9:.1f} GFLOP/s (n={p[1]})" if p else "not supported")
        + (" [EMULATED: this CPU has no native bf16]" if dtype is torch.bfloat16 and not native else "")
        for dtype, p in peaks.items())
    return [
        f"stn-ablate bench: torch {torch.__version__}, device {device} ({device_model(device)}), precision "
        f"{PRECISION_NAMES[amp]} (asked: {precision}), {threads_word(torch.get_num_threads())}, batch size "
        f"{batch_size}, aug {aug}",
        f"data: {data}",
        "trainer: stn_ablation.training.train.train (1 epoch per round, its EpochStats.images_per_s); evaluation: "
        "evaluate.predict",
        f"reference: tutorial-style PIL + transforms.Compose, DataLoader(batch_size={reference.TUTORIAL_BATCH}, "
        f"num_workers={reference.loader_workers()}), SGD, loss.item() every step; same model, in fp32 and NCHW as "
        "the tutorial; timed from its first batch (worker start-up not charged)",
        f"rounds: {plan.rounds} interleaved (trainer, reference) per variant, ~{plan.train_s:.1f} s training + "
        f"~{plan.eval_s:.1f} s evaluation each; images/s are medians over rounds, spread = (max - min) / median",
        f"matmul peak (torch.mm, best repeat): {peak_text}",
        "other processes: " + ("unknown (no /proc/stat)" if others is None else
                               f"kept {others:.2f} of {usable_cores()} cores busy on average while this ran"
                               + (" -- THEY COMPETED FOR THE CPU: the numbers are indicative" if others > 0.2 else "")),
        "",
    ]


def _tf32(device: torch.device) -> bool:
    """Whether fp32 convolutions, and so the fp32 matmul peak, run in TF32 on `device` (CUDA only)."""
    return device.type == "cuda" and torch.backends.cudnn.allow_tf32


def _report(results: list[Measured], peaks: dict, amp: torch.dtype | None) -> list[str]:
    """The tables. Each pipeline's %peak is against the matmul peak of its own precision: the trainer's `amp`,
    the reference's fp32."""
    from stn_ablation.bench import reference

    med = statistics.median
    rows = []
    for r in results:
        (t, ref), flops = r.train, r.flops_per_image
        pct = lambda rate, peak: f"{flops * rate / peak[0]:.1%}" if peak else "n/a"  # noqa: E731
        rows.append([r.variant, f"{med(t):.1f}", _spread(t), f"{med(ref):.1f}", _spread(ref),
                     f"{med(t) / med(ref):.2f}x", f"{flops / 1e6:.2f}", f"{flops * med(t) / 1e9:.2f}",
                     pct(med(t), peaks[amp]), f"{flops * med(ref) / 1e9:.2f}", pct(med(ref), peaks[None])])
    lines = [f"training: images/s, counted MFLOP per image, achieved GFLOP/s and its % of the matmul peak "
             f"(trainer: {PRECISION_NAMES[amp]}, reference: fp32)"]
    lines += _table(["training", "trainer_img/s", "spread", "reference_img/s", "spread", "trainer/ref",
                     "MFLOP/img", "trainer_GFLOP/s", "%peak", "ref_GFLOP/s", "%peak"], rows)
    rows = [[r.variant, f"{med(r.evaluate[0]):.1f}", _spread(r.evaluate[0]), str(r.eval_batch),
             f"{med(r.evaluate[1]):.1f}", _spread(r.evaluate[1]), str(reference.TUTORIAL_BATCH),
             f"{med(r.evaluate[0]) / med(r.evaluate[1]):.2f}x"] for r in results]
    lines += [""] + _table(["evaluation", "trainer_img/s", "spread", "batch", "reference_img/s", "spread", "batch",
                            "trainer/ref"], rows)
    by_name = {r.variant: r for r in results}
    pairs = [(by_name[r.variant], by_name[twin]) for r in results
             if (twin := get_variant(r.variant).twin) in by_name]
    if pairs:
        lines += ["", "STN share of the training step, (t_stn - t_twin) / t_stn with t = 1 / (images/s):"]
        lines += [f"  {s.variant} vs {w.variant}: trainer {stn_share(med(s.train[0]), med(w.train[0])):.1%}, "
                  f"reference {stn_share(med(s.train[1]), med(w.train[1])):.1%}; counted FLOPs "
                  f"{1 - w.flops_per_image / s.flops_per_image:.1%}" for s, w in pairs]
    missed = sorted({op for r in results for op in r.uncounted})
    lines += ["", f"FLOPs: FlopCounterMode over one forward+backward of {FLOP_BATCH} images: matmuls and convolutions "
                  "only (pooling, normalization, activations and the optimizer step are not counted)."]
    if missed:
        lines.append(f"NOT COUNTED: {', '.join(missed)} (the STN's grid generation and bilinear sampling, run by "
                     f"{', '.join(r.variant for r in results if r.uncounted)}): their MFLOP/img is a lower bound.")
    return lines


