"""What a run records, read back as a user of MLflow and Optuna would: dataset inputs, a loadable model, system
metrics, exact accuracies, Optuna's intermediate values; and the integrity of that record: a tuning trial owns its
run, finishing twice logs nothing twice, a resume never changes the numerics, per-class and final accuracy agree."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow.pytorch
import optuna
import pytest
import torch
from mlflow.tracking import MlflowClient

from stn_ablation.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
import stn_ablation.data.distorted as distorted
from stn_ablation.cli import main
from stn_ablation.config import RobustnessConfig, TrainConfig
from stn_ablation.data.datasets import prepare
from stn_ablation.device import AUTOCAST_DTYPES, precision_flag
from stn_ablation.training.evaluate import score
from stn_ablation.paths import StateHome
from stn_ablation.tracking.run import TrackedRun, run_tracked
from stn_ablation.study.storage import open_storage
from stn_ablation.study.spec import StudyFileError, load_spec
from stn_ablation.tracking.tracker import Tracker
from stn_ablation.models.registry import build_model
from stn_ablation.training.train import Hooks, train
from tests.studyutil import child_runs, cli, shrunk_study, study_trials

CPU = torch.device("cpu")
SUBSET, EPOCHS = 256, 2


def _exact(value: float, total: int) -> bool:
    """`value` is correct / total for an integer count, and is the float64 nearest to that fraction."""
    count = round(value * total)
    return value == count / total


@pytest.fixture(scope="module")
def quick(data_root, tmp_path_factory):
    """The quick study, shrunk to seconds, run once for the whole module."""
    tmp = tmp_path_factory.mktemp("quick")
    home = tmp / "home"
    study = shrunk_study(tmp)
    args = ["run", "--study", str(study), "--home", str(home), "--epochs", str(EPOCHS), "--subset", str(SUBSET),
            "--device", "cpu"]
    assert main(args) == 0
    spec = load_spec(str(study), epochs=EPOCHS, subset=SUBSET)
    parents, children = child_runs(home, "quick")
    return {"home": home, "spec": spec, "parent": parents[0], "children": children,
            "client": MlflowClient(f"sqlite:///{home / 'mlflow.db'}")}


def test_every_run_names_its_datasets(quick, small_cifar):
    for run in quick["children"]:
        inputs = {i.tags[0].value: i.dataset for i in run.inputs.dataset_inputs}
        assert set(inputs) == {"train", "validation", "test"}
        assert [inputs[c].name for c in ("train", "validation", "test")] == [
            "cifar10-train", "cifar10-validation", "cifar10-test"]
        profiles = {c: json.loads(d.profile) for c, d in inputs.items()}
        assert profiles["train"]["num_rows"] == SUBSET and profiles["test"]["num_rows"] == 10_000
        assert profiles["test"]["official_release"] == small_cifar.official
        assert inputs["test"].digest == small_cifar.digests["test"]  # the same images give the same digest
    assert len({run.inputs.dataset_inputs[0].dataset.digest for run in quick["children"]}) == 1


def test_logged_model_loads_and_reproduces_the_logged_test_accuracy(quick, cifar_raw, monkeypatch):
    """The logged model is a torch.export program of the trained weights (fp32, eval mode): its weights in the
    suite's module reproduce the run's test accuracy under the run's autocast exactly, and the program computes in
    fp32 what that module computes."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", quick["client"].tracking_uri)
    data = prepare(cifar_raw, CPU, val_size=5000, subset=SUBSET)
    for run in quick["children"][:2]:
        logged = mlflow.pytorch.load_model(f"runs:/{run.info.run_id}/model")
        cfg = TrainConfig().with_overrides(**json.loads(Path(quick["client"].download_artifacts(
            run.info.run_id, "config.json")).read_text()))
        model = build_model(cfg, data.in_shape, data.num_classes)
        model.load_state_dict(logged.state_dict())
        amp = AUTOCAST_DTYPES[precision_flag(run.data.tags["precision"])]
        test = score(model, data.test_x, data.test_y, data.num_classes, 256, amp)
        assert test.accuracy == run.data.metrics["final_test_acc"]
        assert run.data.metrics["final_test_acc"] == quick["client"].get_metric_history(
            run.info.run_id, "test_acc")[-1].value
        with torch.no_grad():
            assert torch.allclose(logged(data.test_x[:64]), model.eval()(data.test_x[:64]), atol=1e-5)


