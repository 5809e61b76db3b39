"""The MLflow side: an unreachable server fails at start-up, replayed epochs never duplicate a step, and an
interrupted run is reopened rather than duplicated."""

from __future__ import annotations

import time

import pytest

from stn_ablation.tracking.tracker import Tracker, TrackingError
from stn_ablation.training.train import EpochStats


@pytest.fixture(scope="module")
def tracker(tmp_path_factory) -> Tracker:
    root = tmp_path_factory.mktemp("mlflow")
    return Tracker(f"sqlite:///{root / 'mlflow.db'}", root / "artifacts")


def _epoch(n: int) -> EpochStats:
    return EpochStats(n, 2.0 / n, 0.1 * n, 0.1 * n, 0.1 * n, 0.01, 1.0, 100.0)


def test_unreachable_server_fails_fast_in_one_line():
    started = time.perf_counter()
    with pytest.raises(TrackingError) as error:
        Tracker("http://127.0.0.1:9").check()
    assert time.perf_counter() - started < 15
    assert "unreachable" in str(error.value) and "--tracking-uri" in str(error.value)
    assert "\n" not in str(error.value)


def test_replayed_epochs_fill_gaps_without_duplicates(tracker):
    experiment = tracker.experiment("replay")
    run = tracker.open_run(experiment, "k1", "r", tags={}, params={"a": 1})
    tracker.log_epochs(run, [_epoch(1)])
    tracker.log_epochs(run, [_epoch(1), _epoch(2), _epoch(3)])  # a resumed run replays its checkpoint history
    tracker.log_epochs(run, [_epoch(3)])
    history = tracker.client.get_metric_history(run, "train_loss")
    assert sorted(m.step for m in history) == [1, 2, 3]
    assert tracker.logged_epochs(run) == 3


def test_unfinished_run_is_reopened_and_finished_one_is_not(tracker):
    experiment = tracker.experiment("reopen")
    first = tracker.open_run(experiment, "cell", "r", tags={"variant": "v"}, params={})
    assert tracker.open_run(experiment, "cell", "r", tags={}, params={}) == first  # killed: same run continues
    tracker.end_run(first, "finished")
    assert tracker.open_run(experiment, "cell", "r", tags={}, params={}, reuse_finished=True) == first
    second = tracker.open_run(experiment, "cell", "r", tags={}, params={})
    assert second != first  # `stn-ablate train` run again trains afresh


@pytest.mark.parametrize("status, mlflow_status", [("finished", "FINISHED"), ("pruned", "KILLED"),
                                                   ("diverged", "FAILED"), ("failed", "FAILED")])
def test_only_finished_runs_look_successful(tracker, status, mlflow_status):
    experiment = tracker.experiment("statuses")
    run = tracker.open_run(experiment, f"s-{status}", "r", tags={}, params={})
    tracker.end_run(run, status, "why")
    info = tracker.client.get_run(run)
    assert info.info.status == mlflow_status
    assert info.data.tags["status"] == status and info.data.tags["status_reason"] == "why"


def test_experiment_creation_is_idempotent(tracker):
    assert tracker.experiment("twice") == tracker.experiment("twice")


def test_a_copied_run_takes_its_new_name_over_its_old_run_name_tag(tracker):
    """A reused run is copied under the new cell's name; its record still carries the source's mlflow.runName,
    which an older naming scheme spelled differently (tutorial_stn-affine-none-s0, now tutorial_stn-s0-none-affine)."""
    experiment = tracker.experiment("copies")
    source = tracker.open_run(experiment, "old", "tutorial_stn-affine-none-s0", tags={"variant": "tutorial_stn"},
                              params={"seed": 0})
    tracker.log_epochs(source, [_epoch(1)])
    tracker.end_run(source, "finished")
    record = tracker.read_run(tracker.client.get_run(source))
    copy = tracker.write_run(experiment, {**record, "name": "tutorial_stn-s0-none-affine"}, tags={"copied": "yes"},
                             files={})
    run = tracker.client.get_run(copy)
    assert run.info.run_name == "tutorial_stn-s0-none-affine" and run.data.tags["copied"] == "yes"
    assert run.data.tags["variant"] == "tutorial_stn" and run.data.params == {"seed": "0"}
