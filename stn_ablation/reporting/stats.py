"""The statistics a report states: means with Student-t confidence intervals over seeds, paired t-tests between
two arms run on the same seeds, and Holm's correction across every test of one report. Pure numbers in, numbers
out: nothing here knows about MLflow, variants or formatting, so each formula can be checked by hand."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

LEVEL = 0.95  # confidence level of every interval in a report
ALPHA = 0.05  # family-wise error rate the Holm correction controls
UNDERPOWERED = 5  # fewer paired seeds than this: a test runs, but its verdict is called underpowered
# Differences whose standard deviation is at most this fraction of the largest input are "without spread": float
# rounding of a - b alone leaves a spread of about 1e-16 of the inputs (0.4 - 0.3 and 0.3 - 0.2 differ by 6e-17),
# while one test image more or less is 1e-4 of an accuracy. Between them, a t statistic is rounding divided by
# rounding: any p-value it gives is noise.
NO_SPREAD = 1e-12


@dataclass(frozen=True)
class Estimate:
    """Mean of n values and the half-width of its confidence interval (None when n < 2: no spread to use)."""

    n: int
    mean: float
    sd: float | None  # sample standard deviation (ddof=1); None when n < 2
    half_width: float | None

    @property
    def low(self) -> float | None:
        return None if self.half_width is None else self.mean - self.half_width

    @property
    def high(self) -> float | None:
        return None if self.half_width is None else self.mean + self.half_width


def mean_ci(values: Sequence[float], level: float = LEVEL) -> Estimate:
    """Mean and Student-t interval: mean +- t_{(1+level)/2, n-1} * sd / sqrt(n). Empty input gives n=0, mean NaN."""
    from scipy import stats

    xs = [float(v) for v in values]
    n = len(xs)
    if n == 0:
        return Estimate(0, math.nan, None, None)
    mean = math.fsum(xs) / n
    if n < 2:
        return Estimate(1, mean, None, None)
    sd = math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (n - 1))
    half = float(stats.t.ppf((1 + level) / 2, n - 1)) * sd / math.sqrt(n)
    return Estimate(n, mean, sd, half)


@dataclass(frozen=True)
class PairedTest:
    """Mean of the paired differences a - b with its interval and the two-sided paired t-test's p-value.

    `p_value` is None when no test is possible: fewer than two pairs, or differences without spread beyond float
    rounding (see NO_SPREAD: then the t statistic is 0/0, infinite or rounding noise, nothing a reader should
    trust). It is NaN where an accuracy is NaN: that pair is untestable too, so `tested` is false for it."""

    n: int
    diff: Estimate
    p_value: float | None

    @property
    def tested(self) -> bool:
        return self.p_value is not None and math.isfinite(self.p_value)

    @property
    def underpowered(self) -> bool:
        return self.n < UNDERPOWERED


def paired_t(a: Sequence[float], b: Sequence[float], level: float = LEVEL) -> PairedTest:
    """Paired t-test of a against b, position i of each being the same seed (scipy.stats.ttest_rel)."""
    from scipy import stats

    if len(a) != len(b):
        raise ValueError(f"paired samples differ in length: {len(a)} vs {len(b)}")
    diffs = [float(x) - float(y) for x, y in zip(a, b)]
    diff = mean_ci(diffs, level)
    scale = max((abs(float(v)) for v in (*a, *b)), default=0.0)
    if diff.sd is None or diff.sd <= NO_SPREAD * scale:
        return PairedTest(len(diffs), diff, None)
    return PairedTest(len(diffs), diff, float(stats.ttest_rel(a, b).pvalue))


def holm(p_values: Sequence[float | None]) -> list[float | None]:
    """Holm-Bonferroni adjusted p-values, in the input order; None entries (no test) are skipped and not counted.
    So are non-finite ones (a NaN accuracy gives p = NaN): adjusted NaN, as sorting one in would make
    min(1, NaN) = 1 the running maximum and every later test not significant.

    With m tests sorted p_(1) <= ... <= p_(m): adjusted p_(i) = max over j <= i of min(1, (m - j + 1) * p_(j)).
    Rejecting where adjusted p < ALPHA keeps the chance of any false positive in the report below ALPHA."""
    tested = sorted((p, i) for i, p in enumerate(p_values) if p is not None and math.isfinite(p))
    m = len(tested)
    adjusted: list[float | None] = [None if p is None else math.nan for p in p_values]
    running = 0.0
    for rank, (p, i) in enumerate(tested):
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[i] = running
    return adjusted
