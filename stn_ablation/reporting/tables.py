"""The report's tables, computed from a loaded study and its comparisons.

Each builder returns a `Table` holding both the strings shown and the raw numbers (for CSV and tests); every row
cites the runs it was computed from. Nothing here touches MLflow, the clock or the file system, so the same study
always gives the same text."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from stn_ablation.catalog import title
from stn_ablation.config import SWEEP_KINDS
from stn_ablation.reporting.comparisons import Comparison, agreement, published_difference, verdict
from stn_ablation.reporting.numbers import ci, duration, interval, num, oneline, param, pct, pvalue, sd, x100
from stn_ablation.reporting.published import PUBLISHED_ERROR, STN_PAPER, published_error
from stn_ablation.reporting.results import Run, Study, objective
from stn_ablation.reporting.stats import LEVEL, mean_ci


# the `theta/*` statistics of every transform family (transforms.Family.describe), in table order; a table shows
# those its rows have: scale to shear for affine and its subsets and projective, px and py for projective's
# perspective, displacement for tps's control points
THETA = (("scale", "scale"), ("rotation_deg", "rotation (°)"), ("shear", "shear"), ("px", "perspective x"),
         ("py", "perspective y"), ("displacement", "control-point shift"), ("tx", "tx"), ("ty", "ty"),
         ("identity_dist", "‖θ−I‖"))


@dataclass(frozen=True)
class Table:
    """A table as shown (`headers`, `rows` of strings) and its raw numbers (`data`, one dict per row: CSV, tests)."""

    name: str  # file stem of its CSV
    title: str
    headers: list[str]
    rows: list[list[str]]
    data: list[dict[str, Any]]


def main_table(study: Study) -> Table:
    """Per variant x augmentation: finished seeds, test accuracy with its interval, cost, and the runs used."""
    rows, data = [], []
    for (variant, aug), runs in study.cells():
        acc = mean_ci([r.metrics["final_test_acc"] for r in runs])
        best, seconds, speed = (_mean(runs, k) for k in ("best_epoch", "train_seconds", "mean_images_per_s"))
        n_params = sorted({int(r.metrics["n_params"]) for r in runs if "n_params" in r.metrics})
        rows.append([variant, aug, str(acc.n), pct(acc.mean), ci(acc), num(best, ".1f"),
                     "/".join(f"{n:,}" for n in n_params) or "—", duration(seconds), num(speed, ",.0f"),
                     ", ".join(f"s{r.seed} {r.short}" for r in runs)])
        data.append({"variant": variant, "aug": aug, "n": acc.n, "test_acc_mean": acc.mean, "test_acc_sd": acc.sd,
                     "test_acc_ci_half_width": acc.half_width, "best_epoch_mean": best,
                     "n_params": n_params[0] if len(n_params) == 1 else None, "train_seconds_mean": seconds,
                     "images_per_s_mean": speed, "seeds": " ".join(str(r.seed) for r in runs),
                     "run_ids": " ".join(r.id for r in runs)})
    return Table("table_main", f"Final test accuracy per variant and augmentation (mean over seeds, {LEVEL:.0%} "
                 "Student-t CI in points)", ["variant", "aug", "n", "test acc", f"{LEVEL:.0%} CI", "best epoch",
                                             "params", "train time", "images/s", "runs (seed id)"], rows, data)


def issues_table(study: Study) -> Table:
    """Every expected grid cell without any run, every run that did not finish, every superseded duplicate."""
    present = {(r.model, r.aug, r.seed) for r in study.runs}
    entries = [(c, "missing", "no run in MLflow for this grid cell", "") for c in study.expected_cells()
               if c not in present]
    entries += [((r.model, r.aug, r.seed), r.status, r.reason, r.id) for r in study.runs
                if r.status != "finished" or "final_test_acc" not in r.metrics]
    entries = [(c, "finished without final_test_acc", "", i) if s == "finished" else (c, s, why, i)
               for c, s, why, i in entries]
    entries += [((r.model, r.aug, r.seed), "superseded", "a newer finished run of this cell is counted", r.id)
                for r in study.superseded]
    order = {m: i for i, m in enumerate(study.models)}, {a: i for i, a in enumerate(study.augs)}
    entries.sort(key=lambda e: (order[0].get(e[0][0], -1), order[1].get(e[0][1], -1), e[0][2], e[1], e[3]))
    rows = [[v, a, str(s), status, oneline(why), rid[:8] or "—"] for (v, a, s), status, why, rid in entries]
    data = [{"variant": v, "aug": a, "seed": s, "status": status, "reason": why, "run_id": rid}
            for (v, a, s), status, why, rid in entries]
    return Table("table_not_counted", "Grid cells and runs not counted above",
                 ["variant", "aug", "seed", "status", "reason", "run"], rows, data)


def effects_table(found: list[Comparison], dataset: str | None = None) -> Table:
    """One row per comparison (those on `dataset` when given): the paired difference, its interval, raw and Holm
    p, and a verdict. The title counts the tests of the whole report, the family Holm corrected across."""
    rows, data = [], []
    for c in found:
        if dataset is not None and c.dataset != dataset:
            continue
        d = c.test.diff
        rows.append([c.label, c.setting, str(c.test.n), num(x100(d.mean), "+.2f"),
                     interval(d, 100),
                     pvalue(c.test.p_value), pvalue(c.holm_p), verdict(c)])
        data.append({"comparison": c.label, "setting": c.setting, "dataset": c.dataset, "n": c.test.n,
                     "seeds": " ".join(map(str, c.seeds)), "diff_mean": d.mean, "diff_ci_half_width": d.half_width,
                     "p_value": c.test.p_value, "holm_p_value": c.holm_p})
    return Table("table_effects", "Ablation effects on final test accuracy (percentage points, paired by seed; "
                 f"Holm-corrected across the {sum(c.test.tested for c in found)} tests of this report)",
                 ["comparison", "same", "n", "difference", f"{LEVEL:.0%} CI", "p", "Holm p", "verdict"], rows, data)


def error_table(study: Study) -> Table:
    """Per model x augmentation, the test error on each dataset of a study whose grid varies it (mean and interval
    over seeds), with the published error beside ours wherever a paper states one for that model and dataset
    (published.py; the paper trained without augmentation, so only the aug-none rows get one)."""
    parts = study.per_dataset()
    cited = {d for d, _ in parts if any(key[0] == d for key in PUBLISHED_ERROR)}
    headers = ["variant", "aug"]
    for d, _ in parts:
        headers += [title(d)] + ([f"{title(d)}, paper"] if d in cited else [])
    rows, data = [], []
    for model in study.models:
        for aug in study.augs:
            cells = {d: dict(part.cells()).get((model, aug), []) for d, part in parts}
            if not any(cells.values()):
                continue
            row, item = [model, aug], {"variant": model, "aug": aug}
            for d, _ in parts:
                est = mean_ci([1 - r.metrics["final_test_acc"] for r in cells[d]])
                row.append(num(x100(est.mean) if est.n else None, ".2f")
                           + (f" ± {100 * est.half_width:.2f}" if est.half_width is not None else ""))
                item.update({f"{d}_n": est.n, f"{d}_error_mean": est.mean if est.n else None,
                             f"{d}_error_ci_half_width": est.half_width})
                if d in cited:
                    published = published_error(d, model, aug)
                    row.append(num(published, ".1f"))
                    item[f"{d}_published_error"] = published
            rows.append(row)
            data.append(item)
    return Table("table_error", f"Test error per dataset (%, mean ± {LEVEL:.0%} Student-t half-width over seeds)"
                 + (f"; paper: {STN_PAPER}" if cited else ""), headers, rows, data)


def transformer_effects_table(found: list[Comparison], study: Study) -> Table:
    """Each transformer against its twin on each dataset, in points of test error (the unit of the STN paper's
    table: negative = the transformer lowers the error), with the published difference where a paper states both
    errors, and whether ours agrees with it. Holm p is the report's, as in each dataset's effects table."""
    order = {d: i for i, d in enumerate(study.datasets)}
    labels = list(dict.fromkeys((c.label, c.setting) for c in found if c.of_transformer))
    ranked = sorted((c for c in found if c.of_transformer),
                    key=lambda c: (labels.index((c.label, c.setting)), order.get(c.dataset, len(order))))
    rows, data = [], []
    for c in ranked:
        d, published = c.test.diff, published_difference(c)
        ours = -100 * d.mean if c.test.n else None
        rows.append([c.label, c.setting, title(c.dataset), str(c.test.n),
                     num(ours, "+.2f"),
                     interval(d, -100),
                     pvalue(c.holm_p), num(published, "+.1f"), agreement(c, published)])
        data.append({"comparison": c.label, "setting": c.setting, "dataset": c.dataset, "n": c.test.n,
                     "error_diff_points": ours, "error_diff_ci_half_width": x100(d.half_width),
                     "holm_p_value": c.holm_p, "published_error_diff_points": published})
    return Table("table_transformer_by_dataset", "The transformer's effect on each dataset (test error, "
                 f"transformer minus twin, in points, paired by seed; {LEVEL:.0%} CI; negative = fewer errors)",
                 ["comparison", "same", "dataset", "n", "error difference", f"{LEVEL:.0%} CI", "Holm p",
                  "paper", "ours vs paper"], rows, data)


def theta_table(study: Study) -> Table | None:
    """Per STN model x augmentation: the learned transform's parts in its family's terms, mean and sd over runs of
    per-run means; a column only where some family has that part ("—" in the rows of the others)."""
    cells = [(cell, [r for r in runs if "theta/identity_dist_mean" in r.metrics]) for cell, runs in study.cells()
             if runs[0].stn]
    cells = [(cell, runs) for cell, runs in cells if runs]
    shown = [(k, label) for k, label in THETA if any(f"theta/{k}_mean" in r.metrics for _, runs in cells for r in runs)]
    rows, data = [], []
    for (model, aug), runs in cells:
        est = {k: mean_ci(values) for k, _ in shown
               if (values := [r.metrics[f"theta/{k}_mean"] for r in runs if f"theta/{k}_mean" in r.metrics])}
        rows.append([model, aug, str(len(runs))] + [sd(est[k]) if k in est else "—" for k, _ in shown]
                    + [", ".join(r.short for r in runs)])
        data.append({"variant": model, "aug": aug, "n": len(runs),
                     **{f"{k}_{s}": getattr(est[k], s) if k in est else None for k, _ in shown
                        for s in ("mean", "sd")}, "run_ids": " ".join(r.id for r in runs)})
    if not rows:
        return None
    return Table("table_theta", "Learned transforms on the test set (mean ± sd over runs of each run's mean)",
                 ["variant", "aug", "n"] + [label for _, label in shown] + ["runs"], rows, data)


def robustness_table(study: Study) -> Table | None:
    """Mean test accuracy over each distortion sweep, per variant x augmentation."""
    rows, data = [], []
    for (variant, aug), runs in study.cells():
        runs = [r for r in runs if any(f"robust/{k}/mean" in r.metrics for k in SWEEP_KINDS)]
        if runs:
            est = {k: mean_ci([r.metrics[f"robust/{k}/mean"] for r in runs if f"robust/{k}/mean" in r.metrics])
                   for k in SWEEP_KINDS}
            rows.append([variant, aug, str(len(runs))] + [f"{pct(est[k].mean)} {ci(est[k])}" for k in SWEEP_KINDS]
                        + [", ".join(r.short for r in runs)])
            data.append({"variant": variant, "aug": aug, "n": len(runs),
                         **{f"{k}_mean": est[k].mean for k in SWEEP_KINDS},
                         **{f"{k}_ci_half_width": est[k].half_width for k in SWEEP_KINDS},
                         "run_ids": " ".join(r.id for r in runs)})
    return Table("table_robustness", f"Mean test accuracy over each distortion sweep ({LEVEL:.0%} Student-t CI in "
                 "points over seeds)", ["variant", "aug", "n"] + [f"{k} sweep" for k in SWEEP_KINDS] + ["runs"], rows,
                 data) if rows else None


CLASS_PREFIX = "class_test_acc/"  # a run's test accuracy on one class, by the class's name (tracking/run.py)


def class_table(study: Study) -> Table | None:
    """Each class's mean test accuracy, by name, per variant x augmentation (a column each, as classes may be
    many); "—" for a cell where some run logged none (runs from before it was logged, reused or imported), so every
    mean is over the cell's seeds; None when no run logged any."""
    classes = sorted({k[len(CLASS_PREFIX):] for r in study.runs for k in r.metrics if k.startswith(CLASS_PREFIX)})
    cells = study.cells()
    if not classes or not cells:
        return None
    several_augs = len({aug for (_, aug), _ in cells}) > 1
    columns = [f"{variant} / {aug}" if several_augs else variant for (variant, aug), _ in cells]
    means = {c: [_mean(runs, CLASS_PREFIX + c) if all(CLASS_PREFIX + c in r.metrics for r in runs) else None
                 for _, runs in cells] for c in classes}
    return Table("table_classes", "Test accuracy per class (mean over seeds)", ["class", *columns],
                 [[c, *map(pct, means[c])] for c in classes],
                 [{"class": c, **dict(zip(columns, means[c]))} for c in classes])


