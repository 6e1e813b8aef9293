"""Where an expression of one variable is negative, zero or positive, exactly, with SymPy.

Chapter 3 checks the paper's conditions on the slope of a temperature rule, such as
"tau'(s) < 0 for s < 0", for every rule of ``dyntemp.temperature``. ``sign_sets`` answers
them without SymPy's solver for inequalities, which is unreliable for trigonometric ones (in
SymPy 1.14 it says that sin(s) <= 0 has no solution on (-2 pi, -pi/2)). It only asks SymPy
to solve *equations*: a continuous function keeps its sign between consecutive zeros, so
the zeros on an interval and one evaluation in each gap between them decide the sign
everywhere. An expression defined piece by piece (``Abs``, ``Piecewise``) is first split
into its smooth pieces by ``pieces``.

>>> import sympy as sp
>>> s = sp.Symbol("s", real=True)
>>> signs = sign_sets(sp.sin(sp.pi * s), s, sp.Interval.open(-1, 1))
>>> signs[-1], signs[0], signs[1]
(Interval.open(-1, 0), {0}, Interval.open(0, 1))
>>> sign_sets(sp.Abs(s) - sp.Rational(1, 2), s, sp.Interval(-1, 1))[-1]
Interval.open(-1/2, 1/2)
"""

from __future__ import annotations

import sympy as sp

__all__ = ["pieces", "sign_sets"]


def pieces(expr: sp.Expr, domain: sp.Set) -> list[tuple[sp.Expr, sp.Set]]:
    """``(formula, part)`` pairs that cover ``domain``, one smooth formula on each part.

    ``Abs`` and ``Piecewise`` are rewritten as one ``Piecewise``; an expression without
    either is a single piece.

    >>> s = sp.Symbol("s", real=True)
    >>> pieces(sp.Abs(s), sp.Interval(-1, 1))
    [(s, Interval(0, 1)), (-s, Interval.Ropen(-1, 0))]
    """
    expr = sp.piecewise_fold(expr.rewrite(sp.Piecewise))
    if not isinstance(expr, sp.Piecewise):
        return [(expr, domain)]
    found, rest = [], domain
    for formula, condition in expr.args:
        part = rest.intersect(condition.as_set())
        if part is not sp.S.EmptySet:
            found.append((formula, part))
        rest = rest - part
    return found


def sign_sets(expr: sp.Expr, symbol: sp.Symbol, domain: sp.Set) -> dict[int, sp.Set]:
    """The parts of ``domain`` where ``expr``, a function of ``symbol`` continuous on each of
    its pieces, is negative (key -1), zero (0) and positive (1), as exact SymPy sets.

    Raises ``ValueError`` when SymPy cannot list the zeros of a piece as a finite set (for
    example infinitely many of them), where the method does not apply.
    """
    signs: dict[int, sp.Set] = {-1: sp.S.EmptySet, 0: sp.S.EmptySet, 1: sp.S.EmptySet}
    for formula, part in pieces(expr, domain):
        zeros = sp.solveset(sp.Eq(formula, 0), symbol, part)
        if zeros == part:  # zero on the whole piece
            signs[0] |= part
            continue
        if zeros is not sp.S.EmptySet and not zeros.is_FiniteSet:
            raise ValueError(f"the zeros of {formula} on {part} are not a finite set: {zeros}")
        signs[0] |= zeros
        gaps = part - zeros
        for gap in gaps.args if isinstance(gaps, sp.Union) else [gaps]:
            middle = (gap.inf + gap.sup) / 2
            signs[int(sp.sign(formula.subs(symbol, middle).evalf(30)))] |= gap
    return signs
