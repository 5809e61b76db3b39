"""The report's tables and the sentences that say what their numbers mean, computed from a loaded study.

Kept apart from report.py, which reads MLflow and writes files, so the statistics a reader acts on can be read
and tested on their own. Each builder returns a `Table` holding both the strings shown and the raw numbers (for
CSV and tests); every row cites the runs it was computed from. Intervals and tests come from stats.py; nothing
here touches MLflow, the clock or the file system, so the same study always gives the same text."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from stn_ablation.catalog import CATALOG, title
from stn_ablation.config import SWEEP_KINDS
from stn_ablation.reporting.published import PUBLISHED_ERROR, STN_PAPER, published_error
from stn_ablation.reporting.results import Run, Study
from stn_ablation.reporting.stats import (ALPHA, LEVEL, NO_SPREAD, UNDERPOWERED, Estimate, PairedTest, holm, mean_ci,
                                paired_t)

AUG_WORDS = {"none": "no augmentation", "standard": "crop+flip", "affine": "rotate/zoom/shift+flip"}
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


@dataclass(frozen=True)
class Comparison:
    """Treatment cell `a` minus control cell `b` (each (variant, aug)) on final test accuracy, paired by seed, on
    one dataset."""

    label: str
    setting: str
    a: tuple[str, str]
    b: tuple[str, str]
    seeds: list[int]
    test: PairedTest
    holm_p: float | None = None
    dataset: str = ""
    control: str = "twin"  # what `b` is: the STN's twin, its frozen-transform control, or (aug) no augmentation

    @property
    def of_transformer(self) -> bool:
        """An STN against its twin (rather than against its frozen control, or an augmentation against none)."""
        return self.control == "twin"


# -- tables --------------------------------------------------------------------------------------------------------

def main_table(study: Study) -> Table:
    """Per variant x augmentation: finished seeds, test accuracy with its interval, cost, and the runs used."""
    rows, data = [], []
    for (variant, aug), runs in study.cells():
        acc = mean_ci([r.metrics["final_test_acc"] for r in runs])
        best, seconds, speed = (_mean(runs, k) for k in ("best_epoch", "train_seconds", "mean_images_per_s"))
        n_params = sorted({int(r.metrics["n_params"]) for r in runs if "n_params" in r.metrics})
        rows.append([variant, aug, str(acc.n), _pct(acc.mean), _ci(acc), _num(best, ".1f"),
                     "/".join(f"{n:,}" for n in n_params) or "—", _duration(seconds), _num(speed, ",.0f"),
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
    rows = [[v, a, str(s), status, _oneline(why), rid[:8] or "—"] for (v, a, s), status, why, rid in entries]
    data = [{"variant": v, "aug": a, "seed": s, "status": status, "reason": why, "run_id": rid}
            for (v, a, s), status, why, rid in entries]
    return Table("table_not_counted", "Grid cells and runs not counted above",
                 ["variant", "aug", "seed", "status", "reason", "run"], rows, data)


def comparisons(study: Study) -> list[Comparison]:
    """On each dataset: each STN (each of its transforms) vs its no-STN twin (same augmentation), then each
    augmentation vs none (same model), paired by seed; Holm's correction across all of them."""
    found: list[Comparison] = []
    for dataset, part in study.per_dataset():
        cells = dict(part.cells())

        def pair(label: str, setting: str, a: tuple[str, str], b: tuple[str, str], control: str) -> None:
            if a in cells and b in cells:
                acc_a, acc_b = ({r.seed: r.metrics["final_test_acc"] for r in cells[c]} for c in (a, b))
                seeds = sorted(set(acc_a) & set(acc_b))
                found.append(Comparison(label, setting, a, b, seeds,
                                        paired_t([acc_a[s] for s in seeds], [acc_b[s] for s in seeds]),
                                        dataset=dataset, control=control))

        for model in part.models:
            twin = next((r.tags.get("twin") for r in part.runs if r.model == model and r.stn), None)
            frozen = next((r.model for r in part.runs if twin and r.tags.get("frozen_of") == model.split("/")[0]),
                          None)
            for aug in part.augs if twin else ():
                pair(f"{model} − {twin}", f"aug {aug}", (model, aug), (twin, aug), "twin")
                if frozen:
                    pair(f"{model} − {frozen}", f"aug {aug}", (model, aug), (frozen, aug), "frozen")
        for model in part.models:
            for aug in part.augs:
                if aug != "none":
                    pair(f"{aug} − none", model, (model, aug), (model, "none"), "aug")
    adjusted = holm([c.test.p_value for c in found])
    return [dataclasses.replace(c, holm_p=p) for c, p in zip(found, adjusted)]


