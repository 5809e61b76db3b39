"""A study against a real MLflow tracking server (PostgreSQL behind it, artifacts served by it) over HTTP: three
workers share it, the server crashes mid-study and comes back, and nothing is lost or logged twice; a server that
never comes back stops the worker in one line, leaving no trial running; the logged models load without the suite."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import optuna
import pytest
import torch
from mlflow.tracking import MlflowClient

from stn_ablation.study.spec import load_spec
from tests.serverutil import MlflowServer
from tests.studyutil import cli, quick_grid, study_trials

PG_HINT = ".ci/run starts a throw-away PostgreSQL server and sets them; see it to run these tests here"
OUTAGE_SECONDS = 10
TRAINING = "key IN ('train_loss', 'train_acc', 'val_acc', 'test_acc', 'lr', 'epoch_seconds', 'images_per_s')"


@pytest.fixture
def pg_url(required_env) -> str:
    return required_env("STN_ABLATE_TEST_PG", hint=PG_HINT)[0]


@pytest.fixture
def server(pg_url, tmp_path):
    server = MlflowServer(pg_url, tmp_path / "server")
    server.start()
    yield server
    server.stop()


def _fresh(study, url: str, **overrides):
    spec = load_spec(str(study), **overrides)
    try:
        optuna.delete_study(study_name=spec.storage_name, storage=url)
    except KeyError:
        pass
    return spec


def _children(client: MlflowClient, study: str) -> tuple[list, list]:
    experiment = client.get_experiment_by_name(study)
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    return ([r for r in runs if r.data.tags.get("phase") == "study"],
            [r for r in runs if "mlflow.parentRunId" in r.data.tags])


def _steps(client: MlflowClient, run_id: str, key: str = "train_loss") -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def test_three_workers_over_http_ride_out_a_server_crash(data_root, tmp_path, server, pg_url, capsys):
    study = quick_grid(tmp_path / "served.toml", "served", "the quick grid against a tracking server", 50)
    spec = _fresh(study, pg_url)
    args = ["run", "--study", str(study), "--storage", pg_url, "--tracking-uri", server.uri, "--workers", "3",
            "--device", "cpu"]
    run = cli(tmp_path / "home", *args, wait=False)

    deadline = time.time() + 600
    while server.count("SELECT count(*) FROM metrics WHERE key = 'train_loss'") < 4:  # a quarter of the epochs
        assert run.poll() is None and time.time() < deadline, run.stdout.read()
        time.sleep(0.2)
    server.stop()
    before = {"runs": server.count("SELECT count(*) FROM runs"),
              "points": server.count(f"SELECT count(*) FROM metrics WHERE {TRAINING}")}
    time.sleep(OUTAGE_SECONDS)
    assert run.poll() is None, "the workers should wait for the server, not give up"
    server.start()
    output = run.communicate(timeout=900)[0]
    after = {"runs": server.count("SELECT count(*) FROM runs"),
             "points": server.count(f"SELECT count(*) FROM metrics WHERE {TRAINING}")}
    with capsys.disabled():
        print(f"\noutage of {OUTAGE_SECONDS} s: runs {before['runs']} -> {after['runs']}, training metric points "
              f"{before['points']} -> {after['points']}; the workers said:\n"
              + "\n".join(line for line in output.splitlines() if "MLflow server" in line))
    assert run.returncode == 0, output
    assert "Traceback" not in output
    assert f"MLflow server {server.uri} unreachable" in output and f"MLflow server {server.uri} is back" in output

    trials = study_trials(tmp_path / "home", spec, pg_url)
    cells = sorted(t.user_attrs["cell"] for t in trials if t.state == optuna.trial.TrialState.COMPLETE)
    assert len(cells) == len(set(cells)) == len(spec.cells()) == 8
    assert all("seed" not in t.params and t.user_attrs["seed"] in (0, 1) for t in trials)  # a replicate
    client = MlflowClient(server.uri)
    experiment = client.get_experiment_by_name("served")
    assert experiment.artifact_location.startswith("mlflow-artifacts:")  # served by the server, not a local path
    assert experiment.tags["mlflow.note.content"] == spec.description
    parents, children = _children(client, "served")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert sorted(r.data.tags["cell"] for r in children) == cells and len(children) == 8
    assert after["runs"] == 9 and after["points"] == 8 * 2 * 7  # every epoch's 7 metrics once, none twice
    assert server.count(f"SELECT count(*) FROM (SELECT run_uuid, key, step FROM metrics WHERE {TRAINING} "
                        "GROUP BY run_uuid, key, step HAVING count(*) > 1) AS twice") == 0
    models = client.search_logged_models([experiment.experiment_id])
    assert sorted(m.source_run_id for m in models) == sorted(r.info.run_id for r in children)
    for r in children:
        assert r.info.status == "FINISHED" and _steps(client, r.info.run_id) == [1, 2]
        assert r.data.tags["mlflow.runName"].startswith(f"{r.data.tags['variant']}-s{r.data.tags['seed']}-"
                                                       f"{r.data.tags['augmentation']}")
        assert {"config.json", "per_class_test_acc.json"} <= {f.path for f in client.list_artifacts(r.info.run_id)}
        if r.data.tags["stn"] == "true":
            assert [f.path for f in client.list_artifacts(r.info.run_id, "stn")] == [
                "stn/epoch_001.png", "stn/epoch_002.png"]
        [output_model] = r.outputs.model_outputs
        model = client.get_logged_model(output_model.model_id)
        assert model.name == "model" and model.status.to_int() == 2  # READY
        assert {m.key: m.value for m in model.metrics}["final_test_acc"] == r.data.metrics["final_test_acc"]
    _loads_without_the_suite(server.uri, children[0].info.run_id, tmp_path)


def _loads_without_the_suite(uri: str, run_id: str, tmp_path) -> None:
    """The logged model loads and predicts in a process where `import stn_ablation` fails, as the suite's own
    module built from the same weights does."""
    script = f"""