def test_per_class_accuracy_and_final_accuracy_are_one_computation(quick):
    """Per-class accuracies weighted by the 1,000 test images of each class give the final test accuracy exactly
    (they came from one evaluation, under the run's autocast)."""
    for run in quick["children"]:
        local = quick["client"].download_artifacts(run.info.run_id, "per_class_test_acc.json")
        per_class = json.loads(Path(local).read_text())
        assert len(per_class) == 10
        correct = sum(round(acc * 1000) for acc in per_class.values())
        assert correct / 10_000 == run.data.metrics["final_test_acc"]


def test_accuracies_are_exact_decimals_of_counts(quick):
    for run in quick["children"]:
        history = {k: quick["client"].get_metric_history(run.info.run_id, k) for k in ("val_acc", "test_acc")}
        assert all(_exact(m.value, 5000) for m in history["val_acc"])
        assert all(_exact(m.value, 10_000) for m in history["test_acc"])
        assert all(len(repr(m.value)) <= len("0.1234") for m in history["test_acc"])
        assert _exact(run.data.metrics["final_test_acc"], 10_000)


def test_every_run_has_system_metrics(quick):
    for run in quick["children"]:
        assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= set(run.data.metrics)


def test_optuna_study_has_curves_names_and_the_mlflow_ids(quick):
    trials = study_trials(quick["home"], quick["spec"])
    assert len(trials) == 8
    for t in trials:
        assert sorted(t.intermediate_values) == list(range(1, EPOCHS + 1))
        assert t.value == t.intermediate_values[EPOCHS]
    storage, _ = open_storage(None, StateHome(quick["home"]), quick["spec"].storage_name)
    study = optuna.load_study(study_name=quick["spec"].storage_name, storage=storage)
    assert study.metric_names == ["val_acc"]
    assert study.user_attrs["mlflow_parent_run_id"] == quick["parent"].info.run_id
    assert study.user_attrs["mlflow_experiment_id"] == quick["parent"].info.experiment_id


def test_twins_do_not_log_a_localization_rate(quick):
    for run in quick["children"]:
        assert ("loc_lr_mult" in run.data.params) == (run.data.tags["stn"] == "true")


def test_finishing_a_run_twice_logs_each_metric_once(small_cifar, tmp_path, shrink):
    """A worker killed after the final evaluation but before closing the run finishes it again on the re-run; that
    second finish must not add a second value at the same step."""
    data = shrink(small_cifar, 128, 100)
    tracker = Tracker(f"sqlite:///{tmp_path / 'm.db'}", tmp_path / "art")
    experiment = tracker.experiment("twice")
    cfg = TrainConfig(variant="tutorial_cnn", epochs=1, batch_size=64)
    run = TrackedRun(cfg, experiment, key="cell", run_name="r", checkpoint=tmp_path / "c.pt", reuse_finished=True,
                     robustness=RobustnessConfig(rotate=(0, 30), scale=(1.0,), translate=(0,), images=50))
    first, _ = run_tracked(run, data, CPU, tracker)
    again, _ = run_tracked(run, data, CPU, tracker)  # the checkpoint holds every epoch
    assert again == first
    (tmp_path / "c.pt").unlink()  # a finished run whose checkpoint is gone keeps its result: it is not set aside
    assert run_tracked(run, data, CPU, tracker)[0] == first and tracker.client.get_run(first).info.status == "FINISHED"
    for key in tracker.client.get_run(first).data.metrics:
        if key.startswith("system/"):
            continue
        steps = [m.step for m in tracker.client.get_metric_history(first, key)]
        assert len(steps) == len(set(steps)), f"{key} logged twice at one step: {steps}"


@pytest.mark.parametrize("checkpoint", ["gone", "another attempt's"])
def test_a_run_whose_epochs_are_not_in_the_checkpoint_is_not_continued(small_cifar, tmp_path, shrink, checkpoint):
    """An unfinished run whose checkpoint is gone (its machine is, and its runs file was imported) or holds another
    attempt's epochs must not be continued: the new epochs would be spliced onto the old ones. It is closed as
    failed, saying why, and the cell trains in a new run whose history is the new attempt's alone."""
    data = shrink(small_cifar, 128, 100)
    tracker = Tracker(f"sqlite:///{tmp_path / 'm.db'}", tmp_path / "art")
    cfg = TrainConfig(variant="tutorial_cnn", epochs=2, batch_size=64)
    ckpt = tmp_path / "c.pt"
    run = TrackedRun(cfg, tracker.experiment("splice"), key="cell", run_name="r", checkpoint=ckpt,
                     robustness=RobustnessConfig(images=0))

    def interrupt(stats, model):
        raise KeyboardInterrupt  # what a kill does: the run stays open, the checkpoint holds epoch 1

    with pytest.raises(KeyboardInterrupt):
        run_tracked(run, data, CPU, tracker, hooks=[Hooks(on_epoch=interrupt)])
    (old,) = tracker.client.search_runs([run.experiment_id])
    if checkpoint == "gone":
        ckpt.unlink()
    else:
        state = load_checkpoint(ckpt)
        state["history"][0]["train_loss"] += 1e-6
        save_checkpoint(state, ckpt)
    new, result = run_tracked(run, data, CPU, tracker)
    assert new != old.info.run_id
    set_aside = tracker.client.get_run(old.info.run_id).data.tags
    assert set_aside["status"] == "failed" and "are not those of this worker's checkpoint" in set_aside["status_reason"]
    logged = tracker.client.get_metric_history(new, "train_loss")
    assert [(m.step, m.value) for m in logged] == [(s.epoch, s.train_loss) for s in result.history]
    assert tracker.find_run(run.experiment_id, "cell").info.run_id == new


