"""Verdicts on differences between configs: Welch's t-test over seeds, with a correction for
the many comparisons a chapter makes.

``difference(values, reference)`` compares the accuracies of two configs (one value per
seed): the mean difference, its standard error, Welch's t statistic, its degrees of freedom
and the two-sided p-value. ``holm(p_values)`` adjusts a family of p-values so that the
chance of any false "different" in the whole family stays below the level. ``verdict`` says
it in words, with the threshold it used.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

LEVEL = 0.05  # the significance level of every verdict in the book


def mean_and_spread(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    n = len(values)
    if n == 0:
        return math.nan, math.nan
    mean = sum(values) / n
    if n == 1:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


def describe(values: Sequence[float], digits: int = 2) -> str:
    """``mean ± spread (n seeds)``, or the single value for one run."""
    mean, spread = mean_and_spread(values)
    if len(values) == 1:
        return f"{mean:.{digits}f} (1 seed)"
    return f"{mean:.{digits}f} ± {spread:.{digits}f} ({len(values)} seeds)"


def difference(values: Sequence[float], reference: Sequence[float]) -> dict[str, Any]:
    """Mean of ``values`` minus mean of ``reference``, and Welch's two-sided t-test of it.

    Returns ``difference``, ``standard_error`` (sqrt(s_a^2/n_a + s_b^2/n_b)), ``t``, ``df``
    (Welch-Satterthwaite) and ``p_value``; with fewer than two values on either side, or no
    spread at all, the test cannot be made and ``t``, ``df`` and ``p_value`` are NaN.
    """
    (mean_a, spread_a), (mean_b, spread_b) = mean_and_spread(values), mean_and_spread(reference)
    n_a, n_b = len(values), len(reference)
    gap: dict[str, Any] = {"difference": mean_a - mean_b, "n": (n_a, n_b)}
    nan = {"standard_error": math.nan, "t": math.nan, "df": math.nan, "p_value": math.nan}
    if n_a < 2 or n_b < 2:
        return {**gap, **nan}
    va, vb = spread_a**2 / n_a, spread_b**2 / n_b
    error = math.sqrt(va + vb)
    if error == 0:
        return {**gap, **nan, "standard_error": 0.0}
    t = gap["difference"] / error
    df = (va + vb) ** 2 / (va**2 / (n_a - 1) + vb**2 / (n_b - 1))
    return {**gap, "standard_error": error, "t": t, "df": df, "p_value": two_sided_p(t, df)}


def two_sided_p(t: float, df: float) -> float:
    """P(|T| >= |t|) for Student's t with ``df`` degrees of freedom (any real df > 0)."""
    from scipy import stats

    return float(2.0 * stats.t.sf(abs(t), df))


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment: p-values comparable with the level for the whole family
    (NaN stays NaN and does not count)."""
    indexed = sorted((p, i) for i, p in enumerate(p_values) if not math.isnan(p))
    m = len(indexed)
    adjusted = [math.nan] * len(p_values)
    running = 0.0
    for rank, (p, i) in enumerate(indexed):
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[i] = running
    return adjusted


def format_p(p: float) -> str:
    """``p = 0.031``, or ``p < 0.001`` for smaller values."""
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def verdict(
    gap: dict[str, Any],
    adjusted_p: float | None = None,
    level: float = LEVEL,
    *,
    unit: str = "points",
    digits: int = 2,
) -> str:
    """The difference and its test in words, e.g. ``+1.20 points, p = 0.031 (Welch, 3 vs 3
    seeds): different at the 0.05 level``; with ``adjusted_p`` the Holm-adjusted p decides.
    ``unit`` and ``digits`` say how the difference is written."""
    said = f"{gap['difference']:+.{digits}f}" + (f" {unit}" if unit else "")
    p = gap["p_value"]
    if math.isnan(p):
        n_a, n_b = gap["n"]
        if min(n_a, n_b) < 2:
            return f"{said}, not tested ({n_a} vs {n_b} seeds: a test needs two on each side)"
        return f"{said}, not tested ({n_a} vs {n_b} seeds, all equal on each side: no spread)"
    seeds = (
        f"paired t, {gap['n'][0]} seeds"
        if gap.get("paired")
        else f"Welch, {gap['n'][0]} vs {gap['n'][1]} seeds"
    )
    decisive = p if adjusted_p is None else adjusted_p
    text = f"{said}, {format_p(p)} ({seeds}"
    text += ")" if adjusted_p is None else f"; Holm-adjusted {format_p(adjusted_p)})"
    outcome = "different" if decisive < level else "not shown to differ"
    return f"{text}: {outcome} at the {level:g} level"


def interval(gap: dict[str, Any], confidence: float = 0.95) -> tuple[float, float]:
    """The two-sided ``confidence`` interval of Welch's difference (NaN where untestable).

    >>> low, high = interval(difference([2.0, 3.0, 4.0], [1.0, 2.0, 3.0]))
    >>> round(low, 3), round(high, 3)
    (-1.267, 3.267)
    """
    if math.isnan(gap.get("df", math.nan)):
        return math.nan, math.nan
    from scipy import stats

    half = float(stats.t.ppf(0.5 + confidence / 2, gap["df"])) * gap["standard_error"]
    return gap["difference"] - half, gap["difference"] + half


def equivalence(gap: dict[str, Any], margin: float) -> dict[str, Any]:
    """Two one-sided tests (TOST) of ``|difference| < margin`` on Welch's statistic.

    ``p_value`` is the larger of the two one-sided p-values: below the level, the
    difference is shown to lie inside (-margin, +margin), which is the same as the
    ``1 - 2 level`` (90 %) interval lying inside it.

    >>> round(equivalence(difference([0.1, 0.3, 0.2], [0.2, 0.1, 0.3]), 1.0)["p_value"], 4)
    0.0001
    """
    if math.isnan(gap.get("df", math.nan)):
        return {"margin": margin, "p_value": math.nan}
    from scipy import stats

    lower = (gap["difference"] + margin) / gap["standard_error"]  # H0: difference <= -margin
    upper = (gap["difference"] - margin) / gap["standard_error"]  # H0: difference >= +margin
    p = max(float(stats.t.sf(lower, gap["df"])), float(stats.t.cdf(upper, gap["df"])))
    return {"margin": margin, "p_value": p}


def power(n: int, spread: float, effect: float, level: float = LEVEL) -> float:
    """The power of a two-sided two-sample t-test with ``n`` seeds a side, a common seed
    spread ``spread`` and a true difference ``effect`` (noncentral t, df = 2n - 2).

    >>> round(power(10, 1.0, 1.0), 3)
    0.562
    """
    from scipy import stats

    df = 2 * n - 2
    critical = float(stats.t.ppf(1 - level / 2, df))
    shift = effect / (spread * math.sqrt(2 / n))
    return float(stats.nct.sf(critical, df, shift) + stats.nct.cdf(-critical, df, shift))


def seeds_for_power(
    spread: float, effect: float, target: float = 0.8, level: float = LEVEL, most: int = 100
) -> int | None:
    """The fewest seeds a side that find ``effect`` with power ``target`` (None if more than
    ``most`` are needed).

    >>> seeds_for_power(0.5, 1.0), seeds_for_power(0.8, 1.0)
    (6, 12)
    """
    for n in range(2, most + 1):
        if power(n, spread, effect, level) >= target:
            return n
    return None


def paired_difference(values: Sequence[float], reference: Sequence[float]) -> dict[str, Any]:
    """Mean of the differences of paired measurements (the same seed's run measured twice,
    say) and the paired two-sided t-test of it: ``difference``, ``standard_error`` (of the
    mean difference), ``t``, ``df`` (pairs - 1), ``p_value`` and ``n`` as ``difference``
    gives them, so that ``verdict`` and ``interval`` read it alike.

    >>> gap = paired_difference([0.1112, 0.1108, 0.1115], [0.1071, 0.1070, 0.1076])
    >>> round(gap["difference"], 4), gap["df"], gap["p_value"] < 0.001
    (0.0039, 2, True)
    """
    if len(values) != len(reference):
        raise ValueError(f"{len(values)} values cannot pair with {len(reference)}")
    gaps = [a - b for a, b in zip(values, reference, strict=True)]
    mean, spread = mean_and_spread(gaps)
    found: dict[str, Any] = {"difference": mean, "n": (len(gaps), len(gaps)), "paired": True}
    nan = {"standard_error": math.nan, "t": math.nan, "df": math.nan, "p_value": math.nan}
    if len(gaps) < 2:
        return {**found, **nan}
    error = spread / math.sqrt(len(gaps))
    if error == 0:
        return {**found, **nan, "standard_error": 0.0}
    t = mean / error
    df = len(gaps) - 1
    return {**found, "standard_error": error, "t": t, "df": df, "p_value": two_sided_p(t, df)}