import sys
sys.modules["stn_ablation"] = None  # any import of the suite, unpickling included, fails
try:
    import stn_ablation.models
    raise SystemExit("stn_ablation is importable")
except ImportError:
    pass
import json, mlflow, mlflow.pytorch, torch
mlflow.set_tracking_uri("{uri}")
model = mlflow.pytorch.load_model("runs:/{run_id}/model")
torch.manual_seed(0)
print(json.dumps(model(torch.randn(3, 3, 32, 32)).tolist()))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    logits = torch.tensor(json.loads(done.stdout.strip().splitlines()[-1]))
    from stn_ablation.models.registry import build_model
    from stn_ablation.config import TrainConfig
    from stn_ablation.tracking.tracker import Tracker

    client = MlflowClient(uri)
    cfg = TrainConfig().with_overrides(**json.loads(Tracker(uri).read_artifact(run_id, "config.json")))
    suite = build_model(cfg, (3, 32, 32), 10).eval()
    suite.load_state_dict(Tracker(uri).load_model(run_id).state_dict())
    torch.manual_seed(0)
    with torch.no_grad():
        assert torch.allclose(suite(torch.randn(3, 3, 32, 32)), logits, atol=1e-5)
    assert client.get_run(run_id).outputs.model_outputs


def test_a_server_that_never_comes_back_stops_the_worker_in_one_line(data_root, tmp_path, server, pg_url):
    study = tmp_path / "gone.toml"
    study.write_text('name = "gone"\ndescription = "the tracking server crashes for good"\n[grid]\nseed = [0, 1]\n'
                     '[train]\nvariant = "tutorial_cnn"\nepochs = 2\nsubset = 256\nval_size = 500\n'
                     '[robustness]\nimages = 0\n')
    spec = _fresh(study, pg_url)
    home = tmp_path / "home"
    args = ["run", "--study", str(study), "--storage", pg_url, "--tracking-uri", server.uri, "--device", "cpu",
            "--server-patience", "8"]
    worker = cli(home, *args, wait=False)
    deadline = time.time() + 300
    while server.count("SELECT count(*) FROM metrics WHERE key = 'train_loss'") < 1:
        assert worker.poll() is None and time.time() < deadline, worker.stdout.read()
        time.sleep(0.1)
    server.stop()
    started = time.time()
    output = worker.communicate(timeout=300)[0]
    lines = output.strip().splitlines()
    assert worker.returncode == 2, output
    assert "Traceback" not in output
    assert lines[-1].startswith(f"stn-ablate: error: MLflow server {server.uri} unreachable for"), lines[-1]
    assert "re-run the same command" in lines[-1] and time.time() - started < 120
    trials = study_trials(home, spec, pg_url)  # the claimed trial failed with the reason; the other cell queued
    assert sorted(t.state.name for t in trials) == ["FAIL", "WAITING"]
    assert server.uri in next(t for t in trials if t.state.name == "FAIL").user_attrs["reason"]

    server.start()
    again = cli(home, *args)
    assert again.returncode == 0, again.stderr
    client = MlflowClient(server.uri)
    parents, children = _children(client, "gone")
    assert len(children) == 2 and parents[0].info.status == "FINISHED"  # the failed cell resumed in its own run
    for r in children:
        assert r.info.status == "FINISHED" and _steps(client, r.info.run_id) == [1, 2]
