"""The report on fabricated MLflow runs with known numbers: tables against hand computations, nothing dropped,
valid figures, byte-identical output, and the errors a user meets.

One sqlite store per module (creating it takes seconds) holds three studies:
- "fab": grid tutorial_stn/tutorial_cnn x none/standard x seeds 0-3; seeds 0-2 finished everywhere, and on seed 3
  one failed, one diverged, one still running and one missing cell; plus an older study version that must be
  ignored.
- "solo": one seed per cell, so no interval and no test.
- "tunefab": a tuning study of four trials.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import matplotlib.image
import matplotlib.pyplot as plt
import numpy as np
import pytest
from mlflow.entities import Metric, Param
from scipy import stats as sps

from stn_ablation.reporting import report, results
from stn_ablation.config import TrainConfig
from stn_ablation.errors import UsageError
from stn_ablation.reporting.records import read_study
from stn_ablation.reporting.comparisons import Comparison
from stn_ablation.reporting.stats import holm, paired_t
from stn_ablation.tracking.tracker import Tracker

PNG = b"\x89PNG\r\n\x1a\n"
STN = "tutorial_stn/affine"  # the report's name of an STN cell: variant and transform family
ACC = {  # final test accuracy of the finished seeds 0, 1, 2
    (STN, "none"): [0.60, 0.62, 0.65],
    ("tutorial_cnn", "none"): [0.58, 0.59, 0.63],
    (STN, "standard"): [0.70, 0.69, 0.74],
    ("tutorial_cnn", "standard"): [0.66, 0.68, 0.69],
}
SEED3 = {(STN, "none"): "failed", ("tutorial_cnn", "none"): "diverged",
         ("tutorial_cnn", "standard"): None}  # None: still running; tutorial_stn/standard/3 has no run at all
TWIN = {"tutorial_stn": "tutorial_cnn", "paper_stn": "paper_cnn"}


def _parent(tracker: Tracker, study: str, grid: dict[str, str], base: TrainConfig, *, n_trials: int,
            start_time: int | None = None) -> str:
    tags = {"phase": "study", "study": study, "study_digest": f"{study}-d", "optuna_study": f"{study}-d",
            "study_file_sha256": "ab" * 32, "mlflow.note.content": f"A fabricated {study} study."}
    params = {"n_trials": n_trials, "sampler": "tpe", "pruner": "none", "metric": "val_acc",
              **{f"grid.{k}": v for k, v in grid.items()}, **{f"base.{k}": v for k, v in base.as_dict().items()}}
    experiment = tracker.experiment(study)
    if start_time is None:
        return tracker.open_run(experiment, f"study:{study}", study, tags=tags, params=params)
    run = tracker.client.create_run(experiment, start_time=start_time, tags={**tags, "stn.key": f"old:{study}"})
    tracker.end_run(run.info.run_id, "finished")
    return run.info.run_id


def _child(tracker: Tracker, parent: str, study: str, cfg: TrainConfig, trial: int, status: str | None,
           acc: float, picture: Path | None = None, phase: str = "grid", theta: dict[str, float] | None = None,
           val: bool = True, extra_tags: dict[str, str] | None = None) -> str:
    """A trial's run as the runner leaves it, written with few store calls (each costs milliseconds). `theta`: an
    STN's `theta/*_mean` statistics, by default an affine family's; `val=False`: a run without validation split."""
    stn = cfg.variant in TWIN
    tags = {"study": study, "study_digest": f"{study}-d", "phase": phase, "trial": str(trial),
            "cell": f"variant={cfg.variant}/aug={cfg.aug}/seed={cfg.seed}", "variant": cfg.variant,
            "augmentation": cfg.aug, "seed": str(cfg.seed), "dataset": cfg.dataset, "device": "cpu",
            "precision": "bfloat16", "data_provenance": "local copy, md5 differs from official: test_batch",
            "study_file_sha256": "ab" * 32,
            "stn": str(stn).lower(), "mlflow.parentRunId": parent, "git_commit": "c0ffee", "git_dirty": "false",
            **({"twin": TWIN[cfg.variant]} if stn else {}), **(extra_tags or {})}
    run = tracker.client.create_run(tracker.experiment(study), run_name=f"{cfg.variant}-{cfg.aug}-s{cfg.seed}",
                                    tags=tags).info.run_id
    metrics = [Metric(k, v, 0, epoch) for epoch in (1, 2, 3)  # curves that end at the final accuracy
               for k, v in (("val_acc", acc - 0.02 * (3 - epoch) - 0.01), ("test_acc", acc - 0.02 * (3 - epoch)))
               if val or k != "val_acc"]
    if status == "finished":
        final = {"final_test_acc": acc, "best_epoch": 3, "best_val_acc": acc - 0.01, "train_seconds": 30.0 + trial,
                 "mean_images_per_s": 1000.0 + trial, "n_params": 39884 if stn else 31340}
        for kind, values, mid, span in (("rotate", (-45, 0, 45), 0, 45), ("scale", (0.7, 1.0, 1.3), 1, 0.3),
                                        ("translate", (-6, 0, 6), 0, 6)):
            final.update({f"robust/{kind}/{v:g}": acc - 0.1 * abs(v - mid) / span for v in values})
            final[f"robust/{kind}/mean"] = acc - 0.2 / 3
        if stn:
            final.update({f"theta/{k}_mean": v for k, v in (theta or {
                "scale": 0.8 + 0.01 * cfg.seed, "rotation_deg": 1.0, "shear": 0.0, "tx": 0.05, "ty": -0.05,
                "identity_dist": 0.3}).items()})
        metrics += [Metric(k, float(v), 0, 3) for k, v in final.items()]
    params = {k: v for k, v in cfg.as_dict().items() if stn or k not in ("transform", "loc_lr_mult")}  # as runner
    tracker.client.log_batch(run, metrics=metrics, params=[Param(k, str(v)) for k, v in params.items()])
    if status == "finished" and stn and picture is not None:
        tracker.log_artifact(run, picture, "stn")
    if status is not None:
        tracker.end_run(run, status, "" if status == "finished" else f"{status} on purpose")
    return run


def load(tracker: Tracker, name: str, only: str | None = None) -> report.Study:
    return read_study(tracker, name, pictures=False).study(only)


def write(tracker: Tracker, name: str, out: Path, fmt: str) -> Path:
    return report.write_report(read_study(tracker, name), out, fmt, tracker=tracker)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    tracker = Tracker(f"sqlite:///{tmp}/m.db", tmp / "art")
    picture = tmp / "epoch_003.png"
    matplotlib.image.imsave(picture, np.linspace(0, 1, 64 * 32).reshape(64, 32))
    base = TrainConfig(epochs=3, subset=1000)
    runs: dict[tuple[str, str, int], str] = {}

    old = _parent(tracker, "fab", {"variant": "tutorial_stn", "aug": "none", "seed": "0"}, base, n_trials=1,
                  start_time=int(time.time() * 1000) - 60_000)
    _child(tracker, old, "fab", base.with_overrides(seed=9), 99, "finished", 0.99)  # an older version: never counted
    parent = _parent(tracker, "fab", {"variant": "tutorial_stn,tutorial_cnn", "aug": "none,standard",
                                      "seed": "0,1,2,3"}, base, n_trials=16)
    trial = 0
    for (model, aug), accs in ACC.items():
        for seed, acc in enumerate(accs):
            cfg = base.with_overrides(variant=model.split("/")[0], aug=aug, seed=seed)
            runs[model, aug, seed] = _child(tracker, parent, "fab", cfg, trial, "finished", acc, picture)
            trial += 1
    for (model, aug), status in SEED3.items():
        cfg = base.with_overrides(variant=model.split("/")[0], aug=aug, seed=3)
        runs[model, aug, 3] = _child(tracker, parent, "fab", cfg, trial, status, 0.5,  # tagged as runs are now
                                     extra_tags={"device_model": "AMD EPYC, AVX2"})
        trial += 1

    solo = _parent(tracker, "solo", {"variant": "tutorial_stn,tutorial_cnn", "seed": "0"}, base, n_trials=2)
    for i, variant in enumerate(("tutorial_stn", "tutorial_cnn")):
        _child(tracker, solo, "solo", base.with_overrides(variant=variant), i, "finished", 0.6 - 0.1 * i)

    tune = _parent(tracker, "tunefab", {}, base, n_trials=4)
    for i, (lr, status, acc) in enumerate(((0.01, "finished", 0.55), (0.1, "finished", 0.70),
                                           (0.3, "pruned", 0.40), (0.05, "finished", 0.65))):
        _child(tracker, tune, "tunefab", base.with_overrides(lr=lr), i, status, acc, phase="tune")
    out = tmp / "out"
    readme = write(tracker, "fab", out, "md")
    return {"tracker": tracker, "tmp": tmp, "out": out, "readme": readme, "runs": runs, "parent": parent}


@pytest.fixture(scope="module")
def fab(store) -> report.Study:
    return load(store["tracker"], "fab")


def test_main_table_means_and_intervals_match_a_hand_computation(fab, store):
    table = report.main_table(fab)
    assert [(row["variant"], row["aug"]) for row in table.data] == list(sorted(ACC, key=lambda k: (
        (STN, "tutorial_cnn").index(k[0]), ("none", "standard").index(k[1]))))
    text = store["readme"].read_text()
    for row in table.data:
        values = np.array(ACC[row["variant"], row["aug"]])
        half = sps.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values))
        assert row["n"] == 3
        assert row["test_acc_mean"] == pytest.approx(values.mean(), abs=1e-12)
        assert row["test_acc_ci_half_width"] == pytest.approx(half, rel=1e-9)
        assert row["run_ids"].split() == [store["runs"][row["variant"], row["aug"], s] for s in range(3)]
        assert f"{100 * values.mean():.2f}%" in text and f"±{100 * half:.2f}" in text
    assert "99.00%" not in text  # the older study version is not reported


def test_paired_tests_and_holm_match_a_hand_computation(fab):
    found = report.comparisons(fab)
    pairs = [((STN, "none"), ("tutorial_cnn", "none")),
             ((STN, "standard"), ("tutorial_cnn", "standard")),
             ((STN, "standard"), (STN, "none")),
             (("tutorial_cnn", "standard"), ("tutorial_cnn", "none"))]
    assert [(c.a, c.b) for c in found] == pairs
    p = [sps.ttest_rel(ACC[a], ACC[b]).pvalue for a, b in pairs]
    order = np.argsort(p)
    holm, running = [0.0] * 4, 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (4 - rank) * p[i]))
        holm[i] = running
    for c, (a, b), p_i, h_i in zip(found, pairs, p, holm):
        diffs = np.subtract(ACC[a], ACC[b])
        assert c.seeds == [0, 1, 2]
        assert c.test.diff.mean == pytest.approx(diffs.mean(), abs=1e-12)
        assert c.test.diff.half_width == pytest.approx(sps.t.ppf(0.975, 2) * diffs.std(ddof=1) / math.sqrt(3))
        assert c.test.p_value == pytest.approx(p_i, rel=1e-9)
        assert c.holm_p == pytest.approx(h_i, rel=1e-9)
        assert "underpowered" in report.effect_sentence(c)


def test_a_comparison_whose_differences_only_round_apart_says_there_is_no_spread():
    """0.3 - 0.2 and 0.4 - 0.3 differ only by float rounding: the report says why it gives no p-value."""
    c = Comparison("stn vs cnn", "none", ("tutorial_stn", "none"), ("tutorial_cnn", "none"), [0, 1],
                   paired_t([0.3, 0.4], [0.2, 0.3]))
    assert c.test.p_value is None
    assert "every seed gives the same difference: there is no spread to test" in report.effect_sentence(c)


def test_a_nan_accuracy_is_no_test_and_leaves_the_other_tests_their_holm_p():
    """A NaN accuracy makes p NaN: Holm skips it (m counts the other test alone, which keeps its p rather than 1)
    and its row shows no number, no p and no verdict of significance."""
    stn, cnn = [0.70, 0.72, 0.75], [0.66, 0.68, 0.70]
    tests = [paired_t([math.nan, *stn[1:]], cnn), paired_t(stn, cnn)]
    found = [Comparison("stn − cnn", f"aug {aug}", (STN, aug), ("tutorial_cnn", aug), [0, 1, 2], test, holm_p)
             for aug, test, holm_p in zip(("none", "standard"), tests, holm([t.p_value for t in tests]))]
    assert found[1].holm_p == pytest.approx(sps.ttest_rel(stn, cnn).pvalue) and found[1].holm_p < 0.05
    table = report.effects_table(found)
    assert table.rows[0][3:] == ["—", "—", "—", "—", "no test (a NaN accuracy)"]
    assert table.rows[1][-1] == "significant, underpowered" and "the 1 tests of this report" in table.title
    assert "an accuracy is NaN" in report.effect_sentence(found[0])


def test_missing_failed_diverged_and_running_are_listed(fab, store):
    rows = {(r["variant"], r["aug"], r["seed"]): r for r in report.issues_table(fab).data}
    assert rows[STN, "standard", 3]["status"] == "missing"
    assert rows[STN, "none", 3]["status"] == "failed"
    assert rows["tutorial_cnn", "none", 3]["status"] == "diverged"
    assert rows["tutorial_cnn", "standard", 3]["status"] == results.RUNNING
    assert len(rows) == 4
    for key in ((STN, "none", 3), ("tutorial_cnn", "none", 3), ("tutorial_cnn", "standard", 3)):
        assert rows[key]["run_id"] == store["runs"][key]
    text = store["readme"].read_text()
    section = text.split("## Runs not counted")[1].split("##")[0]
    for word in ("missing", "failed on purpose", "diverged on purpose", results.RUNNING):
        assert word in section


def test_readme_header_traces_every_number(store):
    text = store["readme"].read_text()
    assert "stn-ablate run --study fab && stn-ablate report --study fab" in text
    assert f"parent run `{store['parent']}`" in text
    assert "CIFAR-10: **not the official release** (local copy, md5 differs from official: test_batch)" in text
    assert "Older versions of this study" in text
    # runs from before the device_model tag say only the device type; the others name the CPU and its extension
    assert "| device, precision | cpu, bfloat16 (12 runs); cpu, bfloat16 on AMD EPYC, AVX2 (3 runs) |" in text


def test_stn_section_has_transform_statistics_and_pictures(fab, store):
    theta = report.theta_table(fab)
    assert [(r["variant"], r["aug"]) for r in theta.data] == [(STN, "none"), (STN, "standard")]
    assert theta.data[0]["scale_mean"] == pytest.approx(np.mean([0.80, 0.81, 0.82]))
    assert theta.data[0]["scale_sd"] == pytest.approx(np.std([0.80, 0.81, 0.82], ddof=1))
    text = store["readme"].read_text()
    assert "zooms in" in text
    for aug in ("none", "standard"):
        assert f"](stn_tutorial_stn_affine_{aug}_s0.png)" in text


def test_robustness_table(fab):
    rows = report.robustness_table(fab).data
    for row in rows:
        assert row["rotate_mean"] == pytest.approx(np.mean(ACC[row["variant"], row["aug"]]) - 0.2 / 3)


def test_figures_are_valid_pngs_and_logged_to_the_parent(store):
    out = store["out"]
    names = sorted(p.name for p in out.glob("*.png"))
    assert names == ["fig_curves.png", "fig_final.png", "fig_robustness.png", "stn_tutorial_stn_affine_none_s0.png",
                     "stn_tutorial_stn_affine_standard_s0.png"]
    for name in names:
        assert (out / name).read_bytes()[:8] == PNG
        assert matplotlib.image.imread(out / name).ndim == 3
        assert f"]({name})" in store["readme"].read_text()
    assert plt.get_fignums() == []  # every figure was closed
    assert "line style: augmentation (solid none, dashed standard)." in store["readme"].read_text()  # only those run
    logged = {f.path for f in store["tracker"].client.list_artifacts(store["parent"], "report")}
    assert {f"report/{n}" for n in names + ["README.md"]} <= logged


def test_report_is_byte_identical_when_written_twice(store):
    again = store["tmp"] / "again"
    write(store["tracker"], "fab", again, "md")
    first, second = sorted(store["out"].iterdir()), sorted(again.iterdir())
    assert [p.name for p in first] == [p.name for p in second]
    for a, b in zip(first, second):
        assert a.read_bytes() == b.read_bytes(), a.name


@pytest.mark.parametrize("fmt, files", [("latex", ["tables.tex"]),
                                        ("csv", ["table_effects.csv", "table_main.csv", "table_not_counted.csv",
                                                 "table_robustness.csv", "table_theta.csv"])])
def test_latex_and_csv_tables(store, fmt, files):
    out = store["tmp"] / fmt
    write(store["tracker"], "fab", out, fmt)
    assert (out / "README.md").is_file()
    assert sorted(p.name for p in out.iterdir() if p.suffix in (".tex", ".csv")) == files
    if fmt == "latex":
        assert r"\begin{tabular}" in (out / "tables.tex").read_text()
    else:
        import csv

        rows = list(csv.DictReader((out / "table_main.csv").open()))
        assert float(rows[0]["test_acc_mean"]) == pytest.approx(np.mean(ACC[STN, "none"]))


def test_one_seed_gives_no_interval_and_no_test(store):
    text, _ = report.render(load(store["tracker"], "solo"), "md", {})
    assert "n=1, no CI" in text
    assert "no test (n < 2)" in text and "no test is possible" in text


def test_tuning_study_ranks_trials_and_warns_about_the_best(store):
    text = write(store["tracker"], "tunefab", store["tmp"] / "tune", "md").read_text()
    study = load(store["tracker"], "tunefab")
    table = report.trials_table(study)
    assert [row["trial"] for row in table.data] == [1, 3, 0, 2]
    assert "lr" in table.headers and "seed" not in table.headers
    assert "Trial 1 " in text and "fresh seeds" in text
    assert "## Ablation effects" not in text
    assert (store["tmp"] / "tune" / "fig_trials.png").read_bytes()[:8] == PNG


def test_unknown_study_is_a_usage_error(store):
    with pytest.raises(UsageError, match="stn-ablate run --study nope"):
        write(store["tracker"], "nope", store["tmp"] / "nope", "md")


def test_best_trial_is_the_one_optuna_maximized(store):
    """Optuna maximizes validation accuracy after the last epoch; the report ranks by the same number, not by the
    best epoch's (trial 0 peaked higher at epoch 1 and then fell)."""
    tracker, base = store["tracker"], TrainConfig(epochs=2)
    parent = _parent(tracker, "peak", {}, base, n_trials=2)
    for trial, (peak, last) in enumerate(((0.80, 0.50), (0.70, 0.65))):
        run = _child(tracker, parent, "peak", base.with_overrides(lr=0.01 * (trial + 1)), trial, None, last,
                     phase="tune")
        tracker.client.log_batch(run, metrics=[
            Metric("val_acc", peak, 0, 1), Metric("val_acc", last, 0, 2), Metric("best_val_acc", peak, 0, 2),
            Metric("final_val_acc", last, 0, 2), Metric("final_test_acc", last, 0, 2)])
        tracker.end_run(run, "finished")
    study = load(tracker, "peak")
    assert [row["trial"] for row in report.trials_table(study).data] == [1, 0]
    text, _ = report.render(study, "md", {})
    assert "Trial 1 " in text and "65.00%" in text and "the value Optuna maximized" in text


