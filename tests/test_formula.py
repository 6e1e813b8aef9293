"""Formula: one text gives the SymPy form, the torch form and the derivative; the parser
never runs the text; the rule equals the hand-written ones and passes the loss's checks."""

from __future__ import annotations

import ast
import builtins
import copy
import math
import pickle
import time

import pytest
import sympy as sp
import torch

from dyntemp import ntxent
from dyntemp import temperature as T
from dyntemp.formula import PROGRESS, SIMILARITY, parse
from dyntemp.loss import reference_ntxent

GRID = torch.linspace(-1.0, 1.0, 401, dtype=torch.float64)
DYSTRESS = "0.1 + 0.05*(1 - cos(pi*s))"
SHIFTED = "Piecewise((0.1 + 0.05*(1 + cos(pi*(s - 0.4)/0.7)), s <= 0.4), (0.2, True))"

# the same rule, once from a formula and once hand-written
PAIRS = [
    (DYSTRESS, T.DySTreSS(0.1, 0.2)),
    ("0.07 + 0.065*(1 - cos(pi*s))", T.DySTreSS(0.07, 0.2)),
    (SHIFTED, T.ShiftedDySTreSS()),
    ("0.1 + 0.1*Abs(s)", T.Linear(0.1, 0.2)),
    ("0.2 - 0.1*exp(-3.5*abs(s))", T.Exponential()),
]


