"""`stn-ablate run`: the quick study end to end, resumption after kill -9, diverged trials, and the study-file
checks (concurrent workers are in test_reliability.py)."""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import optuna
import pytest

from stn_ablation.cli import main
from stn_ablation.paths import StateHome
from stn_ablation.reporting.records import read_study
from stn_ablation.study.worker import cell_key, cell_label
from stn_ablation.study.spec import StudyFileError, list_studies, load_spec
from stn_ablation.study.storage import open_storage
from tests.studyutil import child_runs, cli, quick_grid, shrunk_study, steps, study_trials

EPOCH_METRICS = ("train_loss", "train_acc", "val_acc", "test_acc", "lr", "epoch_seconds", "images_per_s")


def test_every_shipped_study_loads():
    assert {"baseline_vs_stn", "seed_recipe", "mnist_tutorial", "tune_stn", "quick"} <= set(list_studies())
    headline = load_spec("baseline_vs_stn")
    assert headline.n_trials == 24 and headline.base.epochs == 50
    assert {c["variant"] for c in headline.cells()} == {"tutorial_stn", "tutorial_cnn", "loc3_stn", "loc3_cnn"}
    tune = load_spec("tune_stn")
    assert tune.phase == "tune" and tune.n_trials == 30 and tune.metric == "val_acc" and tune.pruner == "median"
    paper = load_spec("paper_mnist")  # the STN paper's Table 1: a CNN and three ST-CNNs on 4 datasets, 3 seeds
    assert paper.n_trials == 4 * (1 + 3) * 3 and paper.base.batch_size == 256
    assert [c["dataset"] for c in paper.cells()[::12]] == ["mnist_r", "mnist_rts", "mnist_p", "mnist_e"]
    assert sum(c["variant"] == "paper_cnn" for c in paper.cells()) == 4 * 3
    distorted = load_spec("cifar10_rts")  # baseline_vs_stn's recipe on clean and distorted CIFAR-10
    assert distorted.n_trials == 24 and distorted.base == headline.base
    assert distorted.grid["dataset"] == ("cifar10", "cifar10_rts")


def test_quick_study_runs_once_and_records_everything(data_root, tmp_path, capsys):
    """The README's main job, shrunk: 1 parent + 8 child runs with complete curves; a re-run trains nothing."""
    home = tmp_path / "home"
    study = shrunk_study(tmp_path)
    args = ["run", "--study", str(study), "--home", str(home), "--epochs", "2", "--subset", "512", "--device", "cpu"]
    assert main(args) == 0
    assert "8 finished" in capsys.readouterr().out

    parents, children = child_runs(home, "quick")
    assert len(parents) == 1 and len(children) == 8
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}
    assert sorted(r.data.tags["cell"] for r in children) == sorted(
        f"variant={v}/aug={a}/seed={s}" for v in ("tutorial_stn", "tutorial_cnn") for a in ("none", "standard")
        for s in (0, 1))
    for run in children:
        assert run.info.status == "FINISHED" and run.data.tags["status"] == "finished"
        for metric in EPOCH_METRICS:
            assert steps(home, run.info.run_id, metric) == [1, 2], metric
        assert run.data.params["epochs"] == "2" and run.data.params["subset"] == "512"
        for tag in ("study", "variant", "augmentation", "seed", "trial", "phase", "git_commit", "git_dirty",
                    "study_file_sha256"):
            assert run.data.tags.get(tag), tag
        assert 0.1 < run.data.metrics["final_test_acc"] <= 1.0
        assert {"robust/rotate/45", "robust/scale/0.7", "robust/translate/-6"} <= set(run.data.metrics)
        if run.data.tags["stn"] == "true":
            assert "theta/identity_dist_mean" in run.data.metrics
    assert parents[0].info.status == "FINISHED"

    spec = load_spec(str(study), epochs=2, subset=512)
    assert len(study_trials(home, spec)) == 8
    assert main(args) == 0
    assert len(study_trials(home, spec)) == 8 and len(child_runs(home, "quick")[1]) == 8


