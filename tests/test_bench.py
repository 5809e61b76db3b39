"""`bench`: the FLOP counter against a hand count, and the report of real, tiny runs on synthetic data: positive
rates for both pipelines, ratios that are their quotients, counted FLOPs, and the STN share line. No timing is
asserted: speed claims come from the benchmark's output, not from tests; the --workers processes are checked for
what they promise (at least the asked seconds of whole trials each, summed as trials/hour)."""

from __future__ import annotations

import re
import time

import pytest
import torch
import torch.nn as nn

from stn_ablation.bench import flops, workers
from stn_ablation.bench import throughput as bench_module
from stn_ablation.bench.flops import FLOP_BATCH, training_flops
from stn_ablation.bench.throughput import run_bench, stn_share
from stn_ablation.bench.workers import WorkerTrials, run_workers, trials_per_hour
from stn_ablation.device import cpu_has_native_bf16, device_model
from stn_ablation.errors import ConfigError
from stn_ablation.models.registry import create_model

CPU = torch.device("cpu")


@pytest.fixture
def small_and_single_threaded(monkeypatch):
    """A smaller synthetic dataset, and one thread: with other tests running on a 2-core machine, two OpenMP
    threads per process were measured to run ~20x slower (each parallel region waits for a descheduled thread)."""
    monkeypatch.setattr(bench_module, "SYNTHETIC", (8192, 2048))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def bench(*variants: str, seconds: float = 1.0) -> str:
    return run_bench(variants=list(variants), aug="standard", batch_size=64, device=CPU, precision="auto",
                     seconds=seconds, real_data=False, data_root=None, workers=False)


def table(report: str, title: str) -> dict[str, list[str]]:
    """The rows of the table whose header starts with `title`, keyed by variant, split on whitespace."""
    lines = report.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[:1] == [title])
    rows = {}
    for line in lines[start + 1:]:
        if not line.strip():
            break
        rows[line.split()[0]] = line.split()[1:]
    return rows


def rate_pair_and_ratio(row: list[str], trainer: int, ref: int, ratio: int) -> tuple[float, float, float]:
    values = float(row[trainer]), float(row[ref]), float(row[ratio].removesuffix("x"))
    assert values[0] > 0 and values[1] > 0, row
    assert values[2] == pytest.approx(values[0] / values[1], abs=0.006), row  # printed to 2 decimals
    return values


def test_training_flops_matches_a_hand_count_for_a_linear_layer():
    layer, batch = nn.Linear(20, 30), 4
    x, y = torch.randn(batch, 20), torch.randint(0, 30, (batch,))
    forward = 2 * 20 * 30 * batch  # a multiply-add is 2 FLOPs; the bias add is not counted
    assert training_flops(layer, x, y) == (2 * forward, ())  # + weight gradient; a leaf input needs no gradient
    assert training_flops(layer, x.requires_grad_(), y) == (3 * forward, ())  # + input gradient
    assert layer.weight.grad is None  # the count leaves no gradients behind


def test_stn_share_is_the_fraction_of_the_stn_step_the_twin_does_not_spend():
    assert stn_share(stn_rate=50.0, twin_rate=100.0) == pytest.approx(0.5)  # twice the twin's step time
    assert stn_share(stn_rate=75.0, twin_rate=100.0) == pytest.approx(0.25)
    assert stn_share(stn_rate=100.0, twin_rate=100.0) == 0.0


def test_bench_rejects_what_the_reference_cannot_do():
    with pytest.raises(ConfigError, match="none or standard"):
        run_bench(variants=["tutorial_cnn"], aug="affine", batch_size=64, device=CPU, precision="auto",
                  seconds=1.0, real_data=False, data_root=None, workers=False)


def test_report_of_one_variant(small_and_single_threaded):
    report = bench("tutorial_cnn")
    header = report.splitlines()[0]
    auto = "bf16" if cpu_has_native_bf16() else "fp32"  # what `auto` means on this CPU
    assert f"precision {auto} (asked: auto)" in header
    assert "batch size 64" in header and "aug standard" in header and f"torch {torch.__version__}" in header
    assert re.search(r"fp32 [\d.]+ GFLOP/s", report)

    row = table(report, "training")["tutorial_cnn"]
    trainer, _, ratio = rate_pair_and_ratio(row, trainer=0, ref=2, ratio=4)
    mflop = float(row[5])
    flops, _ = training_flops(create_model("tutorial_cnn"), torch.randn(FLOP_BATCH, 3, 32, 32),
                              torch.randint(0, 10, (FLOP_BATCH,)))
    assert mflop == pytest.approx(flops / FLOP_BATCH / 1e6, abs=0.005) and mflop > 0
    assert float(row[6]) == pytest.approx(mflop * trainer / 1e3, rel=0.01, abs=0.01)  # GFLOP/s = FLOP/img x img/s

    rate_pair_and_ratio(table(report, "evaluation")["tutorial_cnn"], trainer=0, ref=3, ratio=6)
    assert "STN share" not in report and "NOT COUNTED" not in report  # no twin given, no sampling run


