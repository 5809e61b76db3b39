"""Concurrency: three worker processes on one study, with the embedded storage and with PostgreSQL. Every cell
runs exactly once, nothing fails on a locked database, and the MLflow experiment and parent run exist once."""

from __future__ import annotations

import os

import optuna
import pytest
from mlflow.tracking import MlflowClient

from stn_ablation.studyfile import load_study
from tests.studyutil import child_runs, cli, shrunk_study


def _postgres_url() -> str:
    url = os.environ.get("STN_ABLATE_TEST_PG")
    if not url:
        if os.environ.get("CI") == "true":
            pytest.fail("STN_ABLATE_TEST_PG is not set: .ci/run starts PostgreSQL and sets it", pytrace=False)
        pytest.skip("set STN_ABLATE_TEST_PG=postgresql://... to run the PostgreSQL worker test")
    return url


@pytest.mark.parametrize("backend", ["embedded", "postgresql"])
def test_three_workers_run_each_cell_exactly_once(data_root, tmp_path, backend):
    home = tmp_path / "home"
    study = shrunk_study(tmp_path, images=0)
    overrides = ["--epochs", "1", "--subset", "256", "--device", "cpu"]
    spec = load_study(str(study), epochs=1, subset=256)
    storage_args: list[str] = []
    if backend == "postgresql":
        url = _postgres_url()
        try:
            optuna.delete_study(study_name=spec.storage_name, storage=url)
        except KeyError:
            pass
        storage_args = ["--storage", url]

    args = ["run", "--study", str(study), *storage_args, *overrides]
    workers = [cli(home, *args, wait=False, OMP_NUM_THREADS="1") for _ in range(3)]
    outputs = [w.communicate(timeout=900)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0, 0], outputs
    assert not any("database is locked" in out for out in outputs), outputs

    storage = url if backend == "postgresql" else optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(home / "optuna.journal")))
    trials = optuna.load_study(study_name=spec.storage_name, storage=storage).get_trials()
    cells = sorted(t.user_attrs["cell"] for t in trials)
    assert len(trials) == len(spec.cells()) == 8 and len(set(cells)) == 8, cells
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert len({t.user_attrs["owner"] for t in trials}) >= 2, "the work should have been shared"

    client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    assert [e.name for e in client.search_experiments()].count("quick") == 1
    parents, children = child_runs(home, "quick")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert sorted(r.data.tags["cell"] for r in children) == cells