def views(n=6, d=5, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    z1 = torch.randn(n, d, generator=g, dtype=torch.float64)
    z2 = z1 + 0.7 * torch.randn(n, d, generator=g, dtype=torch.float64)
    return z1.to(dtype).requires_grad_(), z2.to(dtype).requires_grad_()


def reference(z1, z2, tau_of, *, detach, decoupled=False):
    """NT-Xent anchor by anchor in float64 autograd, tau from a hand-written torch function."""
    z = torch.cat([z1, z2]).double()
    z = z / z.norm(dim=1, keepdim=True)
    n2, n = z.shape[0], z.shape[0] // 2
    losses = []
    for i in range(n2):
        p = (i + n) % n2
        logits = []
        for k in range(n2):
            if k == i or (decoupled and k == p):
                continue
            s = z[i] @ z[k]
            tau = tau_of(s)
            logits.append(s / (tau.detach() if detach else tau))
        s_p = z[i] @ z[p]
        tau_p = tau_of(s_p)
        losses.append(
            torch.logsumexp(torch.stack(logits), 0) - s_p / (tau_p.detach() if detach else tau_p)
        )
    return torch.stack(losses).mean()


def dystress_by_hand(s: torch.Tensor) -> torch.Tensor:
    return 0.1 + 0.05 * (1 - torch.cos(math.pi * s))


# ---------------------------------------------------------------------------------------
# The formula equals the hand-written rules


@pytest.mark.parametrize(("text", "rule"), PAIRS, ids=[t for t, _ in PAIRS])
def test_formula_equals_the_hand_written_rule(text: str, rule: T.TemperatureRule) -> None:
    formula = T.Formula(text)
    assert formula.per_pair and not formula.needs_progress
    torch.testing.assert_close(formula(GRID), rule(GRID), rtol=0, atol=1e-15)
    kinks = (GRID.abs() > 1e-9) & ((GRID - 0.4).abs() > 1e-9)  # |s| and the cut at 0.4
    grid = GRID[kinks]
    torch.testing.assert_close(formula.derivative(grid), rule.derivative(grid), rtol=0, atol=1e-13)
    torch.testing.assert_close(formula.logit_slope(grid), rule.logit_slope(grid), rtol=0, atol=1e-9)
    x = sp.Symbol("s", real=True)
    assert sp.simplify(formula.sympy(x) - rule.sympy(x)) == 0
    s32 = GRID.float()
    assert formula(s32).dtype == torch.float32
    torch.testing.assert_close(formula(s32), rule(s32), rtol=0, atol=1e-7)


def test_dystress_formula_runs_the_same_operations() -> None:
    """The compiled form is cos(pi s) * -0.05 + 0.15, bit for bit; DySTreSS itself is compiled
    from the paper's form cos(pi (1 + s)), which rounds differently in the last bits."""
    formula, rule = T.Formula(DYSTRESS), T.DySTreSS(0.1, 0.2)
    for dtype in (torch.float32, torch.float64):
        s = GRID.to(dtype)
        assert torch.equal(formula(s), s.mul(math.pi).cos().mul(-0.05).add(0.15))
        torch.testing.assert_close(
            formula(s), rule(s), rtol=0, atol=1e-7 if dtype == torch.float32 else 1e-15
        )


def test_fixed_formula_equals_fixed() -> None:
    formula = T.Formula("0.2")
    assert not formula.per_pair and not formula.needs_progress
    tau = formula.tau(GRID)
    assert tau.shape == () and tau.dtype == torch.float64 and float(tau) == 0.2
    assert formula.derivative(GRID).shape == () and float(formula.derivative(GRID)) == 0.0
    torch.testing.assert_close(formula(GRID), T.Fixed(0.2)(GRID), rtol=0, atol=0)
    assert formula.sympy(SIMILARITY) == T.Fixed(0.2).sympy(SIMILARITY)
    z1, z2 = views()
    for detach in (True, False):
        torch.testing.assert_close(
            ntxent(z1, z2, formula, detach_temperature=detach), ntxent(z1, z2, 0.2), rtol=0, atol=0
        )


def test_progress_formula_equals_cosine_schedule() -> None:
    formula = T.Formula("0.1 + 0.45*(1 + cos(2*pi*progress/400))")
    schedule = T.CosineSchedule(0.1, 1.0, period=400)
    assert formula.needs_progress and not formula.per_pair
    for progress in (0.0, 3.0, 117.5, 200.0, 399.0, 800.0):
        tau = formula.tau(GRID, progress)
        assert tau.shape == ()
        torch.testing.assert_close(tau, schedule.tau(GRID, progress), rtol=0, atol=1e-15)
    t = sp.Symbol("t", nonnegative=True)
    assert sp.simplify(formula.sympy(SIMILARITY) - schedule.sympy(SIMILARITY)) == 0
    over_time = formula.sympy(SIMILARITY, progress=t) - schedule.sympy(SIMILARITY, progress=t)
    assert sp.simplify(over_time) == 0
    z1, z2 = views()
    for detach in (True, False):
        ours = ntxent(z1, z2, formula, detach_temperature=detach, progress=3.0)
        theirs = ntxent(z1, z2, schedule, detach_temperature=detach, progress=3.0)
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-14)
    with pytest.raises(ValueError, match="needs the training progress"):
        ntxent(z1, z2, formula)


# ---------------------------------------------------------------------------------------
# Through the loss: against DySTreSS and an independent float64 reference