def test_runs_of_different_precision_are_not_pooled(store):
    """A cell mean over bf16 and fp32 runs would mix two numerics: refused in one line, or reported one at a time."""
    tracker, base = store["tracker"], TrainConfig(epochs=3)
    parent = _parent(tracker, "mixed", {"variant": "tutorial_cnn", "seed": "0,1"}, base, n_trials=2)
    for seed, precision in ((0, "bfloat16"), (1, "float32")):
        run = _child(tracker, parent, "mixed", base.with_overrides(variant="tutorial_cnn", seed=seed), seed,
                     "finished", 0.6)
        tracker.set_tags(run, {"precision": precision})
    with pytest.raises(UsageError) as error:
        load(tracker, "mixed")
    message = str(error.value)
    assert "\n" not in message and "cpu/bfloat16: 1" in message and "cpu/float32: 1" in message
    assert "--numerics" in message
    only = load(tracker, "mixed", only="cpu/float32")
    assert [r.seed for r in only.runs] == [1] and only.runs[0].tags["precision"] == "float32"


def test_a_study_without_validation_split_says_how_its_best_epoch_was_chosen(store):
    tracker, base = store["tracker"], TrainConfig(epochs=3, val_size=0)
    parent = _parent(tracker, "noval", {"variant": "tutorial_cnn", "seed": "0"}, base, n_trials=1)
    _child(tracker, parent, "noval", base.with_overrides(variant="tutorial_cnn"), 0, "finished", 0.6, val=False)
    text, _ = report.render(load(tracker, "noval"), "md", {})
    assert "best epoch is by training accuracy: these runs had no validation split" in text
    fab, _ = report.render(load(tracker, "solo"), "md", {})
    assert "best epoch is by validation accuracy." in fab


