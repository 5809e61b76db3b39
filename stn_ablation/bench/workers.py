"""`stn-ablate bench --workers`: trials/hour of 1 vs 2 worker processes, each started as
`python -m stn_ablation.bench ARGS` (__main__.py; ARGS: trial_worker's arguments as JSON)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from stn_ablation.config import TrainConfig
from stn_ablation.data.datasets import RawDataset, prepare
from stn_ablation.device import device_model, usable_cores, worker_devices
from stn_ablation.models.registry import build_model
from stn_ablation.training.train import train

ROOT = str(Path(__file__).resolve().parents[2])  # on the workers' PYTHONPATH: they import this source tree
TRIAL = ("tutorial_stn", 2048, 512)  # --workers: variant, training images, validation (= test) images of a trial


def synthetic_cifar(n_train: int, n_test: int, seed: int = 0) -> RawDataset:
    """CIFAR-10-shaped uniform random uint8 images and labels; named cifar10 so prepare() normalizes them alike."""
    g = torch.Generator().manual_seed(seed)
    images = lambda n: torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)  # noqa: E731
    labels = lambda n: torch.randint(0, 10, (n,), generator=g)  # noqa: E731
    return RawDataset("cifar10", images(n_train), labels(n_train), images(n_test), labels(n_test),
                      tuple(f"class{i}" for i in range(10)),
                      "synthetic CIFAR-10-shaped data: uniform random uint8 pixels and labels", "synthetic")


def workers_report(aug: str, batch_size: int, device: torch.device, precision: str, seconds: float) -> list[str]:
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
        return f"{processes} x {threads_word(threads)}"
    return f"{processes} on {', '.join(devices)} ({device_model(torch.device(devices[0]))})"


def threads_word(n: int) -> str:
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
    env = {**os.environ, "OMP_NUM_THREADS": str(threads),
           "PYTHONPATH": os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)}
    args = lambda device: json.dumps([threads, seconds, aug, batch_size, device, precision, trial])  # noqa: E731
    errs = [tempfile.TemporaryFile("w+") for _ in devices]
    procs = [subprocess.Popen([sys.executable, "-m", "stn_ablation.bench", args(device)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=err, text=True, env=env)
             for device, err in zip(devices, errs)]
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
