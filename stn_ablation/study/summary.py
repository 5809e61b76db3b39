"""The study's summary on its parent run: the one place where the study package reads the report's comparisons,
so that MLflow's runs table shows the report's numbers, computed by the same code."""

from __future__ import annotations

import math

import optuna

from stn_ablation.errors import UsageError
from stn_ablation.reporting.records import read_study
from stn_ablation.reporting.comparisons import comparisons
from stn_ablation.study.spec import StudySpec
from stn_ablation.tracking.tracker import Tracker, metric_key


def study_summary(tracker: Tracker, spec: StudySpec, trials: list[optuna.trial.FrozenTrial]) -> dict[str, float]:
    """The parent run's metrics, so MLflow's runs table answers the headline without the report: trials by status
    and, for each transformer against its twin (on each dataset of a study over several), the mean paired
    difference of final test accuracy in points with its 95% interval (the report's numbers, from the same code)."""
    statuses = [t.user_attrs.get("status", t.state.name.lower()) for t in trials]
    summary = {f"trials_{s}": float(statuses.count(s)) for s in ("finished", "diverged", "pruned", "failed")}
    try:
        study = read_study(tracker, spec.name, pictures=False).study()
    except UsageError:  # runs in several precisions: the report says how to pick one
        return summary
    several = len(study.datasets) > 1
    for c in comparisons(study):
        if not c.of_transformer:
            continue
        name = metric_key(f"stn_effect_pts/{c.dataset + '/' if several else ''}{c.a[0]}/{c.a[1]}")
        d = c.test.diff
        summary.update({f"{name}/mean": _points(d.mean), f"{name}/n": float(c.test.n)})
        if d.half_width is not None:
            summary.update({f"{name}/ci_low": _points(d.low), f"{name}/ci_high": _points(d.high)})
    return {k: v for k, v in summary.items() if math.isfinite(v)}


def _points(fraction: float) -> float:
    """A difference of accuracies in points, rounded to 1e-6: accuracies are exact counts over at most a few ten
    thousand images, so the digits beyond are float noise (-0.10499999999999954 reads -0.105)."""
    return round(100 * fraction, 6)