def test_each_transform_is_its_own_cell_paired_with_the_one_twin(store):
    """A grid over transform families: each family of tutorial_stn is a cell of its own, compared with the one
    tutorial_cnn cell (which has no transform), and the transform section describes each family in its own
    terms: projective's perspective, tps's control-point shift, affine's scale and rotation."""
    tracker, base = store["tracker"], TrainConfig(epochs=3)
    families = ("affine", "projective", "tps")
    parent = _parent(tracker, "families", {"variant": "tutorial_stn,tutorial_cnn", "transform": ",".join(families),
                                           "seed": "0,1"}, base, n_trials=8)
    theta = {"affine": None,
             "projective": {"scale": 0.9, "rotation_deg": 0.0, "shear": 0.0, "px": 0.02, "py": -0.01, "tx": 0.0,
                            "ty": 0.0, "identity_dist": 0.2},
             "tps": {"displacement": 0.1, "tx": 0.02, "ty": 0.0, "identity_dist": 0.5}}
    trial = 0
    for seed in (0, 1):
        _child(tracker, parent, "families", base.with_overrides(variant="tutorial_cnn", seed=seed), trial,
               "finished", 0.5 + 0.01 * seed)
        for i, family in enumerate(families):
            trial += 1
            if (family, seed) != ("tps", 1):  # one missing cell
                cfg = base.with_overrides(transform=family, seed=seed)
                _child(tracker, parent, "families", cfg, trial, "finished", 0.6 + 0.05 * i + 0.01 * seed * i,
                       theta=theta[family])
    study = load(tracker, "families")
    assert study.models == ["tutorial_stn/affine", "tutorial_stn/projective", "tutorial_stn/tps", "tutorial_cnn"]
    assert [(c.a, c.b) for c in report.comparisons(study)] == [
        ((f"tutorial_stn/{f}", "none"), ("tutorial_cnn", "none")) for f in families]
    assert len(study.expected_cells()) == 8
    assert [r["status"] for r in report.issues_table(study).data] == ["missing"]
    assert report.issues_table(study).data[0]["variant"] == "tutorial_stn/tps"

    table = report.theta_table(study)
    assert table.headers[3:-1] == ["scale", "rotation (°)", "shear", "perspective x", "perspective y",
                                   "control-point shift", "tx", "ty", "‖θ−I‖"]
    rows = {row["variant"]: row for row in table.data}
    assert rows["tutorial_stn/tps"]["scale_mean"] is None and rows["tutorial_stn/affine"]["px_mean"] is None
    assert table.rows[2][3] == "—" and rows["tutorial_stn/tps"]["displacement_mean"] == pytest.approx(0.1)
    words = {m: report.theta_sentence(rows[m], 32) for m in rows}
    assert "zooms in" in words["tutorial_stn/affine"] and "perspective" not in words["tutorial_stn/affine"]
    assert "perspective by (+0.020, -0.010)" in words["tutorial_stn/projective"]
    assert "control points by 1.6 pixels" in words["tutorial_stn/tps"] and "zoom" not in words["tutorial_stn/tps"]
    # own data of another size: pixels of its own width (its runs' image_width tag); half-widths where unknown
    assert "control points by 6.4 pixels" in report.theta_sentence(rows["tutorial_stn/tps"], 128)
    assert "control points by 0.100 half-widths" in report.theta_sentence(rows["tutorial_stn/tps"], None)
    # tps's tx, ty are its control points' mean offset: no shift of the view, as affine's and projective's are
    assert "offsets them by (+0.3, +0.0) pixels (x, y) in the mean" in words["tutorial_stn/tps"]
    assert "shifts its view" not in words["tutorial_stn/tps"] and "shifts its view" in words["tutorial_stn/affine"]
    text, _ = report.render(study, "md", {})
    assert "tutorial_stn/projective − tutorial_cnn" in text
    assert "for tps they are the control points' mean offset, not a translation" in text