def test_killed_worker_resumes_in_the_same_run(data_root, tmp_path):
    """kill -9 after a trial's first checkpoint; the same command finishes the study, and the interrupted trial
    continues from its checkpoint in the same MLflow run with no gap and no duplicate step."""
    home = tmp_path / "home"
    study = shrunk_study(tmp_path)
    args = ["run", "--study", str(study), "--epochs", "3", "--subset", "512", "--device", "cpu", "--n-trials", "2"]
    worker = cli(home, *args, wait=False)
    checkpoints = home / "checkpoints"
    deadline = time.time() + 300
    while not any(checkpoints.glob("*.pt")) and time.time() < deadline and worker.poll() is None:
        time.sleep(0.02)
    assert worker.poll() is None, f"worker ended before its first checkpoint:\n{worker.stdout.read()}"
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait()

    again = cli(home, *args)
    assert again.returncode == 0, again.stderr
    assert "lost its worker" in again.stderr
    parents, children = child_runs(home, "quick")
    assert len(children) == 2, [r.data.tags["cell"] for r in children]
    for run in children:
        assert run.info.status == "FINISHED"
        assert steps(home, run.info.run_id) == [1, 2, 3]
    resumed = [r for r in children if "resumed_from_epoch" in r.data.tags]
    assert len(resumed) == 1 and int(resumed[0].data.tags["resumed_from_epoch"]) >= 1


