"""The worked example (examples/) run as the README's "Your own classifier" says, from a copy of the folder as a
fresh clone has it, shrunk to CPU seconds: its data script, then `run` and `report` on its study file. The report
must set the user's classifier beside its derived STN with a paired interval and name the classes, and each run must
record its data."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

from mlflow.tracking import MlflowClient

from stn_ablation import cli
from tests.studyutil import child_runs

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _make_vehicles():
    spec = importlib.util.spec_from_file_location("make_vehicles", EXAMPLES / "make_vehicles.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_example_trains_and_reports_a_users_classifier_beside_its_stn(data_root, tmp_path, monkeypatch,
                                                                          capsys):
    clone = tmp_path / "examples"
    clone.mkdir()
    for name in ("my_classifier.py", "my_study.toml"):
        shutil.copy(EXAMPLES / name, clone / name)
    study = clone / "my_study.toml"  # shrunk: two variants, two seeds, 1 epoch on 20 images of each class
    text = study.read_text()
    grid = 'variant = ["small_resnet", "small_resnet+stn", "small_resnet+stn_loc3"]\nseed = [0, 1, 2]'
    assert grid in text, "the example's grid changed; update this test"
    study.write_text(text.replace(grid, 'variant = ["small_resnet", "small_resnet+stn"]\nseed = [0, 1]')
                     .replace("val_size = 40", "val_size = 16"))
    _make_vehicles().write_tree(clone / "data" / "vehicles", str(data_root), train=20, test=8)
    monkeypatch.chdir(tmp_path)  # the README's commands run from the repository's root
    home = str(tmp_path / "home")

    assert cli.main(["run", "--study", "examples/my_study.toml", "--home", home, "--epochs", "1", "--device",
                     "cpu"]) == 0
    assert "4 finished" in capsys.readouterr().out
    assert cli.main(["report", "--study", "examples/my_study.toml", "--home", home, "--out", "report"]) == 0
    report = (tmp_path / "report" / "README.md").read_text()
    assert "stn-ablate run --study examples/my_study.toml && stn-ablate report --study examples/my_study.toml" in report
    assert "| data | folder:examples/data/vehicles: your own data" in report
    effect = next(line for line in report.splitlines() if line.startswith("| small_resnet+stn/affine − small_resnet |"))
    n, difference, interval = effect.split(" | ")[2:5]
    assert n == "2" and " to " in interval, effect  # paired by seed, with its interval
    assert "| class | small_resnet | small_resnet+stn/affine |" in report  # the per-class table, by class name
    assert [line.split(" | ")[0] for line in report.splitlines() if line.startswith(("| airplane", "| truck"))] == [
        "| airplane", "| truck"]

    _, children = child_runs(Path(home), "my_study")
    run = next(r for r in children if r.data.tags["variant"] == "small_resnet+stn")
    assert run.data.tags["twin"] == "small_resnet" and run.data.tags["data_provenance"] == "own data"
    assert run.data.tags["image_width"] == "32" and ") pixels (x, y)" in report  # the transform's shift in pixels
    inputs = {d.dataset.name: d.dataset for d in run.inputs.dataset_inputs}
    test = inputs["folder:examples/data/vehicles-test"]
    assert json.loads(test.source)["uri"] == str(clone / "data" / "vehicles") and len(test.digest) == 16
    per_class = MlflowClient(f"sqlite:///{home}/mlflow.db").download_artifacts(run.info.run_id,
                                                                               "per_class_test_acc.json", str(tmp_path))
    assert sorted(json.loads(Path(per_class).read_text())) == ["airplane", "automobile", "ship", "truck"]