def test_an_affine_only_study_keeps_the_affine_columns(fab):
    assert report.theta_table(fab).headers[3:-1] == ["scale", "rotation (°)", "shear", "tx", "ty", "‖θ−I‖"]


PAPER_ACC = {  # final test accuracy, seeds 0-2, of a fabricated two-dataset paper_mnist
    ("mnist_r", "paper_stn/affine"): [0.993, 0.992, 0.994], ("mnist_r", "paper_cnn"): [0.988, 0.986, 0.990],
    ("mnist_p", "paper_stn/affine"): [0.984, 0.985, 0.983], ("mnist_p", "paper_cnn"): [0.986, 0.984, 0.987],
}


def test_a_dataset_not_yet_run_lists_its_cells_by_transform(store):
    """A study run in pieces: the second dataset has no run yet, so its missing cells take their transformer
    families from the first dataset's runs (paper_stn/affine), not the bare variant name."""
    tracker, base = store["tracker"], TrainConfig(epochs=3, aug="none", val_size=0)
    parent = _parent(tracker, "pieces", {"dataset": "mnist_r,mnist_p", "variant": "paper_stn,paper_cnn",
                                         "transform": "affine", "seed": "0,1,2"}, base, n_trials=12)
    for trial, model in enumerate(("paper_stn/affine", "paper_cnn")):
        for seed, acc in enumerate(PAPER_ACC["mnist_r", model]):
            cfg = base.with_overrides(dataset="mnist_r", variant=model.split("/")[0], seed=seed)
            _child(tracker, parent, "pieces", cfg, 3 * trial + seed, "finished", acc, val=False)
    parts = dict(load(tracker, "pieces").per_dataset())
    assert report.issues_table(parts["mnist_r"]).rows == []
    missing = [(row["variant"], row["seed"], row["status"]) for row in report.issues_table(parts["mnist_p"]).data]
    assert missing == [(m, s, "missing") for m in ("paper_stn/affine", "paper_cnn") for s in (0, 1, 2)]
    text, _ = report.render(load(tracker, "pieces"), "md", {})
    not_run = text.split("## MNIST P (`mnist_p`)")[1]
    assert not_run.startswith("\n\n### What the transformer did\n\nNo run has finished yet.\n")