@pytest.mark.parametrize("saved", [{"device": "cpu", "precision": "float32"}, {"device": "cuda", "precision":
                                                                                 "bfloat16"}])
def test_a_resume_that_changes_device_or_precision_is_refused(small_cifar, tmp_path, shrink, saved):
    data = shrink(small_cifar, 128, 100)
    cfg = TrainConfig(variant="tutorial_cnn", epochs=2, batch_size=64)
    ckpt = tmp_path / "run.pt"
    short = cfg.with_overrides(epochs=1)
    train(build_model(short, data.in_shape, data.num_classes), short, data, CPU, checkpoint=ckpt, precision="bf16")
    state = load_checkpoint(ckpt)
    assert state["numerics"] == {"device": "cpu", "precision": "bfloat16"}
    state["config_digest"] = cfg.digest()  # as if this 2-epoch run had been stopped after its first epoch
    state["numerics"] = saved
    save_checkpoint(state, ckpt)
    with pytest.raises(CheckpointError) as error:
        train(build_model(cfg, data.in_shape, data.num_classes), cfg, data, CPU, checkpoint=ckpt, precision="bf16")
    message = str(error.value)
    assert "\n" not in message and f"written on {saved['device']} in {saved['precision']}" in message
    assert f"--device {saved['device']} --precision {precision_flag(saved['precision'])}" in message


def _search_study(tmp_path: Path, n_trials: int) -> Path:
    """A random search over a one-value space: every trial draws the same parameters, the worst case for trials
    that were identified by their parameters."""
    path = tmp_path / "same.toml"
    path.write_text(f'''name = "same"
description = "every trial draws the same parameters"
sampler = "random"
pruner = "none"
n_trials = {n_trials}

[train]
variant = "tutorial_cnn"
epochs = 2
subset = 128

[search.lr]
type = "categorical"
choices = [0.05]

[robustness]
images = 0
''')
    return path


@pytest.mark.parametrize("workers", [1, 2])
def test_tuning_trials_never_share_a_run(data_root, tmp_path, workers):
    """A process killed after its first trial and the same command run again (one worker), or two concurrent
    workers: as many MLflow runs as trials, each with its own full curve."""
    home = tmp_path / "home"
    study = _search_study(tmp_path, 5)
    command = ["run", "--study", str(study), "--device", "cpu", "--workers", str(workers)]
    if workers == 1:
        killed = cli(home, *command, STN_ABLATE_FAULT="between_trials:1")
        assert killed.returncode != 0
        assert len(study_trials(home, load_spec(str(study)))) == 1
    done = cli(home, *command)
    assert done.returncode == 0, done.stderr[-2000:]
    _, children = child_runs(home, "same")
    client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    trials = study_trials(home, load_spec(str(study)))
    assert len(trials) == 5 and all(t.user_attrs["status"] == "finished" for t in trials)
    assert len(children) == 5
    assert sorted(int(r.data.tags["trial"]) for r in children) == [t.number for t in trials]
    for run in children:
        assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "val_acc")) == [1, 2]
        assert len(client.get_metric_history(run.info.run_id, "final_test_acc")) == 1


