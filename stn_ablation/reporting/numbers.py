"""How a report prints a number: percentages, intervals, p-values, durations, "—" for what is missing.

One place, so that a table and the sentence that reads it never print the same number two ways."""

from __future__ import annotations

import math

from stn_ablation.reporting.stats import Estimate


def oneline(text: str, limit: int = 160) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[:limit - 1] + "…"


def x100(x: float | None) -> float | None:
    return None if x is None else 100 * x


def pct(x: float | None) -> str:
    return "—" if x is None or math.isnan(x) else f"{100 * x:.2f}%"


def ci(e: Estimate) -> str:
    if e.half_width is None:
        return f"n={e.n}, no CI"
    return f"±{100 * e.half_width:.2f} ({100 * e.low:.2f}–{100 * e.high:.2f})"


def interval(e: Estimate, scale: float) -> str:
    """e's interval times `scale` (100: points; -100: points of error, so the ends swap), low to high; "—" where
    there is none: n < 2, or NaN bounds from a NaN accuracy."""
    if e.half_width is None or math.isnan(e.half_width):
        return "—"
    low, high = sorted((scale * e.low, scale * e.high))
    return f"{low:+.2f} to {high:+.2f}"


def sd(e: Estimate) -> str:
    return f"{e.mean:.3f}" if e.sd is None else f"{e.mean:.3f} ± {e.sd:.3f}"


def pvalue(p: float | None) -> str:
    """A p-value; "—" where there is none, NaN included (untested: holm leaves a NaN p NaN)."""
    return "—" if p is None or math.isnan(p) else "< 0.0001" if p < 1e-4 else f"{p:.4f}"


def num(x: float | None, spec: str) -> str:
    return "—" if x is None or math.isnan(x) else format(x, spec)


def param(value: str | None) -> str:
    """A searched value, floats to 4 significant digits."""
    try:
        return format(float(value), ".4g") if value and "." in value else value or "—"
    except ValueError:
        return value


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    if seconds < 120:
        return f"{seconds:.1f} s"
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"