def test_a_difference_of_zero_has_no_sign_and_no_shared_seed_shows_no_number():
    """Ours exactly 0 (seeds that cancel) neither agrees nor disagrees with the paper; a comparison whose cells
    share no seed has no difference at all: it prints none (not +nan) and says why."""
    cells, stn = (("paper_stn/affine", "none"), ("paper_cnn", "none")), [0.993, 0.992, 0.994]
    tests = {"mnist_r": paired_t([0.99, 0.98, 0.985], [0.98, 0.99, 0.985]), "mnist_p": paired_t(stn, [0.988] * 3),
             "mnist_e": paired_t([], [])}
    adjusted = holm([t.p_value for t in tests.values()])
    found = [Comparison("paper_stn/affine − paper_cnn", "aug none", *cells, [0, 1, 2] * (d != "mnist_e"), test,
                        holm_p, d) for (d, test), holm_p in zip(tests.items(), adjusted)]
    assert found[0].test.diff.mean == 0 and found[0].test.tested
    study = results.Study("zero", "p", {}, {}, None, [], [], [], [], {"dataset": list(tests)}, "grid")
    effects = report.transformer_effects_table(found, study)
    assert [row[-1] for row in effects.rows] == ["ours: no difference, no sign", "agrees", "no test"]
    assert effects.rows[2][4:7] == ["—", "—", "—"]
    claim = report.published_claim_sentence(found)
    assert "ours has the paper's sign in 1," in claim and "In 1 ours is 0, which has no sign" in claim
    assert report.sign_sentences(found, study)[0].endswith(
        "it is 0 on MNIST R, which has no sign; the sign is the same on the others.")
    row = report.effects_table(found, "mnist_e").rows[0]
    assert row[3:5] == ["—", "—"] and row[-1] == "no test (no shared seed)" and "nan" not in " ".join(row)
    assert "the two cells share no seed" in report.effect_sentence(found[2])