def test_a_study_without_validation_split_names_its_value_test_acc(data_root, tmp_path, capsys):
    path = tmp_path / "noval.toml"
    body = '''name = "noval"
description = "no validation split"
{metric}
[grid]
seed = [0]

[train]
variant = "tutorial_cnn"
epochs = 1
subset = 128
val_size = 0

[robustness]
images = 0
'''
    path.write_text(body.format(metric=""))
    with pytest.raises(StudyFileError, match='val_size = 0.*metric = "test_acc"'):
        load_spec(str(path))
    path.write_text(body.format(metric='metric = "test_acc"'))
    assert main(["run", "--study", str(path), "--home", str(tmp_path / "home"), "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    summary = captured.out
    assert "test_acc 0." in summary and "val" not in summary.split("):")[1]
    assert "train=" in captured.err and "val=" not in captured.err  # the progress line shows no val=nan
    assert sum(1 for line in summary.splitlines() if "finished" in line) == 2  # the count line and the trial


def test_parent_run_carries_the_study_summary(quick):
    metrics = quick["client"].get_run(quick["parent"].info.run_id).data.metrics
    assert metrics["trials_finished"] == 8 and metrics["trials_failed"] == 0
    children = {(r.data.tags["variant"], r.data.tags["augmentation"], r.data.tags["seed"]): r.data.metrics
                for r in quick["children"]}
    for aug in ("none", "standard"):
        diffs = [children["tutorial_stn", aug, s]["final_test_acc"] - children["tutorial_cnn", aug, s]["final_test_acc"]
                 for s in ("0", "1")]
        name = f"stn_effect_pts/tutorial_stn/affine/{aug}"  # the STN cell names its transform family
        assert metrics[f"{name}/mean"] == pytest.approx(100 * sum(diffs) / 2)
        assert metrics[f"{name}/ci_low"] < metrics[f"{name}/mean"] < metrics[f"{name}/ci_high"]


@pytest.mark.parametrize("deterministic", [True, False])
def test_a_run_records_whether_it_ran_on_deterministic_kernels(small_cifar, tmp_path, shrink, deterministic):
    data = shrink(small_cifar, 64, 50)
    tracker = Tracker(f"sqlite:///{tmp_path / 'm.db'}", tmp_path / "art")
    cfg = TrainConfig(variant="tutorial_cnn", epochs=1, batch_size=64)
    run = TrackedRun(cfg, tracker.experiment("det"), key="cell", run_name="r", checkpoint=tmp_path / "c.pt",
                     robustness=RobustnessConfig(rotate=(0,), scale=(1.0,), translate=(0,), images=20),
                     deterministic=deterministic)
    run_id, _ = run_tracked(run, data, CPU, tracker)
    assert tracker.client.get_run(run_id).data.tags["deterministic"] == str(deterministic).lower()


def _tiny_run(tracker: Tracker, tmp_path: Path, dataset: str, val_size: int = 5000) -> TrackedRun:
    """One epoch of the tutorial CNN with one robustness point: the run's record, not its numbers, is under test."""
    cfg = TrainConfig(variant="tutorial_cnn", dataset=dataset, epochs=1, batch_size=64, val_size=val_size)
    return TrackedRun(cfg, tracker.experiment(dataset), key="cell", run_name="r", checkpoint=tmp_path / "c.pt",
                      reuse_finished=True,
                      robustness=RobustnessConfig(rotate=(0,), scale=(1.0,), translate=(0,), images=20))


def test_a_run_on_a_generated_set_logs_its_generation_record_once(data_root, tmp_path):
    """The artifact reads back as the set's `.generation`; running the same key again (a resumed or
    re-finished run) overwrites it rather than failing or adding a second copy."""
    raw = distorted.load("mnist_r", data_root, download=False, seed=7, n=300, cache=tmp_path / "distorted")
    data = prepare(raw, CPU, val_size=100)
    assert data.generation == raw.generation and raw.generation["seed"] == 7
    tracker = Tracker(f"sqlite:///{tmp_path / 'm.db'}", tmp_path / "art")
    run = _tiny_run(tracker, tmp_path, "mnist_r", val_size=100)
    first, _ = run_tracked(run, data, CPU, tracker)
    again, _ = run_tracked(run, data, CPU, tracker)
    assert again == first
    assert tracker.list_artifacts(first, "data") == ["data/generation.json"]
    logged = Path(tracker.download_artifact(first, "data/generation.json", str(tmp_path)))
    assert json.loads(logged.read_text()) == raw.generation
    tags = tracker.client.get_run(first).data.tags
    assert tags["data_generation_version"] == str(distorted.VERSION) and tags["data_generation_seed"] == "7"


def test_a_run_on_a_plain_set_logs_no_generation_record(small_cifar, tmp_path, shrink):
    data = shrink(small_cifar, 64, 50)
    assert data.generation == {}
    tracker = Tracker(f"sqlite:///{tmp_path / 'm.db'}", tmp_path / "art")
    run_id, _ = run_tracked(_tiny_run(tracker, tmp_path, "cifar10"), data, CPU, tracker)
    assert "config.json" in tracker.list_artifacts(run_id) and "data" not in tracker.list_artifacts(run_id)
    assert not [tag for tag in tracker.client.get_run(run_id).data.tags if tag.startswith("data_generation")]