@pytest.mark.parametrize("decoupled", [False, True], ids=["ntxent", "dcl"])
@pytest.mark.parametrize("detach", [True, False], ids=["detached", "in-graph"])
def test_loss_and_gradients_match(detach: bool, decoupled: bool) -> None:
    formula = T.Formula(DYSTRESS)
    z1, z2 = views()
    options = {"detach_temperature": detach, "decoupled": decoupled}
    loss = ntxent(z1, z2, formula, **options)
    grads = torch.autograd.grad(loss, (z1, z2))
    # the hand-written DySTreSS through the same loss
    hand = ntxent(z1, z2, T.DySTreSS(0.1, 0.2), **options)
    for a, b in zip(grads, torch.autograd.grad(hand, (z1, z2)), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    torch.testing.assert_close(loss, hand, rtol=0, atol=1e-12)
    # the independent reference: anchor by anchor, tau written by hand, autograd
    expected = reference(z1, z2, dystress_by_hand, detach=detach, decoupled=decoupled)
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=1e-12)
    for a, b in zip(grads, torch.autograd.grad(expected, (z1, z2)), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    # the library's plain-autograd reference, the formula in its graph
    plain = reference_ntxent(z1, z2, formula, **options)
    torch.testing.assert_close(plain, expected, rtol=1e-12, atol=1e-12)
    for a, b in zip(torch.autograd.grad(plain, (z1, z2)), grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("decoupled", [False, True], ids=["ntxent", "dcl"])
@pytest.mark.parametrize("text", [DYSTRESS, SHIFTED, "0.3 - 0.1*cosh(s) + 0.02*s**3"])
def test_gradcheck_with_the_formula_in_the_graph(text: str, decoupled: bool) -> None:
    rule = T.Formula(text)
    z1, z2 = views(n=4, d=3, seed=1)
    assert torch.autograd.gradcheck(
        lambda a, b: ntxent(a, b, rule, detach_temperature=False, decoupled=decoupled), (z1, z2)
    )


def test_float32_loss_is_close_to_float64() -> None:
    formula = T.Formula(DYSTRESS)
    z1, z2 = views(dtype=torch.float32)
    loss = ntxent(z1, z2, formula, detach_temperature=False)
    assert loss.dtype == torch.float32
    r1, r2 = (z.detach().double() for z in (z1, z2))
    expected = reference(r1, r2, dystress_by_hand, detach=False)
    torch.testing.assert_close(loss.double(), expected, rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------------------------
# The compiler: every kind of node against SymPy's own numbers


COMPILED = [
    "Max(0.1, Abs(s))",
    "Min(0.3, 0.1 + s**2, 0.25 - s/10)",
    "0.1*sqrt(1.5 + s)",
    "0.1*exp(s)/(2 + s)",
    "0.1 + tanh(s)**2/10",
    "2**s/10",
    "(1.2 + s)**(1.5 + 0.1*sin(s))/5",
    "0.3 - 0.1*cosh(s)",
    "0.2 + sinh(s)/20 + tan(s/2)/50",
    "1/(3 + s) + 1/(2 + s)**2",
    "0.1*log(E + s)",
    "Piecewise((0.1, s < -0.5), (0.1 + (s + 0.5)**2, -0.5 <= s <= 0.5), (1.1 - s, True))",
    "Piecewise((0.2, (s < -0.9) | (s > 0.9)), (0.1, True))",
]


def sympy_numbers(expr: sp.Expr, s: torch.Tensor) -> torch.Tensor:
    f = sp.lambdify(SIMILARITY, expr, "math")
    return torch.tensor([float(f(float(x))) for x in s], dtype=torch.float64)


@pytest.mark.parametrize("text", COMPILED)
def test_compiled_values_and_derivative_match_sympy(text: str) -> None:
    rule = T.Formula(text)
    grid = GRID[
        (GRID.abs() > 1e-9) & ((GRID.abs() - 0.5).abs() > 1e-9) & ((GRID.abs() - 0.9).abs() > 1e-9)
    ]
    torch.testing.assert_close(
        rule(grid), sympy_numbers(rule.expression, grid), rtol=1e-13, atol=1e-14
    )
    slope = sympy_numbers(sp.diff(rule.expression, SIMILARITY), grid)
    derivative = rule.derivative(grid).expand_as(grid)  # 0-d where the slope is constant
    torch.testing.assert_close(derivative, slope, rtol=1e-12, atol=1e-13)
    if not sp.diff(rule.expression, SIMILARITY).free_symbols:
        return  # a piecewise constant: no graph to differentiate
    # the same through autograd (tau in the graph, so computed out of place)
    generic = T.TemperatureRule.derivative(rule, grid)
    torch.testing.assert_close(generic, slope, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("text", [*COMPILED, "0.5 + 0.1*cos(progress/100)*progress/1000 + 0.01*s"])
def test_tau_is_a_new_tensor_and_leaves_the_inputs_alone(text: str) -> None:
    rule = T.Formula(text)
    for dtype in (torch.float32, torch.float64):
        s = GRID.to(dtype).reshape(1, -1).clone()
        before = s.clone()
        fast = rule.tau(s, 5.0)  # in place on its own intermediates
        with torch.enable_grad():
            x = s.clone().requires_grad_()
            graph = rule.tau(x, 5.0)  # out of place
        assert torch.equal(s, before)
        assert fast.dtype == dtype and fast.data_ptr() != s.data_ptr()
        torch.testing.assert_close(fast, graph.detach(), rtol=0, atol=0)
        again = rule.tau(s, 5.0)
        fast.mul_(0)  # the loss overwrites tau: nothing the rule keeps may change
        torch.testing.assert_close(rule.tau(s, 5.0), again, rtol=0, atol=0)


def test_progress_is_read_where_it_appears_twice() -> None:
    rule = T.Formula("0.5 + 0.1*cos(progress/100)*progress/1000 + 0.01*s")
    tau = rule.tau(GRID, 250.0)
    expected = 0.5 + 0.1 * math.cos(2.5) * 0.25 + 0.01 * GRID
    torch.testing.assert_close(tau, expected, rtol=0, atol=1e-15)


def test_formula_of_s_and_progress() -> None:
    rule = T.Formula("(0.1 + 0.05*(1 - cos(pi*s)))*(1 + progress/100)")
    assert rule.per_pair and rule.needs_progress
    tau = rule.tau(GRID, 50.0)
    torch.testing.assert_close(tau, 1.5 * T.DySTreSS(0.1, 0.2)(GRID), rtol=0, atol=1e-15)
    torch.testing.assert_close(
        rule.derivative(GRID, 50.0), 1.5 * T.DySTreSS(0.1, 0.2).derivative(GRID), rtol=0, atol=1e-15
    )
    torch.testing.assert_close(
        rule.logit_slope(GRID, progress=50.0),
        rule.logit_slope(GRID, rule.tau(GRID, 50.0), progress=50.0),
    )
    z1, z2 = views()
    detached = ntxent(z1, z2, rule, progress=50.0)
    expected = reference(z1, z2, lambda s: 1.5 * dystress_by_hand(s), detach=True)
    torch.testing.assert_close(detached, expected, rtol=1e-12, atol=1e-12)
    # in the graph too: the loss passes the progress on to logit_slope
    in_graph = ntxent(z1, z2, rule, progress=50.0, detach_temperature=False)
    expected = reference_ntxent(z1, z2, rule, progress=50.0, detach_temperature=False)
    torch.testing.assert_close(in_graph, expected, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="reads both s and progress"):
        rule.derivative(GRID)  # without the progress, its derivative is not defined


# ---------------------------------------------------------------------------------------
# Refusals: nothing runs, one clear line


REFUSED = [
    ("__import__('os').system('echo hi')", "calling anything but a listed function"),
    ("s.__class__", "attribute access"),
    ("().__class__", "attribute access"),
    ("(lambda: 1)()", "calling anything but"),
    ("lambda: 0.1", "a lambda"),
    ("open('x')", "the function 'open'"),
    ("cos('s')", "a string"),
    ('"s"', "a string"),
    ("[1]", "a list"),
    ("s[0]", "indexing"),
    ("s if s else 1", "an if-expression"),
    ("cos(s, x=1)", "a keyword argument"),
    ("cos(*s)", "a starred argument"),
    ("cos(s, s)", "cos with 2 arguments"),
    ("Max(s)", "Max with 1 arguments"),
    ("Min(" + ",".join(f"Abs(s-{i / 9})" for i in range(7)) + ") + 0.1", "Min of more than 6"),
    ("Max(Max(s, 2*s, 3*s, 4*s), Max(5*s, 6*s, 7*s + 1))", "Max of more than 6"),
    ("t", "the name 't'"),
    ("x + s", "the name 'x'"),
    ("True + s", "the constant True"),
    ("1j + s", "the constant 1j"),
    ("s < 1", "a comparison outside"),
    ("s == 1", "a comparison outside"),
    ("Piecewise((1, s == 0), (2, True))", "the comparison Eq"),
    ("Piecewise((1, s), (2, True))", "a condition other than"),
    ("Piecewise(1, 2)", "other than \\(value, condition\\)"),
    ("s // 2", "the operator FloorDiv"),
    ("s % 2", "the operator Mod"),
    ("~s", "the operator Invert"),
    ("9**9**9", "a power too large"),
    ("((2*s)**900)**900", "a power too large"),
    ("1e999", "too large for a float"),
    ("s**(10**400)", "too large for a float"),
    ("1/0", "zoo is not a finite real number"),
    ("sqrt(-1) + s", "not a finite real number"),
    ("s", "tau = -1 at s = -1"),
    ("1/s", "tau = -1 at s = -1"),
    ("0.1 + 1/s**2", "tau = inf at s = 0 "),
    ("log(s)", "tau = nan at s = -1"),
    ("sqrt(s + 1)", "tau = 0 at s = -1"),
    ("sqrt(Abs(s)) + 0.1", "d tau / ds = nan at s = 0"),
    ("exp(100*s)", "tau = inf at s = 0.888 \\(float32\\)"),
    ("Piecewise((0.1, s < 0.5))", "tau = nan at s = 0.5"),
    ("0.2 - 0.001*progress", "tau = 0 at s = -1, progress = 200"),
    ("Max(" + ",".join(["s"] * 210) + ")", "more than 200 syntax nodes"),
    ("2 + " + "cos(" * 55 + "s" + ")" * 55, "nesting deeper than 50"),
    ("s" * 501, "too long"),
    ("", "empty"),
    ("s +", "not a valid expression"),
    ("import os", "not a valid expression"),
]


@pytest.mark.parametrize(("text", "match"), REFUSED, ids=[t[:40] for t, _ in REFUSED])
def test_refused(text: str, match: str) -> None:
    with pytest.raises(ValueError, match=match) as error:
        T.Formula(text)
    assert "\n" not in str(error.value)


_SIX = ",".join(f"Abs(s-{i / 9:.3f})" for i in range(6))
# Families of formulas that grow with n, each with the largest n the limits let through.
LARGEST = [
    ("sums of Min of six", lambda n: "+".join([f"Min({_SIX})"] * n) + " + 0.1", 5),
    ("nested Min and Max", lambda n: "Min(Max(" * n + "s" + ", 0.1), 0.9)" * n, 24),
    ("polynomials", lambda n: "+".join(f"{i}*s**{i}" for i in range(2, 2 * n + 2, 2)) + "+1", 33),
]


@pytest.mark.parametrize(("family", "text", "n"), LARGEST, ids=[f for f, _, _ in LARGEST])
def test_the_largest_formulas_are_built_at_once(family, text, n) -> None:
    """The largest formula of each family the limits admit takes SymPy under two seconds of
    this process's CPU time to parse, differentiate, compile and check (a few tenths on a
    2-core AMD EPYC); the next one is refused, so n is the largest."""
    with pytest.raises(ValueError, match="too long|syntax nodes|deeper"):
        T.Formula(text(n + 1))
    start = time.process_time()
    T.Formula(text(n))
    assert time.process_time() - start < 2.0, family


def test_huge_power_is_refused_at_once() -> None:
    start = time.perf_counter()
    for text in ("9**9**9", "(7*s)**(10**9)", "((2*s)**900)**900**900", "10**10**10**10"):
        with pytest.raises(ValueError, match="too large"):
            parse(text)
    assert time.perf_counter() - start < 5.0  # SymPy would take minutes or run out of memory


def test_the_text_never_reaches_eval(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    def forbidden(*args, **kwargs):
        raise AssertionError("eval, exec or sympify called on a formula")

    real_compile = builtins.compile

    def syntax_tree_only(source, filename, mode, flags=0, *args, **kwargs):
        # ast.parse compiles to a syntax tree only; anything else would make code
        assert flags & ast.PyCF_ONLY_AST, "a formula compiled to code"
        return real_compile(source, filename, mode, flags, *args, **kwargs)

    monkeypatch.setattr(builtins, "eval", forbidden)
    monkeypatch.setattr(builtins, "exec", forbidden)
    monkeypatch.setattr(builtins, "compile", syntax_tree_only)
    monkeypatch.setattr(sp, "sympify", forbidden)
    monkeypatch.setattr(sp, "parse_expr", forbidden)
    marker = tmp_path / "ran"
    assert T.Formula(SHIFTED) == T.Formula(SHIFTED)
    with pytest.raises(ValueError, match="not allowed"):
        T.Formula(f"__import__('os').system('touch {marker}')")
    with pytest.raises(ValueError, match="not allowed"):
        T.Formula(f"[c for c in ().__class__.__base__.__subclasses__()] and open('{marker}', 'w')")
    assert not marker.exists()


# ---------------------------------------------------------------------------------------
# Building by name, parameters, SymPy input


def test_by_name_and_params_round_trip() -> None:
    assert "formula" in T.NAMES
    rule = T.from_name("formula", formula=DYSTRESS)
    assert rule == T.Formula(DYSTRESS) and rule != T.Formula("0.1")
    assert rule.params() == {"formula": DYSTRESS}
    assert T.Formula(**rule.params()) == rule
    assert repr(rule) == "Formula('0.1 + 0.05*(1 - cos(pi*s))')"
    assert T.from_name("formula") == T.Formula(DYSTRESS)  # the default is the book's DySTreSS
    assert parse(rule.params()["formula"]) == rule.expression
    assert T.Formula("  0.1 +\n 0.05*(1 - cos(pi*s))") == rule  # whitespace is not meaning
    with pytest.raises(ValueError, match="tau_min does not apply to the temperature rule"):
        T.from_name("formula", tau_min=0.1)
    scheduled = T.from_name("formula", formula="0.2 - 0.001*progress", max_progress=150)
    assert scheduled.params() == {"formula": "0.2 - 0.001*progress", "max_progress": 150.0}
    assert T.Formula(**scheduled.params()) == scheduled
    assert repr(scheduled) == "Formula('0.2 - 0.001*progress', max_progress=150)"
    assert {rule: 1}[T.Formula(DYSTRESS)] == 1
    for copied in (pickle.loads(pickle.dumps(scheduled)), copy.deepcopy(scheduled)):
        assert copied == scheduled
        torch.testing.assert_close(copied.tau(GRID, 10.0), scheduled.tau(GRID, 10.0))


def test_from_a_sympy_expression() -> None:
    s, progress = sp.symbols("s progress")
    rule = T.Formula(0.15 - 0.05 * sp.cos(sp.pi * s))
    assert rule.text == "0.15 - 0.05*cos(pi*s)"  # floats as Python writes them
    assert T.Formula(**rule.params()) == rule
    torch.testing.assert_close(rule(GRID), T.DySTreSS(0.1, 0.2)(GRID), rtol=0, atol=1e-15)
    exact = T.Formula(sp.Rational(3, 20) - sp.cos(sp.pi * s) / 20)
    assert exact.text == "3/20 - cos(pi*s)/20" and exact.expression == rule.expression
    pieces = T.Formula(sp.Piecewise((0.1, (s > -0.5) & (s < 0.5)), (0.2, True)))
    torch.testing.assert_close(
        pieces(torch.tensor([-0.7, 0.0, 0.7])), torch.tensor([0.2, 0.1, 0.2])
    )
    assert T.Formula(sp.Rational(1, 5) + progress / 10000).needs_progress
    with pytest.raises(ValueError, match="only the symbols s and progress, got t"):
        T.Formula(0.1 + sp.Symbol("t"))
    with pytest.raises(ValueError, match="the function 'gamma'"):
        T.Formula(0.1 + sp.gamma(s + 2))
    with pytest.raises(ValueError, match="the function 'f'"):
        T.Formula(0.1 + sp.Function("f")(s) ** 2)
    with pytest.raises(ValueError, match="must be a string or a SymPy expression"):
        T.Formula([0.1])


def test_sympy_form_puts_in_the_symbols() -> None:
    rule = T.Formula("(0.1 + 0.05*(1 - cos(pi*s)))*(1 + progress/100)")
    x, t = sp.Symbol("x"), sp.Symbol("t", nonnegative=True)
    assert rule.sympy(x) == rule.expression.xreplace({SIMILARITY: x, PROGRESS: t})
    assert rule.sympy(x, progress=100).subs(x, 0) == sp.Rational(1, 5)
    assert rule.sympy(x, symbolic=True) == rule.sympy(x)
    slope = rule.logit_slope(x, progress=0)
    assert sp.simplify(slope - T.DySTreSS(0.1, 0.2).logit_slope(x)) == 0
    with pytest.raises(ValueError, match="progress must be a number or a SymPy expression"):
        rule.sympy(x, progress="1")


def test_max_progress_bounds_the_check() -> None:
    with pytest.raises(ValueError, match="progress in \\[0, 1000\\] epochs"):
        T.Formula("0.2 - 0.001*progress")
    assert T.Formula("0.2 - 0.001*progress", max_progress=150).tau(GRID, 150.0) > 0
    with pytest.raises(ValueError, match="max_progress must be > 0"):
        T.Formula("0.2", max_progress=0)


@pytest.mark.parametrize(
    "text", [*COMPILED, DYSTRESS, "0.2", "0.2 + 0.1*cos(progress)*(1 + s**2)/2"]
)
def test_no_value_leaves_the_device(text: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """tau, its derivative and the logit slope never read a tensor's value on the host (a
    CUDA sync): on the meta device, which has no values, they still run, and no
    item/float/bool of a tensor is taken."""
    rule = T.Formula(text)
    hidden = torch.empty(8, 8, device="meta")
    for name in ("item", "tolist", "__float__", "__bool__", "__int__"):
        monkeypatch.setattr(torch.Tensor, name, lambda *a, **k: pytest.fail("read on the host"))
    for s in (hidden, hidden.double()):
        tau = rule.tau(s, 3.0)
        assert tau.device.type == "meta" and tau.dtype == s.dtype
        assert tau.shape == (s.shape if rule.per_pair else ())
        assert rule.derivative(s, 3.0).device.type == "meta"
        assert rule.logit_slope(s, progress=3.0).shape == s.shape


def test_a_formula_of_s_and_progress_trains_with_tau_in_the_graph():
    """The loss passes the progress on to the slope of the effective logit."""
    from dyntemp import ntxent
    from dyntemp.loss import reference_ntxent

    rule = T.Formula("0.1 + 0.05*(1 - cos(pi*s)) + 0.001*progress")
    g = torch.Generator().manual_seed(3)
    z1 = torch.randn(6, 5, generator=g, dtype=torch.float64, requires_grad=True)
    z2 = (z1.detach() + 0.5 * torch.randn(6, 5, generator=g, dtype=torch.float64)).requires_grad_()
    ours = ntxent(z1, z2, rule, detach_temperature=False, progress=7.0)
    theirs = reference_ntxent(z1, z2, rule, detach_temperature=False, progress=7.0)
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
    for a, b in zip(
        torch.autograd.grad(ours, (z1, z2)), torch.autograd.grad(theirs, (z1, z2)), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
