"""`stn-ablate bench`: the trainer's speed, measured in one process run against the tutorial-style reference
pipeline (reference.py), against the FLOPs it does and this device's matmul peak; the STN's share of a training
step; and, optionally, trials/hour with 1 vs 2 worker processes. It prints numbers, never asserts them: speed
claims come from this output, with the command beside them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode, flop_registry

from stn_ablation.config import REFERENCE_AUGMENTATIONS, TrainConfig
from stn_ablation.data.datasets import DataSplits, RawDataset, load_dataset, prepare, split_indices
from stn_ablation.device import (autocast_dtype, cpu_has_native_bf16, device_model, eval_batch_size, usable_cores,
                                 worker_devices)
from stn_ablation.errors import ConfigError
from stn_ablation.training.evaluate import predict
from stn_ablation.models.registry import build_model, create_model, get_variant
from stn_ablation.training.train import train

log = logging.getLogger(__name__)
# stn_ablation.bench.reference (torchvision, ~2 s to import) is imported where it is used: the --workers processes import
# this module for trial_worker and need only the trainer.

ROUND_S = 2.5  # target seconds of one training round of one pipeline; --seconds sets how many rounds
TRAIN_SHARE = 0.75  # fraction of each pipeline's --seconds spent in training rounds, the rest in evaluation
ROUNDS = (2, 6)  # fewest and most interleaved (trainer, reference) rounds per variant and phase
MIN_STEPS = 2  # optimizer steps in the smallest trainer epoch (warm-up and timed rounds)
MIN_EVAL = 256  # images in the smallest evaluation round
FLOP_BATCH = 8  # images in the forward+backward that FLOPs are counted over
UNCOUNTED = ("affine_grid", "grid_sampler")  # arithmetic ops FlopCounterMode has no formula for: the STN's warp
SYNTHETIC = (50_000, 10_000)  # training and test images of the synthetic CIFAR-shaped dataset
TRIAL = ("tutorial_stn", 2048, 512)  # --workers: variant, training images, validation (= test) images of a trial
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
    peaks = {dtype: matmul_peak(device, dtype, min(1.0, seconds / 4)) for dtype in _peak_dtypes(amp)}
    results = []
    for name in variants:
        log.info("bench: %s (%d rounds of %.1f s training + %.1f s evaluation per pipeline)",
                 name, plan.rounds, plan.train_s, plan.eval_s)
        results.append(measure_variant(name, raw, pool, aug, batch_size, device, precision, plan))
    lines = _header(raw, real_data, aug, batch_size, device, precision, amp, plan, peaks, _others(usage))
    lines += _report(results, peaks, amp)
    if workers:
        lines += _workers_report(aug, batch_size, device, precision, seconds)
    return "\n".join(lines)


def synthetic_cifar(n_train: int, n_test: int, seed: int = 0) -> RawDataset:
    """CIFAR-10-shaped uniform random uint8 images and labels; named cifar10 so prepare() normalizes them alike."""
    g = torch.Generator().manual_seed(seed)
    images = lambda n: torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)  # noqa: E731
    labels = lambda n: torch.randint(0, 10, (n,), generator=g)  # noqa: E731
    return RawDataset("cifar10", images(n_train), labels(n_train), images(n_test), labels(n_test),
                      tuple(f"class{i}" for i in range(10)),
                      "synthetic CIFAR-10-shaped data: uniform random uint8 pixels and labels", "synthetic")


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


class _OpRecorder(TorchDispatchMode):
    """Records the name of every aten op that runs under it."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: set = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.add(func._overloadpacket)
        return func(*args, **(kwargs or {}))


