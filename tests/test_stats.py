"""The report's statistics against independent hand computations (numpy and scipy directly)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from stn_ablation.reporting.stats import UNDERPOWERED, holm, mean_ci, paired_t


def test_mean_ci_is_student_t():
    values = [0.61, 0.64, 0.60, 0.66]
    est = mean_ci(values)
    sd = np.std(values, ddof=1)
    assert est.n == 4
    assert est.mean == pytest.approx(np.mean(values), abs=1e-15)
    assert est.sd == pytest.approx(sd, rel=1e-12)
    assert est.half_width == pytest.approx(sps.t.ppf(0.975, 3) * sd / math.sqrt(4), rel=1e-12)
    assert (est.low, est.high) == pytest.approx((est.mean - est.half_width, est.mean + est.half_width))


def test_mean_ci_needs_two_values_for_an_interval():
    one = mean_ci([0.5])
    assert (one.n, one.mean, one.sd, one.half_width, one.low) == (1, 0.5, None, None, None)
    empty = mean_ci([])
    assert empty.n == 0 and math.isnan(empty.mean) and empty.half_width is None


def test_paired_t_matches_scipy():
    a, b = [0.60, 0.62, 0.65, 0.61], [0.58, 0.61, 0.62, 0.60]
    test = paired_t(a, b)
    diffs = np.subtract(a, b)
    assert test.n == 4 and test.tested and test.underpowered == (4 < UNDERPOWERED)
    assert test.p_value == pytest.approx(sps.ttest_rel(a, b).pvalue, rel=1e-12)
    assert test.diff.mean == pytest.approx(diffs.mean(), abs=1e-15)
    assert test.diff.half_width == pytest.approx(sps.t.ppf(0.975, 3) * diffs.std(ddof=1) / 2, rel=1e-12)


@pytest.mark.parametrize("a, b", [([0.6], [0.5]), ([0.6, 0.7], [0.5, 0.6]), ([], []),
                                  ([0.3, 0.4], [0.2, 0.3]), ([0.5, 0.5, 0.5], [0.5, 0.5, 0.5])])
def test_paired_t_without_a_test(a, b):
    """One pair, or differences without spread, give no p-value rather than a misleading one. 0.3 - 0.2 and
    0.4 - 0.3 are both 0.1 but differ in the last bit: rounding, not spread (scipy gives p ~ 1e-16 for them)."""
    test = paired_t(a, b)
    assert test.p_value is None and not test.tested


def test_paired_t_tests_a_spread_of_one_test_image():
    """Differences that vary by one image of a 10,000-image test set are a spread, and are tested."""
    a, b = [0.3001, 0.4], [0.2, 0.3]
    test = paired_t(a, b)
    assert test.tested and test.p_value == pytest.approx(sps.ttest_rel(a, b).pvalue, rel=1e-12)


def test_paired_t_rejects_unpaired_samples():
    with pytest.raises(ValueError):
        paired_t([0.1, 0.2], [0.1])


def test_holm_by_hand():
    p = [0.01, 0.04, 0.03, None, 0.5]
    # m = 4 tests sorted: 0.01, 0.03, 0.04, 0.5 -> 4*0.01, 3*0.03, max(.., 2*0.04), max(.., 1*0.5)
    expected = [0.04, 0.09, 0.09, None, 0.5]
    got = holm(p)
    assert got[3] is None
    assert [g for g in got if g is not None] == pytest.approx([e for e in expected if e is not None])


def test_holm_caps_at_one_and_keeps_order():
    assert holm([0.9, 0.6]) == pytest.approx([1.0, 1.0])
    assert holm([]) == [] and holm([None]) == [None]
    assert holm([0.02]) == pytest.approx([0.02])


def test_holm_skips_a_nan_p_value_and_counts_only_the_finite_ones():
    """A NaN accuracy makes paired_t's p NaN: untestable, so it neither counts in m nor caps the later tests at 1."""
    got = holm([math.nan, 0.001, 0.002, 0.01, None])
    assert math.isnan(got[0]) and got[4] is None
    assert got[1:4] == pytest.approx([3 * 0.001, 2 * 0.002, 0.01])


def test_paired_t_with_a_nan_accuracy_is_not_a_test():
    test = paired_t([math.nan, 0.5, 0.6], [0.4, 0.45, 0.5])
    assert math.isnan(test.p_value) and not test.tested
