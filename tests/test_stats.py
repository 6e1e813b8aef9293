"""Verdicts: Welch's t-test against a textbook value and SciPy, Holm's adjustment, words."""

from __future__ import annotations

import math

import pytest

from dyntemp import stats


def test_welch_matches_scipy_and_a_hand_computation():
    from scipy import stats as scipy_stats

    a, b = [34.1, 34.5, 34.6], [32.0, 33.5, 33.0]
    gap = stats.difference(a, b)
    expected = scipy_stats.ttest_ind(a, b, equal_var=False)
    assert gap["t"] == pytest.approx(expected.statistic, rel=1e-12)
    assert gap["p_value"] == pytest.approx(expected.pvalue, rel=1e-9)
    # by hand: means 34.4 and 32.8333, variances 0.07 and 0.58333
    assert gap["difference"] == pytest.approx(34.4 - 32.8333333, abs=1e-6)
    assert gap["standard_error"] == pytest.approx(math.sqrt(0.07 / 3 + 0.5833333 / 3), rel=1e-6)
    va, vb = 0.07 / 3, 0.5833333 / 3
    assert gap["df"] == pytest.approx((va + vb) ** 2 / (va**2 / 2 + vb**2 / 2), rel=1e-5)


def test_the_p_value_of_t_zero_is_one_and_large_t_is_small():
    assert stats.two_sided_p(0.0, 4.0) == pytest.approx(1.0)
    assert stats.two_sided_p(2.776, 4.0) == pytest.approx(0.05, abs=1e-3)  # t table, df 4
    assert stats.two_sided_p(-2.776, 4.0) == stats.two_sided_p(2.776, 4.0)


def test_no_test_without_two_seeds_or_spread():
    assert math.isnan(stats.difference([1.0], [2.0, 3.0])["p_value"])
    flat = stats.difference([1.0, 1.0], [1.0, 1.0])
    assert flat["standard_error"] == 0 and math.isnan(flat["p_value"])
    assert "not tested (1 vs 2 seeds" in stats.verdict(stats.difference([1.0], [2.0, 3.0]))
    said = stats.verdict(flat)
    assert "not tested (2 vs 2 seeds, all equal on each side: no spread)" in said
    assert "two on each side" not in said


def test_holm_against_a_worked_example():
    # p = 0.01, 0.04, 0.03, 0.005 -> sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1
    adjusted = stats.holm([0.01, 0.04, 0.03, 0.005])
    assert adjusted == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert stats.holm([math.nan, 0.2])[1] == pytest.approx(0.2)
    assert math.isnan(stats.holm([math.nan, 0.2])[0])
    assert stats.holm([0.6, 0.7]) == pytest.approx([1.0, 1.0])


def test_verdict_words_follow_the_decisive_p():
    gap = stats.difference([34.1, 34.5, 34.6], [32.0, 33.5, 33.0])
    text = stats.verdict(gap)
    assert text.startswith("+1.57 points, p = 0.0") and "Welch, 3 vs 3 seeds" in text
    assert text.endswith("different at the 0.05 level") == (gap["p_value"] < 0.05)
    adjusted = stats.verdict(gap, adjusted_p=0.2)
    assert "Holm-adjusted p = 0.200" in adjusted
    assert adjusted.endswith("not shown to differ at the 0.05 level")


def test_describe_and_spread():
    assert stats.describe([1.0, 2.0, 3.0]) == "2.00 ± 1.00 (3 seeds)"
    assert stats.describe([5.0]) == "5.00 (1 seed)"
    assert stats.mean_and_spread([]) == pytest.approx((math.nan, math.nan), nan_ok=True)


def test_verdict_units_digits_and_small_p():
    gap = {"difference": 0.01234, "p_value": 0.0004, "n": (3, 3)}
    text = stats.verdict(gap, unit="", digits=4)
    assert text.startswith("+0.0123, p < 0.001 (Welch, 3 vs 3 seeds)")
    assert stats.format_p(0.0312) == "p = 0.031"


def test_the_interval_matches_scipy_welch_interval():
    from scipy import stats as scipy_stats

    a, b = [56.1, 55.2, 56.9, 55.8], [55.0, 54.1, 55.9]
    low, high = stats.interval(stats.difference(a, b))
    expected = scipy_stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert (low, high) == pytest.approx((expected.low, expected.high), rel=1e-9)
    assert math.isnan(stats.interval(stats.difference([1.0], [2.0, 3.0]))[0])


def test_equivalence_is_the_larger_one_sided_p_and_agrees_with_the_90_interval():
    from scipy import stats as scipy_stats

    a, b = [56.1, 55.2, 56.9, 55.8, 56.0], [55.9, 55.4, 56.3, 55.5, 56.2]
    gap = stats.difference(a, b)
    tost = stats.equivalence(gap, 1.0)
    # the two one-sided Welch tests, by SciPy: a - b > -1 and a - b < +1
    above = scipy_stats.ttest_ind([x + 1.0 for x in a], b, equal_var=False, alternative="greater")
    below = scipy_stats.ttest_ind([x - 1.0 for x in a], b, equal_var=False, alternative="less")
    assert tost["p_value"] == pytest.approx(max(above.pvalue, below.pvalue), rel=1e-9)
    low, high = stats.interval(gap, confidence=0.90)
    assert (tost["p_value"] < 0.05) == (-1.0 < low and high < 1.0)
    far = stats.difference([x + 3.0 for x in a], b)  # 3 points apart: not equivalent
    assert stats.equivalence(far, 1.0)["p_value"] > 0.5


def test_power_matches_a_simulation_and_the_seed_count_is_the_first_that_reaches_it():
    import numpy as np
    from scipy import stats as scipy_stats

    rng = np.random.default_rng(0)
    n, spread, effect, trials = 6, 0.8, 1.0, 4000
    a = rng.normal(effect, spread, size=(trials, n))
    b = rng.normal(0.0, spread, size=(trials, n))
    found = scipy_stats.ttest_ind(a, b, axis=1).pvalue < 0.05
    assert stats.power(n, spread, effect) == pytest.approx(found.mean(), abs=0.025)
    needed = stats.seeds_for_power(0.8, 1.0)
    assert stats.power(needed, 0.8, 1.0) >= 0.8 > stats.power(needed - 1, 0.8, 1.0)
    assert stats.seeds_for_power(5.0, 1.0, most=10) is None


def test_the_paired_test_is_scipys_and_its_verdict_says_so():
    from scipy import stats as scipy_stats

    a, b = [0.1112, 0.1108, 0.1115], [0.1071, 0.1070, 0.1076]
    gap = stats.paired_difference(a, b)
    expected = scipy_stats.ttest_rel(a, b)
    assert gap["t"] == pytest.approx(expected.statistic, rel=1e-12)
    assert gap["p_value"] == pytest.approx(expected.pvalue, rel=1e-9)
    low, high = stats.interval(gap)
    interval = expected.confidence_interval(0.95)
    assert (low, high) == pytest.approx((interval.low, interval.high), rel=1e-9)
    assert "paired t, 3 seeds" in stats.verdict(gap)
    with pytest.raises(ValueError, match="cannot pair"):
        stats.paired_difference([1.0, 2.0], [1.0])
