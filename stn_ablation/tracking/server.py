"""The lightest MLflow server that serves the UI and the tracking API: one web worker and no job queue, where
`mlflow ui`'s defaults start four web workers and MLflow's job-queue consumers (the README's "Everyday use" has their
memory). For one user's UI, or a study's workers on a loopback port, one worker answers as fast. `LocalServer` runs
one for the tests and the benchmark."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def server_command(*options: str, workers: int = 1) -> tuple[list[str], dict[str, str]]:
    """The command line and environment of `mlflow server OPTIONS` with `workers` web workers (MLflow's
    --backend-store-uri, --host, --port, ... in `options`); run it in a session of its own to stop it whole."""
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # its consumers: GenAI jobs, not ours
    return [sys.executable, "-m", "mlflow", "server", *options, "--workers", str(workers)], env


def free_port() -> int:
    """A loopback port nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalServer:
    """A light server on a loopback port, serving the artifacts it keeps in `artifacts`: started and waited for,
    stopped whole with SIGKILL (as a crash would stop it), and started again on the same port and stores."""

    def __init__(self, backend_uri: str, artifacts: Path, port: int, log: Path):
        self.backend_uri, self.artifacts, self.port, self.log = backend_uri, artifacts, port, log
        self.uri = f"http://127.0.0.1:{port}"
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 180) -> None:
        command, env = server_command("--backend-store-uri", self.backend_uri, "--artifacts-destination",
                                      str(self.artifacts), "--host", "127.0.0.1", "--port", str(self.port))
        with open(self.log, "a") as log:
            self.process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"mlflow server exited with {self.process.returncode}; see {self.log}")
            try:
                urllib.request.urlopen(f"{self.uri}/health", timeout=2).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"mlflow server did not answer on {self.uri} in {timeout:.0f} s; see {self.log}")
                time.sleep(0.3)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=60)
