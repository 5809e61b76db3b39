"""Evidence that outlives its store: a study's runs file regenerates its report with no MLflow store, imports into
a fresh store whose `run` then trains nothing, and `run` reuses every finished run of the same identity (config,
data, numerics), from any study, so that extending a grid trains only its new cells."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from stn_ablation.cli import main
from stn_ablation.reporting.records import FILE_NAME
from tests.studyutil import child_runs, shrunk_study

SHRINK = ["--epochs", "1", "--subset", "512", "--device", "cpu"]


def run_study(study: Path, home: Path, capsys) -> tuple[list[str], list[str]]:
    """`stn-ablate run` in-process: the cells it trained and the cells it reused, from its summary."""
    assert main(["run", "--study", str(study), "--home", str(home), *SHRINK]) == 0
    lines = capsys.readouterr().out.splitlines()
    return ([line.split()[1] for line in lines if line.rstrip().endswith("trained")],
            [line.split()[1] for line in lines if re.search(r"reused [0-9a-f]{32}$", line)])


def files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def exported(tmp_path_factory, data_root):
    """The shrunk quick study run once, and its report with its runs file; the store is then deleted."""
    tmp = tmp_path_factory.mktemp("exported")
    home, report = tmp / "home", tmp / "report"
    study = shrunk_study(tmp)
    assert main(["run", "--study", str(study), "--home", str(home), *SHRINK]) == 0
    assert main(["report", "--study", "quick", "--home", str(home), "--out", str(report)]) == 0
    shutil.rmtree(home)
    return study, report


def test_a_report_regenerates_byte_for_byte_from_its_runs_file_alone(exported, tmp_path):
    study, report = exported
    again = tmp_path / "again"
    assert main(["report", "--study", "quick", "--runs", str(report / FILE_NAME), "--out", str(again)]) == 0
    assert files(again) == files(report)
    assert len(files(report)) == 7  # README, runs file, three figures, the two transformer pictures
    records = [json.loads(line) for line in (report / FILE_NAME).read_text().splitlines()]
    assert [r["role"] for r in records] == ["parent"] + ["child"] * 8
    child = records[1]
    assert [step for step, _, _ in child["history"]["val_acc"]] == [1]
    assert {"final_test_acc", "robust/rotate/45"} <= set(child["metrics"]) and child["inputs"]
    assert "/" not in json.loads(child["inputs"][0]["source"])["uri"]  # no path of the machine that ran it
    assert "--runs reports/quick/runs.jsonl" in (report / "README.md").read_text()


def test_an_imported_runs_file_is_a_finished_study(exported, tmp_path, capsys):
    study, report = exported
    home = tmp_path / "home"
    assert main(["import", str(report / FILE_NAME), "--home", str(home)]) == 0
    assert main(["import", str(report / FILE_NAME), "--home", str(home)]) == 0
    assert capsys.readouterr().out.splitlines()[-1].endswith(f"0 runs imported, 9 already in sqlite:///{home}/mlflow.db")
    parents, children = child_runs(home, "quick")
    assert len(parents) == 1 and len(children) == 8  # imported twice, held once
    trained, reused = run_study(study, home, capsys)
    assert trained == [] and len(reused) == 8
    assert len(child_runs(home, "quick")[1]) == 8
    assert main(["report", "--study", "quick", "--home", str(home), "--out", str(tmp_path / "from_store")]) == 0
    assert (tmp_path / "from_store" / "README.md").read_bytes() == (report / "README.md").read_bytes()


def test_more_seeds_train_only_the_new_cells_and_another_study_only_what_it_does_not_share(exported, tmp_path,
                                                                                           capsys):
    study, report = exported
    home = tmp_path / "home"
    assert main(["import", str(report / FILE_NAME), "--home", str(home)]) == 0
    more = tmp_path / "more" / "quick.toml"
    more.parent.mkdir()
    more.write_text(study.read_text().replace("seed = [0, 1]", "seed = [0, 1, 2]"))
    trained, reused = run_study(more, home, capsys)
    assert sorted(trained) == sorted(f"variant={v}/aug={a}/seed=2" for v in ("tutorial_stn", "tutorial_cnn")
                                     for a in ("none", "standard"))
    assert len(reused) == 8

    def variant_of(name: str, seeds: str, augs: str, rotate: str = "[-45, 0, 45]") -> Path:
        path = tmp_path / f"{name}.toml"
        path.write_text(study.read_text().replace('name = "quick"', f'name = "{name}"')
                        .replace('variant = ["tutorial_stn", "tutorial_cnn"]', 'variant = ["tutorial_cnn"]')
                        .replace('aug = ["none", "standard"]', f"aug = {augs}").replace("seed = [0, 1]", seeds)
                        .replace("rotate = [-45, 0, 45]", f"rotate = {rotate}"))
        return path

    trained, reused = run_study(variant_of("twins", "seed = [0, 1, 2]", '["none", "affine"]'), home, capsys)
    assert sorted(trained) == [f"variant=tutorial_cnn/aug=affine/seed={s}" for s in range(3)]
    assert sorted(reused) == [f"variant=tutorial_cnn/aug=none/seed={s}" for s in range(3)]

    # Other sweeps: a source whose model is in the store (seed 2, trained here) is evaluated again, not trained;
    # an imported one (seed 1: a runs file holds no model) cannot be, and trains.
    trained, reused = run_study(variant_of("sweeps", "seed = [1, 2]", '["none"]', "[-30, 0, 30]"), home, capsys)
    assert trained == ["variant=tutorial_cnn/aug=none/seed=1"] and reused == ["variant=tutorial_cnn/aug=none/seed=2"]
    copy, = [r for r in child_runs(home, "sweeps")[1] if "stn.reused_from" in r.data.tags]
    assert {"robust/rotate/-30", "robust/rotate/30"} <= set(copy.data.metrics)
    assert "robust/rotate/-45" not in copy.data.metrics and copy.data.tags["stn.reused_from_study"] == "quick"


def test_a_reused_run_outlives_its_deleted_source(exported, tmp_path, capsys):
    study, report = exported
    home = tmp_path / "home"
    assert main(["import", str(report / FILE_NAME), "--home", str(home)]) == 0
    renamed = tmp_path / "renamed.toml"
    renamed.write_text(study.read_text().replace('name = "quick"', 'name = "again"'))
    assert run_study(renamed, home, capsys)[0] == []
    client = MlflowClient(f"sqlite:///{home}/mlflow.db")
    for run in child_runs(home, "quick")[1]:
        client.delete_run(run.info.run_id)
    assert main(["report", "--study", "again", "--home", str(home), "--out", str(tmp_path / "again")]) == 0
    text = (tmp_path / "again" / "README.md").read_text()
    assert "8 of these 8 runs did not train" in text and "| 8 finished |" in text
    (Path(home) / "optuna.journal").unlink()  # a fresh Optuna study: the copies themselves are found, not retrained
    assert run_study(renamed, home, capsys)[0] == []


@pytest.mark.parametrize("mangle, message", [
    (lambda lines: lines[: len(lines) // 2], "child runs where its parent record says 8"),
    (lambda lines: lines[:-1] + [lines[-1][:100]], "line 9 is not a complete record"),
    (lambda lines: [lines[0].replace('"version": 1', '"version": 2')] + lines[1:], "upgrade stn-ablate"),
    (lambda lines: ["{}"] + lines[1:], "is not an stn-ablate runs file"),
])
def test_a_damaged_or_newer_runs_file_is_one_line(exported, tmp_path, capsys, mangle, message):
    study, report = exported
    bad = tmp_path / FILE_NAME
    bad.write_text("\n".join(mangle((report / FILE_NAME).read_text().splitlines())) + "\n")
    for command in (["report", "--study", "quick", "--runs", str(bad), "--out", str(tmp_path / "r")],
                    ["import", str(bad), "--home", str(tmp_path / "home")]):
        assert main(command) == 2
        error = capsys.readouterr().err.strip()
        assert message in error and len(error.splitlines()) == 1, error
    assert not (tmp_path / "r").exists()


def test_the_runs_file_of_another_study_is_refused(exported, tmp_path, capsys):
    _, report = exported
    assert main(["report", "--study", "baseline_vs_stn", "--runs", str(report / FILE_NAME)]) == 2
    assert "holds the runs of study 'quick', not 'baseline_vs_stn'" in capsys.readouterr().err
