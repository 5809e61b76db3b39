"""`stn-ablate ui` as a user meets it: the printed URL opens the experiment's runs table, the server behind it is
the light one, and stopping `ui` stops the MLflow server and every process it started."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from stn_ablation.tracking.server import free_port
from stn_ablation.tracking.tracker import KIND, Tracker


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


def _resident_mb(pids: list[int]) -> float:
    pages = sum(int(Path(f"/proc/{pid}/statm").read_text().split()[1]) for pid in pids)
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def test_the_printed_url_lands_on_the_runs_table_of_a_light_server_that_sigterm_stops(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    experiment = Tracker(f"sqlite:///{home / 'mlflow.db'}", home / "mlartifacts").experiment("quick", "a study")
    port = free_port()
    ui = subprocess.Popen([sys.executable, "-m", "stn_ablation.cli", "ui", "--home", str(home), "--port", str(port),
                           "--study", "quick"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = re.search(r"(http://\S+)", ui.stdout.readline()).group(1)
    base = f"http://127.0.0.1:{port}"
    assert url == f"{base}/#/experiments/{experiment}/runs?workflowType=machine_learning"
    deadline = time.time() + 180
    while True:
        assert ui.poll() is None, ui.stdout.read()
        try:
            urllib.request.urlopen(f"{base}/health", timeout=2).close()
            break
        except OSError:
            assert time.time() < deadline, "the MLflow UI did not answer within 180 s"
            time.sleep(0.5)
    with urllib.request.urlopen(url.split("#")[0], timeout=30) as page:  # the fragment is the UI's own route
        assert page.status == 200 and "<html" in page.read().decode().lower()
    with urllib.request.urlopen(f"{base}/ajax-api/2.0/mlflow/experiments/get?experiment_id={experiment}",
                                timeout=30) as answer:  # what the runs table asks for first
        assert json.load(answer)["experiment"]["name"] == "quick"
    server_sessions = {sid for pid, sid in _sessions().items() if _parent(pid) == ui.pid}
    assert server_sessions and ui.pid not in server_sessions  # the server runs in its own session
    server = [pid for pid, sid in _sessions().items() if sid in server_sessions]
    print(f"UI server: {len(server)} processes, {_resident_mb(server):.0f} MB resident")
    assert len(server) <= 2, "one mlflow process and one web worker: no job-queue consumers, no worker pool"

    ui.send_signal(signal.SIGTERM)
    assert ui.wait(timeout=60) == 0
    left = [pid for pid, sid in _sessions().items() if sid in server_sessions]
    assert left == [], f"processes of the UI's server still running: {left}"
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0  # nothing serves the port any more
