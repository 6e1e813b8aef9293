"""The book's results at a glance: every proposition and derivation, checked, as LaTeX.

Each result is built here as a SymPy object from the library's own rules, exactly as the
chapter that proves it builds it, and asserted before it is written out. Running

    python book/glance.py

rewrites ``book/glance.md``; ``tests/test_book_glance.py`` fails when the page is stale or
links to a section that does not exist. A row links to its section by the anchor that MyST
derives from the section's heading (``myst_heading_anchors``), so the chapters carry no
labels of their own and read the same in Jupyter; renaming a heading breaks the link, and
the book's build (``-W``) says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import sympy as sp

from dyntemp import temperature

PAGE = Path(__file__).with_name("glance.md")


@dataclass(frozen=True)
class Result:
    anchor: str  # the heading anchor of the section that proves it, as MyST derives it
    chapter: str  # notebooks/<name>, without suffix
    claim: str  # one line of prose
    statement: sp.Basic  # the SymPy object, already checked


def _results() -> list[Result]:
    s, s_p, s_j = sp.symbols("s s_p s_j", real=True)
    R, N = sp.symbols("R N", positive=True)
    tau = temperature.Fixed(0.2).sympy(s, symbolic=True)
    ell = sp.Function("ell")(s_p, s_j)
    found = []

    # Chapter 1: the chance level and the uniform distribution's uniformity.
    sims = sp.symbols("s_1:6", real=True)  # 2N - 1 = 5 candidates, any similarities
    anchor = -sims[0] / tau + sp.log(sum(sp.exp(x / tau) for x in sims))
    assert sp.limit(anchor, tau, sp.oo) == sp.log(5)
    L, T = sp.Symbol(r"\mathcal{L}"), sp.Symbol(r"\tau")
    found.append(
        Result(
            "instance-discrimination",
            "notebooks/01_contrastive_learning",
            "At a very large temperature NT-Xent is the log of the number of candidates.",
            sp.Eq(sp.Limit(L, T, sp.oo), sp.log(2 * N - 1)),
        )
    )
    theta = sp.Symbol("theta", real=True)
    mean = sp.Integral(sp.exp(-2 * (2 - 2 * sp.cos(theta))), (theta, 0, 2 * sp.pi)) / (2 * sp.pi)
    assert abs(sp.N(sp.log(mean) - sp.log(sp.exp(-4) * sp.besseli(0, 4)), 30)) < 1e-25
    found.append(
        Result(
            "alignment-and-uniformity",
            "notebooks/01_contrastive_learning",
            "The uniformity of the uniform distribution on the circle.",
            sp.Eq(
                sp.Symbol(r"\mathcal{U}_{\mathrm{uniform}}"),
                sp.log(sp.exp(-4) * sp.besseli(0, 4)),
            ),
        )
    )

    # Chapter 2: the gradients of one anchor, for a fixed temperature.
    denominator = sp.exp(s_p / tau) + sp.exp(s_j / tau) + R
    loss = -s_p / tau + sp.log(denominator)
    P_p, P_j = sp.exp(s_p / tau) / denominator, sp.exp(s_j / tau) / denominator
    pull, push = sp.diff(loss, s_p), sp.diff(loss, s_j)
    assert sp.simplify(pull - (-(1 - P_p) / tau)) == 0 and sp.simplify(push - P_j / tau) == 0
    Pp, Pj = sp.Symbol("P_p"), sp.Symbol("P_j")
    found += [
        Result(
            "one-anchor-symbolically",
            "notebooks/02_gradients_of_ntxent",
            "The positive is pulled in proportion to the softmax weight it lacks.",
            sp.Eq(sp.Derivative(ell, s_p), -(1 - Pp) / tau),
        ),
        Result(
            "one-anchor-symbolically",
            "notebooks/02_gradients_of_ntxent",
            "Each negative is pushed in proportion to its softmax weight.",
            sp.Eq(sp.Derivative(ell, s_j), Pj / tau),
        ),
    ]
    negatives = sp.symbols("s_1:5", real=True)
    full = -s_p / tau + sp.log(sp.exp(s_p / tau) + sum(sp.exp(x / tau) for x in negatives))
    assert sp.simplify(sum(sp.diff(full, x) for x in negatives) + sp.diff(full, s_p)) == 0
    found.append(
        Result(
            "one-anchor-symbolically",
            "notebooks/02_gradients_of_ntxent",
            "The pull on the positive balances the total push on the negatives.",
            sp.Eq(
                sp.Sum(sp.Derivative(ell, sp.Symbol("s_j")), (sp.Symbol("j"), 1, 2 * N - 2)),
                -sp.Derivative(ell, s_p),
            ),
        )
    )
    ratio = sp.simplify(sp.diff(full, negatives[0]) / sp.diff(full, negatives[1]))
    assert sp.simplify(ratio - sp.exp((negatives[0] - negatives[1]) / tau)) == 0
    boltzmann = sp.exp(negatives[0] / tau) / sum(sp.exp(x / tau) for x in negatives)
    assert sp.simplify(sp.diff(full, negatives[0]) / -sp.diff(full, s_p) - boltzmann) == 0
    delta = sp.Symbol("delta", positive=True)
    assert sp.limit(sp.exp(delta / tau), tau, 0, "+") == sp.oo
    assert sp.limit(sp.exp(delta / tau), tau, sp.oo) == 1
    found += [
        Result(
            "hardness-awareness",
            "notebooks/02_gradients_of_ntxent",
            "Hardness-awareness: two negatives are pushed in a ratio exponential in their gap.",
            sp.Eq(sp.Derivative(ell, negatives[0]) / sp.Derivative(ell, negatives[1]), ratio),
        ),
        Result(
            "hardness-awareness",
            "notebooks/02_gradients_of_ntxent",
            "The relative penalty of a negative is a Boltzmann distribution.",
            sp.Eq(sp.Symbol("rho_1"), boltzmann),
        ),
    ]

    # Chapter 3: a similarity-dependent temperature.
    t = sp.Function("tau")
    dystress = temperature.DySTreSS(tau_min=0.1, tau_max=0.2)
    slope = sp.diff(s / t(s), s)
    multiplier = 1 - s * sp.diff(t(s), s) / t(s)
    assert sp.simplify(slope - multiplier / t(s)) == 0
    found.append(
        Result(
            "the-gradient-detached-and-in-the-graph",
            "notebooks/03_dynamic_temperature",
            "With the temperature in the graph, every gradient is the detached one times m(s).",
            sp.Eq(sp.Derivative(s / t(s), s), multiplier / t(s)),
        )
    )
    form = dystress.sympy(s, symbolic=True)
    tmin, tmax = sp.symbols("tau_min tau_max", positive=True)
    dslope = sp.diff(form, s)
    assert sp.simplify(dslope - sp.pi / 2 * (tmax - tmin) * sp.sin(sp.pi * s)) == 0
    assert sp.maximum(sp.diff(dystress.sympy(s), s), s, sp.Interval(0, 1)) == sp.pi / 20
    found.append(
        Result(
            "the-papers-slope-conditions",
            "notebooks/03_dynamic_temperature",
            "DySTreSS meets the paper's slope conditions: τ falls on (-1, 0) and rises on "
            "(0, 1), with a bounded slope.",
            sp.Eq(sp.Derivative(t(s), s), sp.pi / 2 * (tmax - tmin) * sp.sin(sp.pi * s)),
        )
    )
    K = sp.Symbol("K", positive=True)
    ode_tau = s / sp.log(1 + delta * K * s)
    assert sp.simplify(sp.exp(s / ode_tau) / K * sp.diff(s / ode_tau, s) - delta) == 0
    assert sp.limit(ode_tau, s, 0) == 1 / (delta * K)
    assert sp.limit(sp.diff(ode_tau, s), s, 0) == sp.Rational(1, 2)
    found.append(
        Result(
            "where-the-cosine-comes-from",
            "notebooks/03_dynamic_temperature",
            "The temperature that gives every negative the same push delta.",
            sp.Eq(t(s), ode_tau),
        )
    )
    r = sp.Symbol("r", positive=True)
    g = sp.pi * s * sp.sin(sp.pi * s) + sp.cos(sp.pi * s) - 1
    n = form - s * dslope
    assert sp.simplify(n.subs(tmax, r * tmin) - tmin * (1 - (r - 1) / 2 * g)) == 0
    G = sp.maximum(g, s, sp.Interval(0, 1))
    (r_star,) = sp.solve(sp.Eq((r - 1) / 2 * G, 1), r)
    assert sp.simplify(r_star - (sp.pi + 2) / (sp.pi - 2)) == 0
    found.append(
        Result(
            "when-is-the-effective-logit-increasing",
            "notebooks/03_dynamic_temperature",
            "DySTreSS's effective logit increases on [-1, 1] exactly when its range is narrow.",
            sp.Le(tmax / tmin, (sp.pi + 2) / (sp.pi - 2)),
        )
    )
    return found


# The library's symbols, named as the book's notation writes them.
NOTATION = {
    sp.Symbol("tau_min", positive=True): r"\tau_{\min}",
    sp.Symbol("tau_max", positive=True): r"\tau_{\max}",
}


def latex(statement: sp.Basic) -> str:
    """LaTeX safe inside a Markdown table cell, in the book's notation."""
    names = {symbol: name for symbol, name in NOTATION.items() if symbol in statement.free_symbols}
    return sp.latex(statement, symbol_names=names).replace("|", r"\vert ")


def page() -> str:
    lines = [
        "# Results at a glance",
        "",
        "Every proposition and derivation of the book, with its statement in LaTeX and a link",
        "to the section whose cells prove it. The statements are generated by `book/glance.py`",
        "from SymPy objects built, and asserted, the way the chapters build them; copy the",
        "source column into your own notes or slides. {doc}`running` explains how to take a",
        "chapter's derivation cells into a lecture notebook of your own.",
        "",
        "| proved in | result | statement | LaTeX source |",
        "|---|---|---|---|",
    ]
    for result in _results():
        source = latex(result.statement)
        link = f"[](../{result.chapter}.ipynb#{result.anchor})"  # the link text: the heading
        lines.append(f"| {link} | {result.claim} | ${source}$ | `{source}` |")
    return "\n".join(lines) + "\n"


def anchors() -> list[tuple[str, str]]:
    """(anchor, chapter) of every row, for the test."""
    return [(result.anchor, result.chapter) for result in _results()]


if __name__ == "__main__":
    PAGE.write_text(page())