def effects_table(found: list[Comparison], dataset: str | None = None) -> Table:
    """One row per comparison (those on `dataset` when given): the paired difference, its interval, raw and Holm
    p, and a verdict. The title counts the tests of the whole report, the family Holm corrected across."""
    rows, data = [], []
    for c in found:
        if dataset is not None and c.dataset != dataset:
            continue
        d = c.test.diff
        rows.append([c.label, c.setting, str(c.test.n), _num(_x100(d.mean), "+.2f"),
                     _interval(d, 100),
                     _p(c.test.p_value), _p(c.holm_p), _verdict(c)])
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
                row.append(_num(_x100(est.mean) if est.n else None, ".2f")
                           + (f" ± {100 * est.half_width:.2f}" if est.half_width is not None else ""))
                item.update({f"{d}_n": est.n, f"{d}_error_mean": est.mean if est.n else None,
                             f"{d}_error_ci_half_width": est.half_width})
                if d in cited:
                    published = published_error(d, model, aug)
                    row.append(_num(published, ".1f"))
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
        d, published = c.test.diff, _published_difference(c)
        ours = -100 * d.mean if c.test.n else None
        rows.append([c.label, c.setting, title(c.dataset), str(c.test.n),
                     _num(ours, "+.2f"),
                     _interval(d, -100),
                     _p(c.holm_p), _num(published, "+.1f"), _agreement(c, published)])
        data.append({"comparison": c.label, "setting": c.setting, "dataset": c.dataset, "n": c.test.n,
                     "error_diff_points": ours, "error_diff_ci_half_width": _x100(d.half_width),
                     "holm_p_value": c.holm_p, "published_error_diff_points": published})
    return Table("table_transformer_by_dataset", "The transformer's effect on each dataset (test error, "
                 f"transformer minus twin, in points, paired by seed; {LEVEL:.0%} CI; negative = fewer errors)",
                 ["comparison", "same", "dataset", "n", "error difference", f"{LEVEL:.0%} CI", "Holm p",
                  "paper", "ours vs paper"], rows, data)


def published_claim_sentence(found: list[Comparison]) -> str | None:
    """How often ours has the published sign (the STN paper: every ST-CNN below its CNN on every distortion), and
    how often significantly; None where no comparison has a published difference."""
    cited = [(c, p) for c in found if c.of_transformer and (p := _published_difference(c)) is not None and p != 0]
    if not cited:
        return None
    same = [c for c, p in cited if _sign(-c.test.diff.mean) == _sign(p)]
    agree = [c for c in same if c.test.tested and c.holm_p < ALPHA]
    against = [c for c, p in cited if _sign(-c.test.diff.mean) == -_sign(p) and c.test.tested and c.holm_p < ALPHA]
    zero = [c for c, _ in cited if _sign(c.test.diff.mean) == 0]
    n = max(c.test.n for c, _ in cited)
    text = (f"Of the {len(cited)} transformer-vs-twin comparisons the paper also reports, ours has the paper's "
            f"sign in {len(same)}, significantly (Holm p < {ALPHA}) in {len(agree)}; {len(against)} "
            f"significantly contradict{'s' * (len(against) == 1)} it.")
    if zero:
        text += f" In {len(zero)} ours is 0, which has no sign: it neither agrees nor disagrees."
    if n < UNDERPOWERED:
        text += (f" With {n} seeds per cell (fewer than {UNDERPOWERED}) a difference of a few tenths of a point "
                 "is rarely significant: a same-sign, not significant row is not evidence against the paper.")
    return text