def training_flops(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[int, tuple[str, ...]]:
    """FLOPs of one forward+backward of cross-entropy on (x, y), as FlopCounterMode counts them (matmuls and
    convolutions; a multiply-add is 2), and the ops in UNCOUNTED that ran and are not in that count. Gradients
    are left as they were: none."""
    model.train()
    recorder = _OpRecorder()
    with FlopCounterMode(display=False) as counter, recorder:
        F.cross_entropy(model(x), y).backward()
    model.zero_grad(set_to_none=True)
    missed = {str(op).removeprefix("aten.") for op in recorder.ops if op not in flop_registry}
    return counter.get_total_flops(), tuple(sorted(m for m in missed if m.startswith(UNCOUNTED)))


def matmul_peak(device: torch.device, dtype: torch.dtype | None, seconds: float) -> tuple[float, int] | None:
    """Best FLOP/s of a square `torch.mm` in `dtype` (None: fp32) over about `seconds`, and its size n (doubled
    from 256 until one product takes 50 ms); None where the device cannot multiply in `dtype`. fp32 is multiplied
    with the TF32 setting the convolutions run with (cuDNN's, on by default), so a trainer's fp32 %peak compares
    its convolutions with the arithmetic they actually use."""
    with _matmul_tf32(torch.backends.cudnn.allow_tf32):
        return _matmul_peak(device, dtype or torch.float32, seconds)


@contextlib.contextmanager
def _matmul_tf32(allow: bool) -> Iterator[None]:
    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = allow
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved


def _matmul_peak(device: torch.device, dtype: torch.dtype, seconds: float) -> tuple[float, int] | None:
    n = 256
    try:
        while True:
            a, b = (torch.randn(n, n, device=device).to(dtype) for _ in range(2))
            _time_mm(a, b)  # set-up
            best = _time_mm(a, b)
            if best >= 0.05 or n >= 8192:
                break
            n *= 2
    except RuntimeError:
        return None
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        best = min(best, _time_mm(a, b))
    return 2 * n ** 3 / best, n


def _time_mm(a: torch.Tensor, b: torch.Tensor) -> float:
    start = time.perf_counter()
    float(torch.mm(a, b)[0, 0])  # reading an element waits for the device
    return time.perf_counter() - start


def _peak_dtypes(amp: torch.dtype | None) -> list[torch.dtype | None]:
    """fp32 always, bf16 always (on CPUs without bf16 instructions it is emulated, and labelled so), fp16 when
    that is the precision in use. None stands for fp32, as in autocast_dtype."""
    return [None, torch.bfloat16] + ([torch.float16] if amp is torch.float16 else [])


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
        f"{PRECISION_NAMES[amp]} (asked: {precision}), {_threads(torch.get_num_threads())}, batch size "
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


def _workers_report(aug: str, batch_size: int, device: torch.device, precision: str, seconds: float) -> list[str]:
    """Trials/hour of 1 vs 2 worker processes. On the CPU they split its cores; on CUDA each gets the GPU
    `stn-ablate run --workers 2 --share-gpus` would give it (its own where there are two, else one shared), and
    the lines name those GPUs, since there the GPU, not the CPU threads, does the work."""
    cores = usable_cores()
    half = max(1, cores // 2)
    settings = [[str(device)], worker_devices(str(device), 2, share_gpus=True)]
    one, two = (trials_per_hour(run_workers(devices, threads, seconds, aug, batch_size, precision))
                for devices, threads in zip(settings, (cores, half)))
    variant, n_train, n_eval = TRIAL
    return ["", f"worker processes: a trial = {variant}, 1 epoch on {n_train} synthetic images, then "
                f"{n_eval} validation + {n_eval} test images evaluated; aug {aug}, batch size {batch_size}; "
                f"~{seconds:.0f} s of trials per setting after a warm-up trial",
            f"  {_workers_label(settings[0], cores)}: {one:.0f} trials/hour",
            f"  {_workers_label(settings[1], half)}: {two:.0f} trials/hour ({two / one:.2f}x)"]


def _workers_label(devices: list[str], threads: int) -> str:
    """`1 process   x 4 threads` on the CPU; `2 processes on cuda:0, cuda:1 (NVIDIA ...)` on CUDA."""
    processes = f"{len(devices)} process{'es' if len(devices) > 1 else '  '}"
    if not devices[0].startswith("cuda"):
        return f"{processes} x {_threads(threads)}"
    return f"{processes} on {', '.join(devices)} ({device_model(torch.device(devices[0]))})"


def _threads(n: int) -> str:
    return f"{n} thread{'s' if n != 1 else ''}"


@dataclass(frozen=True)
class WorkerTrials:
    """What one trial_worker process measured: `trials` whole trials in its timed window of `seconds`."""

    trials: int
    seconds: float


def trials_per_hour(workers: list[WorkerTrials]) -> float:
    """The processes' combined rate: the sum of each one's trials per hour of its own timed window."""
    return sum(3600 * w.trials / w.seconds for w in workers)


def run_workers(devices: list[str], threads: int, seconds: float, aug: str, batch_size: int, precision: str,
                trial: tuple[str, int, int] = TRIAL) -> list[WorkerTrials]:
    """Run one trial_worker process on each of `devices`, concurrently, `threads` threads each, started together
    after their warm-up; what each measured. `trial` is (variant, training images, validation = test images)."""
    root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "OMP_NUM_THREADS": str(threads),
           "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
    code = lambda device: (f"from stn_ablation.bench.throughput import trial_worker; trial_worker({threads}, {seconds!r}, "  # noqa: E731
                           f"{aug!r}, {batch_size}, {device!r}, {precision!r}, {trial!r})")
    errs = [tempfile.TemporaryFile("w+") for _ in devices]
    procs = [subprocess.Popen([sys.executable, "-c", code(device)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=err, text=True, env=env) for device, err in zip(devices, errs)]
    try:
        for p, err in zip(procs, errs):
            if not any(line.strip() == "ready" for line in p.stdout):
                _failed(p, err)
        for p in procs:  # all warmed up: start them together
            p.stdin.write("go\n")
            p.stdin.flush()
        done = []
        for p, err in zip(procs, errs):
            out = p.communicate(timeout=600 + 10 * seconds)[0]
            if p.returncode != 0:
                _failed(p, err)
            done.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        for err in errs:
            err.close()
    return [WorkerTrials(**d) for d in done]


def _failed(process: subprocess.Popen, stderr) -> None:
    process.wait()
    stderr.seek(0)
    raise RuntimeError(f"bench worker process exited with {process.returncode}: {stderr.read()[-2000:]}")


def trial_worker(threads: int, seconds: float, aug: str, batch_size: int, device: str, precision: str,
                 trial: tuple[str, int, int]) -> None:
    """Body of one --workers process: warm up with one trial, print "ready", wait for a line on stdin, then run
    trials until `seconds` have passed and print {"trials": n, "seconds": s} as JSON."""
    torch.set_num_threads(threads)
    variant, n_train, n_eval = trial
    dev = torch.device(device)
    data = prepare(synthetic_cifar(n_train + n_eval, n_eval), dev, val_size=n_eval)
    cfg = TrainConfig(variant=variant, aug=aug, batch_size=batch_size, epochs=1, val_size=n_eval)
    train(build_model(cfg, data.in_shape, data.num_classes), cfg, data, dev, precision=precision)
    print("ready", flush=True)
    sys.stdin.readline()
    start, trials = time.perf_counter(), 0
    while trials == 0 or time.perf_counter() - start < seconds:
        train(build_model(cfg, data.in_shape, data.num_classes), cfg, data, dev, precision=precision)
        trials += 1
    print(json.dumps({"trials": trials, "seconds": time.perf_counter() - start}), flush=True)