def test_report_of_an_stn_variant_and_its_twin_has_the_share_line(small_and_single_threaded):
    report = bench("tutorial_stn", "tutorial_cnn")
    rows = table(report, "training")
    stn, twin = float(rows["tutorial_stn"][0]), float(rows["tutorial_cnn"][0])
    share = re.search(r"tutorial_stn vs tutorial_cnn: trainer (-?[\d.]+)%, reference (-?[\d.]+)%; "
                      r"counted FLOPs ([\d.]+)%", report)
    assert share, report
    assert float(share[1]) == pytest.approx(100 * stn_share(stn, twin), abs=0.06)
    assert float(rows["tutorial_stn"][5]) > float(rows["tutorial_cnn"][5])  # the localization net's convolutions
    missed = next(line for line in report.splitlines() if line.startswith("NOT COUNTED:"))
    assert "grid_sampler_2d" in missed and "tutorial_stn" in missed  # FlopCounterMode has no formula for them


def test_trials_per_hour_is_the_sum_of_the_workers_rates():
    # 3 trials in half an hour and 1 in an hour: 6 + 1 trials/hour
    assert trials_per_hour([WorkerTrials(3, 1800.0), WorkerTrials(1, 3600.0)]) == pytest.approx(7.0)


def test_each_worker_process_times_whole_trials_for_the_asked_seconds():
    """Two processes each report at least one trial, timed over at least the asked second and within the call."""
    tiny = ("tutorial_cnn", 256, 64)  # a trial of 2 steps and 128 evaluated images: the test is the protocol
    start = time.perf_counter()
    workers = run_workers(["cpu", "cpu"], 1, 1.0, "standard", 128, "auto", trial=tiny)
    wall = time.perf_counter() - start
    assert len(workers) == 2
    for w in workers:
        assert w.trials >= 1 and 1.0 <= w.seconds <= wall, (w, wall)


@pytest.mark.parametrize("cores, workers", [(16, 4), (4, 4), (2, 2), (1, 1)])
def test_reference_loader_has_the_tutorials_four_workers_up_to_the_cores(monkeypatch, cores, workers):
    from stn_ablation.bench import reference

    monkeypatch.setattr(reference, "usable_cores", lambda: cores)
    images, labels = torch.zeros(1, 3, 32, 32, dtype=torch.uint8), torch.zeros(1, dtype=torch.long)
    loader = reference.tutorial_loader(images, labels, "none", (0.5,) * 3, (0.5,) * 3, train=True)
    assert loader.num_workers == workers


def test_header_names_the_gpu_and_the_precision_and_the_tf32_peak(monkeypatch):
    """On CUDA the header names the GPU model (on the CPU, its model string) and the precision in use, and says the
    fp32 peak was measured with the TF32 setting the convolutions use."""
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 80GB HBM3")
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    raw = bench_module.synthetic_cifar(8, 8)
    peaks = {None: (1e12, 4096), torch.bfloat16: (2e12, 4096)}
    header = bench_module._header(raw, False, "standard", 128, torch.device("cuda:1"), "auto", torch.bfloat16,
                                  bench_module.Plan.for_seconds(1.0), peaks, None)
    assert "device cuda:1 (NVIDIA H100 80GB HBM3), precision bf16 (asked: auto)" in header[0]
    assert "fp32 (TF32, as the convolutions) 1000.0 GFLOP/s" in "\n".join(header)
    cpu = bench_module._header(raw, False, "standard", 128, CPU, "fp32", None, bench_module.Plan.for_seconds(1.0),
                               {None: (1e9, 256)}, None)
    assert f"device cpu ({device_model(CPU)}), precision fp32" in cpu[0] and "TF32" not in "\n".join(cpu)


def test_fp32_peak_is_measured_with_the_convolutions_tf32_setting(monkeypatch):
    seen = []
    monkeypatch.setattr(flops, "_matmul_peak",
                        lambda device, dtype, seconds: seen.append(torch.backends.cuda.matmul.allow_tf32))
    before = torch.backends.cuda.matmul.allow_tf32
    for tf32 in (True, False):
        monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", tf32)
        flops.matmul_peak(CPU, None, 0.0)
    assert seen == [True, False] and torch.backends.cuda.matmul.allow_tf32 == before


def test_gpu_worker_processes_are_labelled_by_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA A100-SXM4-40GB")
    label = workers._workers_label(["cuda:0", "cuda:1"], 8)
    assert label == "2 processes on cuda:0, cuda:1 (NVIDIA A100-SXM4-40GB)"
    assert workers._workers_label(["cpu"], 4) == "1 process   x 4 threads"


def test_every_evaluation_shape_is_warmed_up_before_the_timed_rounds(small_and_single_threaded, monkeypatch):
    """The timed evaluation rounds (the last `rounds` calls) meet no batch shape that a warm-up call did not:
    cuDNN times its kernels for each new shape on CUDA. The last, partial batch included."""
    calls: list[set[int]] = []
    rate = bench_module._predict_rate

    def recording(model, x, batch_size, amp):
        calls.append({min(batch_size, len(x))} | ({len(x) % batch_size} if len(x) % batch_size else set()))
        return rate(model, x, batch_size, amp)

    monkeypatch.setattr(bench_module, "_predict_rate", recording)
    monkeypatch.setattr(bench_module, "MIN_EVAL", 100)  # evaluated images not a multiple of the batch
    bench("tutorial_cnn")
    rounds = bench_module.Plan.for_seconds(1.0).rounds
    warm, timed = calls[:-rounds], calls[-rounds:]
    assert set().union(*timed) <= set().union(*warm), (warm, timed)
