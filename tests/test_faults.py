"""Fault injection: a small study whose worker is killed (SIGKILL, as `kill -9`) at seven different moments,
re-running the same command after each kill. Right after each kill every checkpoint on disk is readable (a trial
deletes its checkpoint when it ends, so this is the moment they exist); in the end every cell has finished exactly
once, every MLflow metric history is continuous, no temporary checkpoint is left, and the accuracies equal those of
an uninterrupted run bit for bit."""

from __future__ import annotations

import optuna
from mlflow.tracking import MlflowClient

from stn_ablation.checkpoint import load_checkpoint
from stn_ablation.faults import FAULT_ENV
from stn_ablation.study.spec import load_spec
from tests.studyutil import child_runs, cli, quick_grid, steps, study_trials

# (point, occurrence): 256 images at batch 128 are 2 steps an epoch, 4 a trial; a trial writes a checkpoint an epoch,
# so the second checkpoint write is torn while the trial's first checkpoint is on disk
KILLS = [("step", 3), ("checkpoint_write", 2), ("checkpoint", 2), ("mlflow", 2), ("evaluate", 3),
         ("between_trials", 1), ("step", 6)]


def _final_accuracies(home) -> dict[str, float]:
    _, children = child_runs(home, "faults")
    return {r.data.tags["cell"]: r.data.metrics["final_test_acc"] for r in children}


def test_kill_at_seven_moments_loses_nothing(data_root, tmp_path):
    study = quick_grid(tmp_path / "faults.toml", "faults", "the quick grid, shrunk for fault injection")
    args = ["run", "--study", str(study), "--device", "cpu"]

    reference = tmp_path / "reference"
    done = cli(reference, *args, OMP_NUM_THREADS="2")
    assert done.returncode == 0, done.stderr

    home = tmp_path / "home"
    checkpoints = home / "checkpoints"
    checked = 0
    for point, n in KILLS:
        killed = cli(home, *args, OMP_NUM_THREADS="2", **{FAULT_ENV: f"{point}:{n}"})
        assert killed.returncode == -9, f"{point}:{n} did not fire:\n{killed.stderr[-2000:]}"
        for path in checkpoints.glob("*.pt"):
            assert load_checkpoint(path)["history"], (point, path)  # unreadable raises CheckpointError
            checked += 1
        if point == "checkpoint_write":
            assert list(checkpoints.glob("*.tmp")), "the kill mid-write should have left a torn temporary file"
    assert checked, "no kill left a checkpoint to check"
    final = cli(home, *args, OMP_NUM_THREADS="2")
    assert final.returncode == 0, final.stderr

    trials = study_trials(home, load_spec(str(study)))
    complete = [t.user_attrs["cell"] for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert sorted(complete) == sorted(set(complete)) and len(complete) == 8

    parents, children = child_runs(home, "faults")
    assert len(parents) == 1 and len(children) == 8
    client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    for run in children:
        assert run.info.status == "FINISHED"
        for metric in ("train_loss", "val_acc", "test_acc", "epoch_seconds"):
            assert steps(home, run.info.run_id, metric) == [1, 2], (run.data.tags["cell"], metric)
        assert len(client.get_metric_history(run.info.run_id, "final_test_acc")) >= 1
    resumed = [r for r in children if "resumed_from_epoch" in r.data.tags]
    assert resumed, "at least one trial should have continued from a checkpoint"

    assert not list(checkpoints.glob("*.tmp")), "a half-written checkpoint was left behind"

    assert _final_accuracies(home) == _final_accuracies(reference)
