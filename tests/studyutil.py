"""Helpers for the study tests: the real study files shrunk to CPU seconds, run in-process or as a CLI worker."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import optuna
from mlflow.tracking import MlflowClient

from stn_ablation.paths import StateHome
from stn_ablation.study.storage import open_storage
from stn_ablation.study.spec import STUDIES_DIR, StudySpec


def shrunk_study(tmp_path: Path, name: str = "quick", images: int = 100) -> Path:
    """A copy of a shipped study file whose robustness sweeps use `images` test images."""
    text = (STUDIES_DIR / f"{name}.toml").read_text()
    assert "images = 1000" in text, "the quick study's robustness block changed; update this helper"
    path = tmp_path / f"{name}.toml"
    path.write_text(text.replace("images = 1000", f"images = {images}"))
    return path


def quick_grid(path: Path, name: str, description: str, robustness_images: int = 0) -> Path:
    """A study file at `path`: the quick study's 8 cells at 2 epochs on 256 images with a 500-image validation
    split, a few seconds a trial, and robustness sweeps on `robustness_images` test images."""
    path.write_text(f'name = "{name}"\ndescription = "{description}"\n[grid]\n'
                    'variant = ["tutorial_stn", "tutorial_cnn"]\naug = ["none", "standard"]\nseed = [0, 1]\n'
                    '[train]\nepochs = 2\nsubset = 256\nval_size = 500\n'
                    f'[robustness]\nimages = {robustness_images}\n')
    return path


def cli(home: Path, *args: str, wait: bool = True, **env: str):
    """`stn-ablate ARGS` as a separate process with the state folder `home`."""
    full_env = {**os.environ, "STN_ABLATE_HOME": str(home), **env}
    command = [sys.executable, "-m", "stn_ablation.cli", *args]
    if wait:
        return subprocess.run(command, env=full_env, capture_output=True, text=True, timeout=900)
    return subprocess.Popen(command, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def child_runs(home: Path, study: str) -> tuple[list, list]:
    """(parent runs, child runs) of a study's experiment, through MlflowClient."""
    client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(study)
    assert experiment is not None, f"no MLflow experiment {study!r}"
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("phase") == "study"]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return parents, children


def study_trials(home: Path, spec: StudySpec, storage_url: str | None = None) -> list[optuna.trial.FrozenTrial]:
    """Every Optuna trial of the study `spec` (loaded with the run's overrides, which are part of its storage name),
    read through the storage `run` opens: `storage_url`, or the state folder's journal by default."""
    storage, _ = open_storage(storage_url, StateHome(home), spec.storage_name)
    return optuna.load_study(study_name=spec.storage_name, storage=storage).get_trials()


def steps(home: Path, run_id: str, metric: str = "train_loss") -> list[int]:
    client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    return sorted(m.step for m in client.get_metric_history(run_id, metric))
