"""dyntemp.symbolic: exact sign sets of expressions of one variable, with its examples."""

from __future__ import annotations

import doctest

import pytest
import sympy as sp

from dyntemp import symbolic
from dyntemp.symbolic import pieces, sign_sets

s = sp.Symbol("s", real=True)


def test_the_examples_run() -> None:
    outcome = doctest.testmod(symbolic)
    assert outcome.attempted > 0 and outcome.failed == 0, outcome


def test_a_trigonometric_sign_that_solving_the_inequality_gets_wrong() -> None:
    # SymPy 1.14's inequality solver says sin(s) <= 0 has no solution here.
    signs = sign_sets(sp.sin(s), s, sp.Interval.open(-2 * sp.pi, -sp.pi / 2))
    assert signs[-1] == sp.Interval.open(-sp.pi, -sp.pi / 2)
    assert signs[0] == sp.FiniteSet(-sp.pi)
    assert signs[1] == sp.Interval.open(-2 * sp.pi, -sp.pi)


def test_the_sets_cover_the_domain_without_overlap() -> None:
    domain = sp.Interval(-1, 1)
    signs = sign_sets(s**3 - s / 4, s, domain)
    assert signs[-1] | signs[0] | signs[1] == domain
    assert signs[-1] & signs[1] is sp.S.EmptySet
    assert signs[0] == sp.FiniteSet(-sp.Rational(1, 2), 0, sp.Rational(1, 2))


def test_a_rule_defined_piece_by_piece() -> None:
    # falling up to -3/10, rising from there to 2/5, flat above: the shifted rule's shape
    rule = sp.Piecewise(
        (sp.cos(sp.pi * (s - sp.Rational(2, 5)) / sp.Rational(7, 10)), s <= sp.Rational(2, 5)),
        (1, True),
    )
    slope = sp.diff(rule, s)
    assert len(pieces(slope, sp.Interval.open(-1, 1))) == 2
    signs = sign_sets(slope, s, sp.Interval.open(-1, 1))
    assert signs[-1] == sp.Interval.open(-1, -sp.Rational(3, 10))
    assert signs[1] == sp.Interval.open(-sp.Rational(3, 10), sp.Rational(2, 5))
    assert signs[0] == sp.Interval.Ropen(sp.Rational(2, 5), 1) | {-sp.Rational(3, 10)}


def test_zero_on_a_whole_piece_and_infinitely_many_zeros() -> None:
    assert sign_sets(sp.Integer(0) * s, s, sp.Interval(0, 1))[0] == sp.Interval(0, 1)
    with pytest.raises(ValueError, match="not a finite set"):
        sign_sets(sp.sin(s), s, sp.S.Reals)
