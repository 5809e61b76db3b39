"""`stn-ablate ui` as a user meets it: the printed URL opens a model-training experiment, and stopping `ui` stops
the MLflow server and every worker it started."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from stn_ablation.tracking.tracker import KIND, Tracker


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _sessions() -> dict[int, int]:
    """pid -> session id of every process on this machine."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the process ended while we looked
        found[int(stat.parent.name)] = int(fields[3])
    return found


def _parent(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except OSError:
        return None


def test_experiments_open_as_model_training_and_keep_artifacts_in_the_state_folder(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    tracker = Tracker(f"sqlite:///{home / 'mlflow.db'}", home / "mlartifacts")
    experiment = tracker.client.get_experiment(tracker.experiment("quick"))
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development" == KIND["mlflow.experimentKind"]
    default = tracker.client.get_experiment_by_name("Default")
    assert default.artifact_location.startswith((home / "mlartifacts").as_uri())


def test_sigterm_stops_the_ui_and_its_server_processes(tmp_path):
    port = _free_port()
    ui = subprocess.Popen([sys.executable, "-m", "stn_ablation.cli", "ui", "--home", str(tmp_path / "home"),
                           "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 180
    while True:
        assert ui.poll() is None, ui.stdout.read()
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).close()
            break
        except OSError:
            assert time.time() < deadline, "the MLflow UI did not answer within 180 s"
            time.sleep(0.5)
    server_sessions = {sid for pid, sid in _sessions().items() if _parent(pid) == ui.pid}
    assert server_sessions and ui.pid not in server_sessions  # the server runs in its own session

    ui.send_signal(signal.SIGTERM)
    assert ui.wait(timeout=60) == 0
    left = [pid for pid, sid in _sessions().items() if sid in server_sessions]
    assert left == [], f"processes of the UI's server still running: {left}"
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0  # nothing serves the port any more