@pytest.mark.parametrize("text, message", [
    ('name = "x"\ndescription = "d"\n[grid\nvariant = ["tutorial_stn"]\n', "invalid TOML"),
    ('name = "x"\ndescription = "d"\ncolour = 1\n[grid]\nseed = [0]\n', "colour: unknown key"),
    ('name = "x"\ndescription = "d"\n[grid]\nvariant = []\n', "grid.variant: must be a non-empty list"),
    ('name = "x"\ndescription = "d"\n[grid]\nvariant = ["resnet9000"]\n', "unknown variant 'resnet9000'"),
    ('name = "x"\ndescription = "d"\n[grid]\nseed = [0]\n[train]\nepochs = 0\n', "train: epochs must be at least 1"),
    ('name = "x"\ndescription = "d"\n[grid]\nseed = [0]\n[train]\nlearning_rate = 0.1\n', "unknown config key"),
    ('name = "x"\ndescription = "d"\nn_trials = 3\n[search.lr]\ntype = "float"\nlow = 0.5\nhigh = 0.1\n',
     "bad range"),
    ('name = "x"\ndescription = "d"\nn_trials = 3\n[search.lr]\ntype = "float"\nlow = 0.0\nhigh = 0.1\nlog = true\n',
     "log scale needs low > 0"),
    ('name = "x"\ndescription = "d"\n', "exactly one of [grid]"),
    ('name = "x"\ndescription = "d"\n[grid]\nseed = [0]\n[robustness]\nimages = -1\n', "robustness"),
    ('name = "x"\ndescription = "d"\n[grid]\ntransform = ["spline"]\n', "grid.transform: transform must be one of"),
])
def test_malformed_study_files_fail_with_one_line(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(StudyFileError) as error:
        load_spec(str(path))
    assert message in str(error.value) and str(path) in str(error.value)
    assert "\n" not in str(error.value)


def test_a_transform_grid_has_a_cell_per_family_and_one_for_the_twin(tmp_path):
    """The twin has no transformer, so the transform axis does not multiply it: one cell per seed, which pairs
    with each family's STN cell; every cell is its own config (run key)."""
    path = tmp_path / "families.toml"
    path.write_text('name = "f"\ndescription = "d"\n[grid]\nvariant = ["tutorial_stn", "tutorial_cnn"]\n'
                    'transform = ["affine", "projective", "tps"]\nseed = [0, 1]\n')
    spec = load_spec(str(path))
    cells = spec.cells()
    assert spec.n_trials == len(cells) == 3 * 2 + 2
    assert cells[:2] == [{"variant": "tutorial_stn", "transform": "affine", "seed": 0},
                         {"variant": "tutorial_stn", "transform": "affine", "seed": 1}]
    assert [c for c in cells if c["variant"] == "tutorial_cnn"] == [{"variant": "tutorial_cnn", "seed": s}
                                                                     for s in (0, 1)]
    assert len({cell_key(c) for c in cells}) == len({spec.config(c).digest() for c in cells}) == len(cells)
    assert [cell_label(spec.config(c)) for c in (cells[2], cells[-1])] == [
        ("tutorial_stn", "s0", "none", "projective"), ("tutorial_cnn", "s1", "none")]  # variant, seed, aug first
    assert load_spec(str(path), n_trials=7).cells() == cells[:7]


def test_a_transform_grid_runs_each_family_and_the_twin_once(data_root, tmp_path, capsys):
    """Run end to end: an STN run logs its family and is named by it; the twin logs none."""
    _run_inline_study(
        tmp_path, capsys, 'name = "families"\ndescription = "d"\n[grid]\nvariant = ["tutorial_stn", '
        '"tutorial_cnn"]\ntransform = ["projective", "tps"]\n[train]\nepochs = 1\nsubset = 256\nval_size = 500\n'
        '[robustness]\nimages = 0\n')
    _, children = child_runs(tmp_path / "home", "families")
    named = {r.info.run_name: r for r in children}
    assert sorted(named) == ["tutorial_cnn-s0-none", "tutorial_stn-s0-none-projective", "tutorial_stn-s0-none-tps"]
    assert named["tutorial_stn-s0-none-tps"].data.params["transform"] == "tps"
    assert "transform" not in named["tutorial_cnn-s0-none"].data.params
    assert all(r.data.tags["status"] == "finished" for r in children)
    assert "theta/displacement_mean" in named["tutorial_stn-s0-none-tps"].data.metrics
    assert "theta/px_mean" in named["tutorial_stn-s0-none-projective"].data.metrics


def test_invalid_toml_names_the_line(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('name = "x"\ndescription = "d"\n[grid\n')
    with pytest.raises(StudyFileError, match=r"line 3"):
        load_spec(str(path))


def test_cli_reports_unknown_study_in_one_line(tmp_path, capsys):
    assert main(["run", "--study", "no_such_study", "--home", str(tmp_path / "h")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "unknown study 'no_such_study'" in err and "quick" in err


def test_run_on_missing_data_fails_before_training(tmp_path, capsys):
    args = ["run", "--study", "quick", "--home", str(tmp_path / "h"), "--data-root", str(tmp_path / "nodata"),
            "--epochs", "1"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert any("cifar10 not found under" in line and "cifar-10-batches-py" in line for line in err)


def test_a_missing_second_dataset_fails_before_training(data_root, tmp_path, capsys, monkeypatch):
    """Every dataset of the grid is checked at start-up, not only the first one's: here MNIST, absent from a data
    root that holds only CIFAR-10 and failing to download (the network is cut by the test), fails the run in one
    line before its CIFAR-10 cells train."""
    import urllib.error
    import urllib.request

    def no_network(*args, **kwargs):
        raise urllib.error.URLError("network disabled by the test")
    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    root = tmp_path / "cifar_only"
    root.mkdir()
    (root / "cifar-10-batches-py").symlink_to(data_root / "cifar-10-batches-py")
    study = tmp_path / "two.toml"
    study.write_text('name = "two"\ndescription = "CIFAR-10 and MNIST"\n[grid]\ndataset = ["cifar10", "mnist"]\n'
                     '[train]\nvariant = "tutorial_cnn"\nepochs = 1\nsubset = 128\n[robustness]\nimages = 0\n')
    home = tmp_path / "h"
    assert main(["run", "--study", str(study), "--home", str(home), "--data-root", str(root)]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("stn-ablate: error: mnist not found under") and "MNIST/raw/" in line
    assert "download failed: <urlopen error network disabled by the test>" in line
    assert not StateHome(home).optuna_journal.exists()  # failed before the study's storage, so before any trial


def _run_inline_study(tmp_path, capsys, text: str) -> tuple[list[str], Path, str]:
    """Write `text` as a study file and run it in a fresh state folder: (the command, the folder, its stdout)."""
    study = tmp_path / "inline.toml"
    study.write_text(text)
    home = tmp_path / "home"
    args = ["run", "--study", str(study), "--home", str(home), "--device", "cpu"]
    assert main(args) == 0
    return args, home, capsys.readouterr().out


def _rerun_adds_no_trial(args: list[str], home: Path) -> None:
    """Run `args` (a `run --study PATH ...` command) again: every training is an Optuna trial, so an unchanged
    trial count means nothing was trained again. (MLflow runs cannot show it: a re-trained cell reuses its run.)"""
    spec = load_spec(args[args.index("--study") + 1])
    before = len(study_trials(home, spec))
    assert main(args) == 0
    assert len(study_trials(home, spec)) == before


def test_diverged_trials_are_results_not_crashes(data_root, tmp_path, capsys):
    """A learning rate that blows the loss up ends each trial as diverged, with its reason; the study goes on,
    and a re-run does not train them again."""
    args, home, out = _run_inline_study(
        tmp_path, capsys, 'name = "diverge"\ndescription = "lr far too high"\n[grid]\nseed = [0, 1]\n'
        '[train]\nvariant = "tutorial_cnn"\nlr = 1e6\nepochs = 2\nsubset = 256\nval_size = 500\n'
        '[robustness]\nimages = 0\n')
    assert "2 diverged" in out
    _, children = child_runs(home, "diverge")
    assert len(children) == 2
    for run in children:
        assert run.info.status == "FAILED" and run.data.tags["status"] == "diverged"
        assert run.data.tags["status_reason"].startswith("diverged at epoch 1")
    _rerun_adds_no_trial(args, home)


def test_tuning_study_samples_tracks_and_counts_trials(data_root, tmp_path, capsys):
    """A [search] study: the sampler draws each trial's settings, every trial is a child run with those params, and
    n_trials is a total that a re-run does not exceed."""
    args, home, out = _run_inline_study(
        tmp_path, capsys, 'name = "tune_small"\ndescription = "lr search"\nn_trials = 3\nsampler = "random"\n'
        '[train]\nvariant = "tutorial_cnn"\nepochs = 1\nsubset = 256\nval_size = 500\n'
        '[search.lr]\ntype = "float"\nlow = 0.01\nhigh = 0.1\nlog = true\n'
        '[search.batch_size]\ntype = "categorical"\nchoices = [64, 128]\n'
        '[robustness]\nimages = 0\n')
    assert "3 finished" in out
    _, children = child_runs(home, "tune_small")
    assert len(children) == 3
    for run in children:
        assert run.data.tags["phase"] == "tune"
        assert 0.01 <= float(run.data.params["lr"]) <= 0.1 and run.data.params["batch_size"] in ("64", "128")
    assert len({run.data.params["lr"] for run in children}) == 3
    _rerun_adds_no_trial(args, home)


@pytest.mark.parametrize("prune", [True, False])
def test_reporting_hook_reports_every_epoch_and_prunes_only_when_asked(prune):
    from stn_ablation.study.worker import _reporting_hook
    from stn_ablation.training.train import EpochStats, StopRun

    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.ThresholdPruner(lower=0.5))
    trial = study.ask()
    hook = _reporting_hook(trial, "val_acc", prune=prune)
    hook(EpochStats(1, 1.0, 0.6, 0.6, 0.6, 0.1, 1.0, 1.0), None)  # above the bar: goes on
    low = EpochStats(2, 1.0, 0.3, 0.3, 0.3, 0.1, 1.0, 1.0)
    if prune:
        with pytest.raises(StopRun, match="pruned at epoch 2: val_acc 0.3000"):
            hook(low, None)
    else:
        hook(low, None)  # a grid study's trial runs to the end, its curve still reported
    assert trial.storage.get_trial(trial._trial_id).intermediate_values == {1: 0.6, 2: 0.3}


def test_median_pruning_ends_poor_trials_as_pruned_runs(data_root, tmp_path, capsys):
    """A [search] study with the median pruner: trials whose first-epoch validation accuracy is below the median
    of the finished ones stop early, and their MLflow runs say so (KILLED, status pruned, the epoch and the bar),
    never looking successful; the study counts them as results and a re-run trains nothing more."""
    args, home, summary = _run_inline_study(
        tmp_path, capsys, 'name = "prune_small"\ndescription = "lr search with pruning"\nn_trials = 10\n'
        'sampler = "random"\npruner = "median"\n'
        '[train]\nvariant = "tutorial_cnn"\nepochs = 2\nsubset = 512\nval_size = 500\n'
        '[search.lr]\ntype = "float"\nlow = 1e-4\nhigh = 0.5\nlog = true\n'
        '[robustness]\nimages = 0\n')
    _, children = child_runs(home, "prune_small")
    assert len(children) == 10
    pruned = [r for r in children if r.data.tags["status"] == "pruned"]
    assert pruned, summary
    for run in pruned:
        assert run.info.status == "KILLED"
        epoch = re.match(r"pruned at epoch (\d+): val_acc [\d.]+ is below", run.data.tags["status_reason"])
        assert epoch, run.data.tags["status_reason"]
        assert steps(home, run.info.run_id, "val_acc") == list(range(1, int(epoch[1]) + 1))
        assert "final_test_acc" not in run.data.metrics
    finished = [r for r in children if r.data.tags["status"] == "finished"]
    assert len(finished) + len(pruned) == 10 and all(r.info.status == "FINISHED" for r in finished)
    assert f"{len(pruned)} pruned" in summary
    _rerun_adds_no_trial(args, home)


def test_a_study_over_two_datasets_runs_each_cell_on_its_own_data(data_root, mnist_raw, tmp_path, capsys,
                                                                    monkeypatch):
    """`dataset` as a grid axis, end to end: every cell trains on its dataset (a 400-image prefix of MNIST R, so
    the test generates little), names it in its run, and the report and the parent's summary keep the datasets
    apart."""
    import stn_ablation.study.worker as study_module
    from stn_ablation.data import distorted
    from stn_ablation.tracking.tracker import Tracker

    requested = set()

    def small(name: str, root, download: bool = True, image_size: int | None = None):
        requested.add(name)
        return distorted.load(name, root, download, n=400, cache=tmp_path / "distorted") \
            if name in distorted.DISTORTIONS else mnist_raw
    monkeypatch.setattr(study_module, "load_dataset", small)
    args, home, out = _run_inline_study(
        tmp_path, capsys, 'name = "two_sets"\ndescription = "MNIST and MNIST R"\nmetric = "test_acc"\n'
        '[grid]\ndataset = ["mnist", "mnist_r"]\nvariant = ["tutorial_stn", "tutorial_cnn"]\nseed = [0, 1]\n'
        '[train]\nepochs = 1\nsubset = 256\nval_size = 0\n[robustness]\nimages = 0\n')
    assert "8 finished" in out and requested == {"mnist", "mnist_r"}  # never the default dataset, CIFAR-10
    _, children = child_runs(home, "two_sets")
    by_name = {r.info.run_name: r for r in children}
    assert sorted(by_name) == sorted(f"{v}-s{s}-none{t}-{d}" for d in ("mnist", "mnist_r")
                                     for v, t in (("tutorial_stn", "-affine"), ("tutorial_cnn", "")) for s in (0, 1))
    for name, run in by_name.items():
        dataset = name.split("-")[-1]
        assert run.data.tags["dataset"] == run.data.params["dataset"] == dataset
        assert ("data_generation_seed" in run.data.tags) == (dataset == "mnist_r")
    tracker = Tracker(f"sqlite:///{home / 'mlflow.db'}", home / "mlartifacts")
    loaded = read_study(tracker, "two_sets").study()
    assert [(d, len(part.runs)) for d, part in loaded.per_dataset()] == [("mnist", 4), ("mnist_r", 4)]
    parent = tracker.client.get_run(loaded.parent_id)
    assert {k.rsplit("/", 1)[0] for k in parent.data.metrics if k.startswith("stn_effect_pts/")} == {
        f"stn_effect_pts/{d}/tutorial_stn/affine/none" for d in ("mnist", "mnist_r")}


def test_a_frozen_control_trains_behind_the_stns_mean_learned_transform(data_root, tmp_path, capsys):
    """frozen_control, shrunk: the control cells take the STN cells' mean learned scale and shift as their fixed
    transform (recorded as the run's `frozen` param and `frozen_source` tag), and the report compares the STN with
    its control beside its twin and says which carries the effect."""
    from stn_ablation.reporting.records import read_study
    from stn_ablation.reporting.report import write_report
    from stn_ablation.tracking.tracker import Tracker

    text = (Path(__file__).parent.parent / "studies" / "frozen_control.toml").read_text()
    assert 'aug = ["none", "standard"]' in text and "seed = [0, 1, 2, 3, 4]" in text  # what the shrinking replaces
    study = tmp_path / "frozen_control.toml"
    study.write_text(text.replace('aug = ["none", "standard"]', 'aug = ["none"]')
                     .replace("seed = [0, 1, 2, 3, 4]", "seed = [0, 1]") + "\n[robustness]\nimages = 100\n")
    home = tmp_path / "home"
    assert main(["run", "--study", str(study), "--home", str(home), "--epochs", "1", "--subset", "512",
                 "--device", "cpu"]) == 0
    assert "6 finished" in capsys.readouterr().out
    _, children = child_runs(home, "frozen_control")
    stn = [r for r in children if r.data.tags["variant"] == "tutorial_stn"]
    controls = [r for r in children if r.data.tags["variant"] == "tutorial_cnn+frozen"]
    assert len(stn) == 2 and len(controls) == 2
    scale = sum(r.data.metrics["theta/scale_mean"] for r in stn) / 2
    for run in controls:
        family, numbers = run.data.params["frozen"].split(":")
        assert family == "attention" and abs(float(numbers.split(",")[0]) - scale) < 1e-4
        assert run.data.tags["frozen_of"] == "tutorial_stn" and "loc_lr_mult" not in run.data.params
        assert sorted(run.data.tags["frozen_source"].split(": ")[1].split(", ")) == sorted(r.info.run_id for r in stn)
    tracker = Tracker(f"sqlite:///{home / 'mlflow.db'}", home / "mlartifacts")
    readme = write_report(read_study(tracker, "frozen_control"), tmp_path / "report", "md").read_text()
    assert "| tutorial_stn/affine − tutorial_cnn+frozen | aug none | 2 |" in readme
    assert "**What carries the transformer's effect, tutorial_stn/affine with no augmentation**" in readme
    spec = controls[0].data.params["frozen"]
    assert f"- **tutorial_cnn+frozen, no augmentation**: `{spec}`, the mean learned scale and shift of 2" in readme
    assert "| tutorial_cnn+frozen | none | 2 | 1.0" not in readme  # no row in the learned-transform table


def test_a_study_queued_by_the_previous_version_still_runs_and_keeps_the_seed_out_of_its_parameters(
        data_root, tmp_path, capsys):
    """Trials of a grid study used to carry the seed as a parameter, so optuna-dashboard's importance ranked it
    beside the variant; now it is a user attribute. A store whose cells the previous version queued, one of them
    claimed by a worker since killed, is finished by this one: every cell once, the seed in no new trial's
    parameters."""
    home = tmp_path / "home"
    study = quick_grid(tmp_path / "quick.toml", "quick", "the quick grid, queued by the previous version")
    spec = load_spec(str(study), epochs=1)
    storage, _ = open_storage(None, StateHome.resolve(home), spec.storage_name)
    old = optuna.create_study(study_name=spec.storage_name, storage=storage, direction="maximize")
    for cell in spec.cells():  # what the previous version queued: the whole cell, seed included, as parameters
        old.enqueue_trial(cell, user_attrs={"cell": cell_key(cell)})
    killed = old.ask()
    for axis, value in spec.cells()[0].items():
        killed.suggest_categorical(axis, spec.grid[axis])
    killed.set_user_attr("owner", f"{os.uname().nodename}:999999999:0")  # a worker that is gone

    args = ["run", "--study", str(study), "--home", str(home), "--epochs", "1", "--device", "cpu"]
    assert main(args) == 0
    assert "8 finished" in capsys.readouterr().out
    trials = study_trials(home, spec)
    done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert sorted(t.user_attrs["cell"] for t in done) == sorted(cell_key(c) for c in spec.cells())
    assert [t.state for t in trials if t.number == killed.number] == [optuna.trial.TrialState.FAIL]
    for t in done:  # queued by either version, no finished trial has the seed among the parameters it ranks
        assert "seed" not in t.params and f"seed={t.user_attrs['seed']}" in t.user_attrs["cell"]
    assert len(child_runs(home, "quick")[1]) == 8