def test_a_study_over_datasets_reports_each_and_sets_ours_beside_the_paper(store, tmp_path):
    """dataset as a grid axis: each dataset's cells, tests and figures are its own (never pooled), Holm corrects
    across the whole report, and the error table and transformer table set ours beside the STN paper's Table 1."""
    tracker, base = store["tracker"], TrainConfig(epochs=3, aug="none", val_size=0)
    parent = _parent(tracker, "paperfab", {"dataset": "mnist_r,mnist_p", "variant": "paper_stn,paper_cnn",
                                           "transform": "affine", "seed": "0,1,2"}, base, n_trials=12)
    for trial, ((dataset, model), accs) in enumerate(PAPER_ACC.items()):
        for seed, acc in enumerate(accs):
            cfg = base.with_overrides(dataset=dataset, variant=model.split("/")[0], seed=seed)
            _child(tracker, parent, "paperfab", cfg, 3 * trial + seed, "finished", acc, val=False,
                   extra_tags={"data_generation_version": "1", "data_generation_seed": "0"})
    study = load(tracker, "paperfab")
    assert study.datasets == ["mnist_r", "mnist_p"]
    parts = dict(study.per_dataset())
    assert [(cell, len(runs)) for cell, runs in parts["mnist_p"].cells()] == [
        (("paper_stn/affine", "none"), 3), (("paper_cnn", "none"), 3)]
    assert report.issues_table(parts["mnist_r"]).rows == []

    found = report.comparisons(study)
    assert [(c.dataset, c.a[0], c.b[0]) for c in found] == [("mnist_r", "paper_stn/affine", "paper_cnn"),
                                                           ("mnist_p", "paper_stn/affine", "paper_cnn")]
    p = [sps.ttest_rel(PAPER_ACC[d, "paper_stn/affine"], PAPER_ACC[d, "paper_cnn"]).pvalue
         for d in ("mnist_r", "mnist_p")]
    assert [c.holm_p for c in found] == pytest.approx([min(1, 2 * min(p)), max(min(1, 2 * min(p)), max(p))])

    errors = {row["variant"]: row for row in report.error_table(study).data}
    for (dataset, model), accs in PAPER_ACC.items():
        assert errors[model][f"{dataset}_error_mean"] == pytest.approx(1 - np.mean(accs), abs=1e-12)
        assert errors[model][f"{dataset}_n"] == 3
    assert [errors["paper_stn/affine"]["mnist_r_published_error"], errors["paper_cnn"]["mnist_p_published_error"]] \
        == [0.7, 1.5]

    effects = report.transformer_effects_table(found, study)
    for row, c, published in zip(effects.data, found, (-0.5, -0.7)):
        diffs = np.subtract(PAPER_ACC[c.dataset, "paper_stn/affine"], PAPER_ACC[c.dataset, "paper_cnn"])
        assert row["error_diff_points"] == pytest.approx(-100 * diffs.mean(), abs=1e-9)
        assert row["published_error_diff_points"] == pytest.approx(published)
    assert [r[-1] for r in effects.rows] == [
        "agrees" if found[0].holm_p < 0.05 else "same sign, not significant", "opposite sign, not significant"]
    assert "ours has the paper's sign in 1" in report.published_claim_sentence(found)

    out = tmp_path / "paperfab"
    text = write(tracker, "paperfab", out, "csv").read_text()
    config = next(line for line in text.splitlines() if line.startswith("| base config |"))
    assert "epochs=3" in config and "dataset=" not in config and "variant=" not in config  # the grid's axes
    assert ("MNIST R, MNIST P, generated by `stn_ablation/data/distorted.py` (version 1, seed 0; each run's "
            "`data/generation.json` holds the full record) from **not the official release**") in text
    for heading in ("## Across datasets", "## MNIST R (`mnist_r`)", "## MNIST P (`mnist_p`)",
                    "### Final test accuracy", "### Ablation effects"):
        assert heading in text
    assert text.index("## MNIST R") < text.index("## MNIST P") < text.index("\n## Runs\n")
    data = text.split("## Generated data")[1].split("## Across datasets")[0]  # the sets and the choices made
    assert "- MNIST R: 28 x 28 canvas, rts family, rotation_deg [-90.0, 90.0]." in data
    assert "- P: the forward map is exact" in data and "- E: the offsets" not in data  # only this study's sets
    assert ("The paper trained for 150,000 iterations of SGD at batch 256, base learning rate 0.01 divided by 10 "
            "every 50,000 iterations; these runs for 3 epochs at batch 128, learning rate 0.05 (onecycle schedule), "
            "the localization net at 0.1x that rate") in data and "10x lower" not in data
    files = {p.name for p in out.iterdir()}
    assert {"fig_datasets.png", "fig_final_mnist_r.png", "fig_final_mnist_p.png", "table_error.csv",
            "table_transformer_by_dataset.csv", "table_main_mnist_r.csv", "table_effects_mnist_p.csv"} <= files
    assert "table_main.csv" not in files and "fig_final.png" not in files
    assert "crosses are the published errors" in text
    for name in ("fig_datasets.png", "fig_final_mnist_p.png"):
        assert (out / name).read_bytes().startswith(PNG) and f"({name})" in text