def trials_table(study: Study) -> Table:
    """A tuning study's trials ranked by `objective`, the value Optuna maximized, with the searched parameters."""
    searched = sorted({k for r in study.runs for k, v in r.params.items() if study.parent_params.get(f"base.{k}") != v})
    ranked = sorted(study.runs, key=lambda r: (-(objective(r) or -math.inf), r.trial, r.id))
    rows = [[str(r.trial), r.status, pct(objective(r)), pct(r.metrics.get("final_test_acc")),
             str(max(r.history.get("val_acc", {}), default="—"))]
            + [param(r.params.get(k)) for k in searched] + [r.short] for r in ranked]
    data = [{"trial": r.trial, "status": r.status, "val_acc_last_epoch": objective(r),
             "final_test_acc": r.metrics.get("final_test_acc"), **{k: r.params.get(k) for k in searched},
             "run_id": r.id} for r in ranked]
    return Table("table_trials", "Trials ranked by validation accuracy after the last epoch run, the value Optuna "
                 "maximized (a pruned trial: after the epoch it was stopped at)",
                 ["trial", "status", "val acc", "test acc", "epochs run"] + searched + ["run"], rows, data)


def best_config_table(best: Run) -> Table:
    """A tuning study's best trial's parameters, to copy into a grid study that confirms them with fresh seeds."""
    return Table("table_best_config", "Best trial's config", ["field", "value"],
                 [[k, v] for k, v in sorted(best.params.items())], [dict(sorted(best.params.items()))])


def _mean(runs: list[Run], key: str) -> float | None:
    values = [r.metrics[key] for r in runs if key in r.metrics]
    return math.fsum(values) / len(values) if values else None