def sign_sentences(found: list[Comparison], study: Study) -> list[str]:
    """For each transformer comparison run on more than one dataset: its error difference on each, and whether
    the sign changes between them (the question a clean-vs-distorted study asks)."""
    sentences = []
    for label, setting in dict.fromkeys((c.label, c.setting) for c in found if c.of_transformer):
        on = [c for d in study.datasets for c in found
              if (c.label, c.setting, c.dataset) == (label, setting, d) and _sign(c.test.diff.mean) is not None]
        if len(on) < 2:
            continue
        signs = {_sign(c.test.diff.mean) for c in on if c.test.tested and c.holm_p < ALPHA}
        points = {_sign(c.test.diff.mean) for c in on}
        each = ", ".join(f"{-100 * c.test.diff.mean:+.2f} on {title(c.dataset)}"
                         + (" (significant)" if c.test.tested and c.holm_p < ALPHA else "") for c in on)
        zero = ", ".join(title(c.dataset) for c in on if _sign(c.test.diff.mean) == 0)
        verdict = ("the sign changes, significantly on both sides" if len(signs) == 2 else
                   "the point estimates change sign" if {-1, 1} <= points else
                   "the sign is the same on every dataset" if not zero else
                   f"it is 0 on {zero}, which has no sign" + ("; the sign is the same on the others" * (points != {0})))
        sentences.append(f"**{label}, {setting}**: error difference in points {each}: {verdict}.")
    return sentences


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
        rows.append([model, aug, str(len(runs))] + [_sd(est[k]) if k in est else "—" for k, _ in shown]
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
            rows.append([variant, aug, str(len(runs))] + [f"{_pct(est[k].mean)} {_ci(est[k])}" for k in SWEEP_KINDS]
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
    many); None for runs that logged no per-class accuracy (those from before it was logged)."""
    classes = sorted({k[len(CLASS_PREFIX):] for r in study.runs for k in r.metrics if k.startswith(CLASS_PREFIX)})
    cells = study.cells()
    if not classes or not cells:
        return None
    several_augs = len({aug for (_, aug), _ in cells}) > 1
    columns = [f"{variant} / {aug}" if several_augs else variant for (variant, aug), _ in cells]
    means = {c: [_mean(runs, CLASS_PREFIX + c) for _, runs in cells] for c in classes}
    return Table("table_classes", "Test accuracy per class (mean over seeds)", ["class", *columns],
                 [[c, *map(_pct, means[c])] for c in classes],
                 [{"class": c, **dict(zip(columns, means[c]))} for c in classes])


def trials_table(study: Study) -> Table:
    """A tuning study's trials ranked by `objective`, the value Optuna maximized, with the searched parameters."""
    searched = sorted({k for r in study.runs for k, v in r.params.items() if study.parent_params.get(f"base.{k}") != v})
    ranked = sorted(study.runs, key=lambda r: (-(objective(r) or -math.inf), r.trial, r.id))
    rows = [[str(r.trial), r.status, _pct(objective(r)), _pct(r.metrics.get("final_test_acc")),
             str(max(r.history.get("val_acc", {}), default="—"))]
            + [_param(r.params.get(k)) for k in searched] + [r.short] for r in ranked]
    data = [{"trial": r.trial, "status": r.status, "val_acc_last_epoch": objective(r),
             "final_test_acc": r.metrics.get("final_test_acc"), **{k: r.params.get(k) for k in searched},
             "run_id": r.id} for r in ranked]
    return Table("table_trials", "Trials ranked by validation accuracy after the last epoch run, the value Optuna "
                 "maximized (a pruned trial: after the epoch it was stopped at)",
                 ["trial", "status", "val acc", "test acc", "epochs run"] + searched + ["run"], rows, data)


def objective(run: Run) -> float | None:
    """What a tuning study maximizes and its report ranks by: validation accuracy after the run's last epoch."""
    history = run.history.get("val_acc", {})
    return run.metrics.get("final_val_acc", history[max(history)] if history else None)


def best_config_table(best: Run) -> Table:
    """A tuning study's best trial's parameters, to copy into a grid study that confirms them with fresh seeds."""
    return Table("table_best_config", "Best trial's config", ["field", "value"],
                 [[k, v] for k, v in sorted(best.params.items())], [dict(sorted(best.params.items()))])


def _mean(runs: list[Run], key: str) -> float | None:
    values = [r.metrics[key] for r in runs if key in r.metrics]
    return math.fsum(values) / len(values) if values else None


# -- words ---------------------------------------------------------------------------------------------------------

def _published_difference(c: Comparison) -> float | None:
    """The paper's error of `c.a` minus that of `c.b` on `c.dataset`, in points; None unless it states both (and the
    comparison is without augmentation, as the paper trained)."""
    a, b = (published_error(c.dataset, *cell) for cell in (c.a, c.b))
    return None if a is None or b is None else round(a - b, 6)


def _sign(x: float) -> int | None:
    """+1, -1, or 0 within float rounding of zero (NO_SPREAD: one test image is 1e-4 of an accuracy); None for NaN
    (no shared seed, or a NaN accuracy). Zero has no sign: it neither agrees nor disagrees with a published one."""
    if math.isnan(x):
        return None
    return 0 if abs(x) <= NO_SPREAD else 1 if x > 0 else -1


def _agreement(c: Comparison, published: float | None) -> str:
    if published is None:
        return "—"
    if not c.test.tested:
        return "no test"
    significant = c.holm_p < ALPHA
    if published == 0:
        return "paper: no difference" + (", ours differs" if significant else "")
    if _sign(c.test.diff.mean) == 0:
        return "ours: no difference, no sign"
    same = _sign(-c.test.diff.mean) == _sign(published)
    return {(True, True): "agrees", (True, False): "same sign, not significant",
            (False, True): "contradicts", (False, False): "opposite sign, not significant"}[same, significant]


def _nan(c: Comparison) -> bool:
    """Whether an accuracy of `c` is NaN (a run that logged one): its mean difference and p are NaN, not numbers."""
    return c.test.n > 0 and math.isnan(c.test.diff.mean)


def _verdict(c: Comparison) -> str:
    if not c.test.tested:
        n = c.test.n
        why = "no shared seed" if n == 0 else "n < 2" if n < 2 else "a NaN accuracy" if _nan(c) else "no spread"
        return f"no test ({why})"
    return ("significant" if c.holm_p < ALPHA else "not significant") + (", underpowered" * c.test.underpowered)


def effect_sentence(c: Comparison) -> str:
    """What a reader can do with one comparison, in words."""
    d, n = c.test.diff, c.test.n
    same_aug = c.a[1] == c.b[1]
    a, b = (c.a[0], c.b[0]) if same_aug else (AUG_WORDS.get(c.a[1], c.a[1]), AUG_WORDS["none"])
    where = f"with {AUG_WORDS.get(c.a[1], c.a[1])}" if same_aug else f"for {c.a[0]}"
    head = f"**{a} vs {b}, {where}** ({n} paired seed{'s' * (n != 1)})"
    if _nan(c):
        return f"{head}: an accuracy is NaN, so the difference is undefined and no test is possible."
    if not c.test.tested:
        why = ("the two cells share no seed, so no test is possible" if n == 0 else "no test is possible" if n < 2
               else "every seed gives the same difference: there is no spread to test")
        return f"{head}: {why}; run at least {UNDERPOWERED} seeds per cell before drawing any conclusion."
    effect = (f"{100 * d.mean:+.2f} points ({LEVEL:.0%} CI {100 * d.low:+.2f} to {100 * d.high:+.2f}, "
              f"Holm p = {_p(c.holm_p)})")
    if c.holm_p < ALPHA:
        better = d.mean > 0
        text = f"{a} minus {b} is {effect}: {'prefer ' + a if better else b + ' is the better choice'} here"
        if c.test.underpowered:
            text += (f"; but with {n} seeds (fewer than {UNDERPOWERED}) the test is underpowered: confirm with more "
                     "seeds before relying on it")
    else:
        text = (f"{a} minus {b} is {effect}, not distinguishable from seed-to-seed noise; differences up to "
                f"{100 * max(abs(d.low), abs(d.high)):.1f} points either way are not ruled out")
        if c.test.underpowered:
            text += (f". With {n} seeds (fewer than {UNDERPOWERED}) the test is underpowered: add seeds before "
                     "concluding")
    return f"{head}: {text}."


def control_sentence(found: list[Comparison], c: Comparison) -> str | None:
    """For an STN against its frozen-transform control `c`: which of the two, the learned transformer or one fixed
    transform of the view, carries the STN's difference from its twin. None without the matching STN − twin test."""
    twin = next((t for t in found if t.of_transformer and (t.dataset, t.a) == (c.dataset, c.a)), None)
    if twin is None or not (twin.test.tested and c.test.tested):
        return None

    def said(t: Comparison) -> str:
        return f"{100 * t.test.diff.mean:+.2f} points (Holm p = {_p(t.holm_p)})"
    head = (f"**What carries the transformer's effect, {c.a[0]} with {AUG_WORDS.get(c.a[1], c.a[1])}**: it differs "
            f"from its twin by {said(twin)} and from its frozen control, the twin behind the STN's mean learned "
            f"transform held fixed, by {said(c)}")
    if c.holm_p < ALPHA and c.test.diff.mean > 0:
        verdict = "the learned, per-image transform adds to what one fixed transform gives"
    elif twin.holm_p < ALPHA and twin.test.diff.mean > 0:
        verdict = ("the fixed transform alone accounts for it as far as these seeds tell: the learned one adds "
                   "nothing measurable over it")
    else:
        verdict = "neither difference is significant after Holm's correction: these seeds cannot say"
    return f"{head}: {verdict}."


def frozen_sentences(study: Study) -> list[str]:
    """Which fixed transform each frozen control's runs trained behind, and where it came from."""
    said = []
    for (model, aug), runs in study.cells():
        if not runs[0].tags.get("frozen_of"):
            continue
        for spec, source in sorted({(r.params.get("frozen", "?"), r.tags.get("frozen_source", "")) for r in runs}):
            origin, _, ids = source.partition(": ")
            short = ", ".join(i[:8] for i in ids.split(", ")) if ids else ""
            said.append(f"**{model}, {AUG_WORDS.get(aug, aug)}**: `{spec}`"
                        + (f", the {origin} ({short})" if origin else ", as the study file sets it")
                        + f"; runs {', '.join(r.short for r in runs)}.")
    return said


def theta_sentence(row: dict[str, Any], dataset: str) -> str:
    """What one row of the transform table means, in words, in its family's terms: scale and rotation where the
    family has them, perspective for projective, control-point displacement and mean offset for tps, and the
    shift of its view for the others."""
    half = (CATALOG[dataset].side if dataset in CATALOG else 32) / 2
    parts = []
    if (s := row.get("scale_mean")) is not None:
        rot = row["rotation_deg_mean"]
        parts.append(f"zooms in (scale {s:.2f}: it looks at about the central {s:.0%} of the image's width)"
                     if s < 0.97 else f"zooms out (scale {s:.2f}: it also sees the zero padding beyond the borders)"
                     if s > 1.03 else f"keeps the scale ({s:.2f})")
        parts.append(f"rotates by {rot:+.1f}°" if abs(rot) >= 3 else f"hardly rotates ({rot:+.1f}°)")
    if (px := row.get("px_mean")) is not None:
        parts.append(f"tilts its view in perspective by ({px:+.3f}, {row['py_mean']:+.3f}) (x, y; 0 for an affine "
                     "map)")
    shift = f"({row['tx_mean'] * half:+.1f}, {row['ty_mean'] * half:+.1f}) pixels (x, y)"
    if (moved := row.get("displacement_mean")) is not None:  # tps: tx, ty are the control points' mean offset
        parts += [f"moves its control points by {moved * half:.1f} pixels on average",
                  f"offsets them by {shift} in the mean (a mean of offsets, not a translation of its view)"]
    else:
        parts.append(f"shifts its view by {shift}")
    dist = row["identity_dist_mean"]
    close = " It stays close to the identity: the transformer barely transforms." if dist < 0.05 else ""
    return (f"**{row['variant']}, {AUG_WORDS.get(row['aug'], row['aug'])}**: on average the transformer "
            f"{', '.join(parts[:-1])} and {parts[-1]}; distance from the identity {dist:.3f}.{close}")


def best_trial_sentence(best: Run, finished: int) -> str:
    """What a tuning study's best trial (of `finished` finished trials) shows, and why its test accuracy is not yet
    an estimate."""
    return (f"Trial {best.trial} (run `{best.id}`) reached the highest validation accuracy after its last epoch "
            f"(the value Optuna maximized), {_pct(objective(best))}, of {finished} finished trials. "
            f"Its test accuracy, {_pct(best.metrics.get('final_test_acc'))}, is "
            f"optimistic because it was picked as the best of {finished}: it is an estimate only after this "
            "config is confirmed with fresh seeds (put the values below in a grid study's `[train]` table with, "
            "e.g., `seed = [1, 2, 3, 4, 5]`).")


# -- formatting numbers --------------------------------------------------------------------------------------------

def _oneline(text: str, limit: int = 160) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[:limit - 1] + "…"


def _x100(x: float | None) -> float | None:
    return None if x is None else 100 * x


def _pct(x: float | None) -> str:
    return "—" if x is None or math.isnan(x) else f"{100 * x:.2f}%"


def _ci(e: Estimate) -> str:
    if e.half_width is None:
        return f"n={e.n}, no CI"
    return f"±{100 * e.half_width:.2f} ({100 * e.low:.2f}–{100 * e.high:.2f})"


def _interval(e: Estimate, scale: float) -> str:
    """e's interval times `scale` (100: points; -100: points of error, so the ends swap), low to high; "—" where
    there is none: n < 2, or NaN bounds from a NaN accuracy."""
    if e.half_width is None or math.isnan(e.half_width):
        return "—"
    low, high = sorted((scale * e.low, scale * e.high))
    return f"{low:+.2f} to {high:+.2f}"


def _sd(e: Estimate) -> str:
    return f"{e.mean:.3f}" if e.sd is None else f"{e.mean:.3f} ± {e.sd:.3f}"


def _p(p: float | None) -> str:
    """A p-value; "—" where there is none, NaN included (untested: holm leaves a NaN p NaN)."""
    return "—" if p is None or math.isnan(p) else "< 0.0001" if p < 1e-4 else f"{p:.4f}"


def _num(x: float | None, spec: str) -> str:
    return "—" if x is None or math.isnan(x) else format(x, spec)


def _param(value: str | None) -> str:
    """A searched value, floats to 4 significant digits."""
    try:
        return format(float(value), ".4g") if value and "." in value else value or "—"
    except ValueError:
        return value


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    if seconds < 120:
        return f"{seconds:.1f} s"
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"
