"""A study against an MLflow tracking server at CPU size: trials/hour of `run --study quick` (as shipped: 8 trials,
2 epochs on 10k images) with 1 and with 3 worker processes, each against a fresh light server (tracking/server.py)
so that nothing is reused; and the time one epoch's logging takes over HTTP against a sqlite store, as the
trainer's epoch hook does it (read the run's last logged epoch, then log the epoch's 7 metrics in one batch).

    python scripts/bench_server.py [--backend postgresql://user@host/db] [--precision auto] [--epochs-logged 50]

Without --backend each server keeps its runs in a sqlite file; with it, in a fresh database of that server.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from stn_ablation.tracking.server import LocalServer, free_port
from stn_ablation.tracking.tracker import Tracker
from stn_ablation.training.train import EpochStats

STUDY_TRIALS = 8  # the quick study's cells


def fresh_backend(backend: str | None, folder: Path) -> str:
    """A new, empty store for one server: a database on the PostgreSQL server of `backend`, or a sqlite file."""
    if backend is None:
        return f"sqlite:///{folder / 'server.db'}"
    import psycopg

    database = f"stn_bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(backend, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {database}")
    return f"{backend.rsplit('/', 1)[0]}/{database}".replace("postgresql://", "postgresql+psycopg://", 1)


def server(backend: str | None, folder: Path) -> LocalServer:
    folder.mkdir(parents=True)
    found = LocalServer(fresh_backend(backend, folder), folder / "artifacts", free_port(), folder / "server.log")
    found.start()
    return found


def trials_per_hour(workers: int, backend: str | None, folder: Path, precision: str) -> float:
    """`run --study quick --workers N` against a fresh server, timed from start to summary."""
    tracking = server(backend, folder / "server")
    try:
        command = [sys.executable, "-m", "stn_ablation.cli", "run", "--study", "quick", "--home", str(folder / "home"),
                   "--tracking-uri", tracking.uri, "--workers", str(workers), "--device", "cpu",
                   "--precision", precision]
        started = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(f"run --workers {workers} failed: {(done.stderr.strip().splitlines() or ['?'])[-1]}")
        return STUDY_TRIALS / (time.perf_counter() - started) * 3600
    finally:
        tracking.stop()


def epoch_logging_ms(tracker: Tracker, epochs: int) -> list[float]:
    """Milliseconds of each epoch's `log_epochs` call on a fresh run, epoch by epoch as the trainer calls it."""
    run = tracker.open_run(tracker.experiment("bench"), uuid.uuid4().hex, "bench", tags={}, params={"a": 1})
    times = []
    for epoch in range(1, epochs + 1):
        stats = EpochStats(epoch, 1.0 / epoch, 0.5, 0.5, 0.5, 0.01, 4.0, 10_000.0)
        started = time.perf_counter()
        tracker.log_epochs(run, [stats])
        times.append(1000 * (time.perf_counter() - started))
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", help="postgresql://... server for the MLflow servers' databases; default sqlite")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--epochs-logged", type=int, default=50)
    args = parser.parse_args()
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        local = Tracker(f"sqlite:///{folder / 'local.db'}", folder / "local-artifacts")
        tracking = server(args.backend, folder / "latency")
        try:
            over_http = epoch_logging_ms(Tracker(tracking.uri), args.epochs_logged)
        finally:
            tracking.stop()
        on_sqlite = epoch_logging_ms(local, args.epochs_logged)
        http_ms, sqlite_ms = statistics.median(over_http), statistics.median(on_sqlite)
        print(f"one epoch's logging, median of {args.epochs_logged}: {http_ms:.1f} ms over HTTP, {sqlite_ms:.1f} ms "
              f"on sqlite: {http_ms / sqlite_ms:.2f}x, {http_ms - sqlite_ms:+.1f} ms per epoch")
        rates = {n: trials_per_hour(n, args.backend, folder / f"workers{n}", args.precision) for n in (1, 3)}
        print(f"quick study against the server ({args.precision}): {rates[1]:.0f} trials/hour with 1 worker, "
              f"{rates[3]:.0f} with 3 workers: {rates[3] / rates[1]:.2f}x")
    print(f"{os.cpu_count()} CPUs; load average over the last 15 minutes {os.getloadavg()[2]:.1f} (other processes "
          "share the cores if it is above the workers' count)")


if __name__ == "__main__":
    main()
