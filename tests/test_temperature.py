"""Temperature rules: torch and SymPy forms agree; values, slopes and bad parameters."""

from __future__ import annotations

import inspect
import math

import pytest
import sympy as sp
import torch

from dyntemp import temperature as T

S = sp.Symbol("s", real=True)
GRID = torch.linspace(-1.0, 1.0, 401, dtype=torch.float64)

PER_PAIR = [
    T.DySTreSS(),
    T.DySTreSS(0.07, 0.2),
    T.DySTreSSNeurIPS(),
    T.DySTreSSNeurIPS(0.07, 0.2),
    T.TemperatureFree(),
    T.ShiftedDySTreSS(),
    T.ShiftedDySTreSS(0.05, 0.3, shift=-0.2, width=0.5),
    T.Linear(0.1, 0.2),
    T.Exponential(),
    T.Exponential(tau_min=0.1, tau_max=0.3, rate=1.0),
]


def sympy_values(rule: T.TemperatureRule, s: torch.Tensor, **subs: float) -> torch.Tensor:
    expr = rule.sympy(S, **subs)
    f = sp.lambdify([S, *[sp.Symbol(k) for k in subs]], expr, "math")
    return torch.tensor([float(f(float(x), *subs.values())) for x in s], dtype=s.dtype)


@pytest.mark.parametrize("rule", PER_PAIR, ids=repr)
def test_torch_matches_sympy(rule: T.TemperatureRule) -> None:
    torch.testing.assert_close(rule(GRID), sympy_values(rule, GRID), rtol=0, atol=1e-12)


@pytest.mark.parametrize("rule", PER_PAIR, ids=repr)
def test_derivative_matches_sympy(rule: T.TemperatureRule) -> None:
    grid = GRID[(GRID.abs() > 1e-9) & ((GRID - 0.4).abs() > 1e-9) & ((GRID - 0.2).abs() > 1e-9)]
    slope = sp.lambdify(S, sp.diff(rule.sympy(S), S), "math")
    expected = torch.tensor([float(slope(float(x))) for x in grid], dtype=grid.dtype)
    torch.testing.assert_close(rule.derivative(grid), expected, rtol=0, atol=1e-10)


@pytest.mark.parametrize("rule", PER_PAIR, ids=repr)
def test_generic_autograd_derivative_agrees(rule: T.TemperatureRule) -> None:
    grid = GRID[GRID.abs() > 1e-9]
    generic = T.TemperatureRule.derivative(rule, grid)
    torch.testing.assert_close(rule.derivative(grid), generic, rtol=0, atol=1e-12)


def test_dystress_shape() -> None:
    rule = T.DySTreSS(0.1, 0.2)
    values = rule(torch.tensor([-1.0, -0.5, 0.0, 0.5, 1.0], dtype=torch.float64))
    torch.testing.assert_close(
        values, torch.tensor([0.2, 0.15, 0.1, 0.15, 0.2], dtype=torch.float64)
    )
    # the paper's two written forms of the rule are the same function
    tau_min, tau_max = sp.symbols("tau_min tau_max", positive=True)
    other = tau_min + (tau_max - tau_min) / 2 * (1 - sp.cos(sp.pi * S))
    assert sp.simplify(rule.sympy(S, symbolic=True) - other) == 0


def test_the_two_versions_of_dystress() -> None:
    """The journal version's code (DySTreSS) gives every pair tau_min at s = 0; the NeurIPS-2023
    submission's code gave the negatives the cosine of pi s (tau_max at s = 0) and the
    positives DySTreSS's cosine."""
    s = torch.tensor([-1.0, -0.5, 0.0, 0.5, 1.0], dtype=torch.float64)
    journal, neurips = T.DySTreSS(0.1, 0.2), T.DySTreSSNeurIPS(0.1, 0.2)
    torch.testing.assert_close(neurips(s), torch.tensor([0.1, 0.15, 0.2, 0.15, 0.1]).double())
    assert neurips.positive_rule == journal and journal.positive_rule is None
    torch.testing.assert_close(neurips(s) + journal(s), torch.full_like(s, 0.3))
    # as the authors' code writes them: 1 + cos((0 + s) pi) and 1 + cos((1 + s) pi)
    tau_min, tau_max = sp.symbols("tau_min tau_max", positive=True)
    negatives = tau_min + 0.5 * (tau_max - tau_min) * (1 + sp.cos((0 + S) * sp.pi))
    positives = tau_min + 0.5 * (tau_max - tau_min) * (1 + sp.cos((1 + S) * sp.pi))
    assert sp.simplify(neurips.sympy(S, symbolic=True) - negatives) == 0
    assert sp.simplify(neurips.positive_rule.sympy(S, symbolic=True) - positives) == 0
    assert T.from_name("dystress-neurips", tau_min=0.07) == T.DySTreSSNeurIPS(0.07, 0.2)


def test_shifted_matches_paper_points() -> None:
    rule = T.ShiftedDySTreSS(0.1, 0.2, shift=-0.4, width=0.7)
    s = torch.tensor([-1.0, -0.3, 0.4, 0.7, 1.0], dtype=torch.float64)
    expected = torch.tensor([0.2, 0.1, 0.2, 0.2, 0.2], dtype=torch.float64)
    torch.testing.assert_close(rule(s), expected)


def test_exponential_profile_values() -> None:
    rule = T.Exponential()  # tau_min = a - b = 0.1, tau_max = a = 0.2, rate c = 3.5
    values = rule(torch.tensor([-1.0, 0.0, 1.0], dtype=torch.float64))
    assert values[1].item() == pytest.approx(0.1)
    assert values[0].item() == pytest.approx(0.2 - 0.1 * math.exp(-3.5))
    assert values[0].item() == pytest.approx(0.197, abs=5e-4)
    # max(a - b e^{-cs}, a - b e^{cs}) written as the paper does
    paper = torch.maximum(0.2 - 0.1 * torch.exp(-3.5 * GRID), 0.2 - 0.1 * torch.exp(3.5 * GRID))
    torch.testing.assert_close(rule(GRID), paper)


def test_linear_is_v_shaped() -> None:
    values = T.Linear(0.1, 0.3)(torch.tensor([-1.0, -0.5, 0.0, 0.5, 1.0], dtype=torch.float64))
    torch.testing.assert_close(values, torch.tensor([0.3, 0.2, 0.1, 0.2, 0.3], dtype=torch.float64))


def test_fixed_is_constant_and_same_shape() -> None:
    s = torch.rand(3, 4)
    tau = T.Fixed(0.5)(s)
    assert tau.shape == s.shape and torch.all(tau == 0.5)
    assert T.Fixed(0.5).sympy(S) == sp.Rational(1, 2)


def test_schedule_over_time() -> None:
    rule = T.CosineSchedule(0.1, 1.0, period=400)
    s = torch.zeros(2, 2)
    assert torch.allclose(rule(s, progress=0.0), torch.tensor(1.0))
    assert torch.allclose(rule(s, progress=200.0), torch.tensor(0.1))
    t = sp.Symbol("t")
    for epoch in (0.0, 37.5, 123.0, 350.0):
        expected = float(rule.sympy(S, progress=t).subs(t, epoch))
        assert rule(s, progress=epoch)[0, 0].item() == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError, match="progress"):
        rule(s)


def test_macl_reads_positive_mean() -> None:
    rule = T.MACL(tau=0.1, alpha=0.5, a0=0.2)
    s = torch.zeros(3)
    tau = rule(s, positive_mean=torch.tensor(0.6))
    assert torch.allclose(tau, torch.full((3,), 0.1 * (1 + 0.5 * 0.4)))
    a = sp.Symbol("A")
    assert rule.sympy(S, positive_mean=a).subs(a, sp.Rational(3, 5)) == sp.Rational(12, 100)
    assert rule.sympy(S, positive_mean=sp.Rational(3, 5)) == sp.Rational(12, 100)
    with pytest.raises(ValueError, match="positive similarity"):
        rule(s)


def test_symbolic_parameters() -> None:
    expr = T.DySTreSS(0.1, 0.2).sympy(S, symbolic=True)
    assert {str(x) for x in expr.free_symbols} == {"s", "tau_min", "tau_max"}


@pytest.mark.parametrize(
    ("name", "params", "match"),
    [
        ("fixed", {"tau": 0.0}, "tau must be > 0"),
        ("fixed", {"tau": -1.0}, "tau must be > 0"),
        ("fixed", {"tau": float("nan")}, "tau must be a finite number"),
        ("dystress", {"tau_min": 0.3, "tau_max": 0.2}, "tau_min must be <= tau_max"),
        ("dystress", {"tau_min": float("inf")}, "tau_min must be a finite number"),
        ("shifted", {"width": 0.0}, "width must be > 0"),
        ("linear", {"tau_min": -0.1}, "tau_min must be > 0"),
        ("exponential", {"rate": -1.0}, "rate must be >= 0"),
        ("exponential", {"tau_min": 0.3, "tau_max": 0.2}, "tau_min must be <= tau_max"),
        ("schedule", {"period": 0}, "period must be > 0"),
        ("macl", {"tau_floor": 0.2}, "tau_floor must be <= tau"),
        ("macl", {"tau_floor": 0.0}, "tau_floor must be > 0"),
        ("macl", {"reweight": 1}, "reweight must be True or False"),
        ("macl", {"alpha": float("inf")}, "alpha must be a finite number"),
        ("learned", {"tau": 0.005}, "tau_floor must be <= tau"),
        ("dual", {"dt_m": 0.0}, "dt_m must be > 0"),
        ("dual", {"tau": -0.1}, "tau must be > 0"),
        ("temperature-free", {"tau": 0.1}, "rule 'temperature-free', which takes no arguments"),
        ("learned", {"tau": 0.0}, "tau must be > 0"),
        ("learned", {"alpha": 0.5}, "alpha does not apply to the temperature rule 'learned'"),
        ("dystress", {"tau": 0.2}, "tau does not apply to the temperature rule 'dystress'"),
        ("warm", {}, "unknown temperature rule 'warm'; choose one of fixed, dystress"),
    ],
)
def test_bad_parameters(name: str, params: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        T.from_name(name, **params)


def test_from_name_builds_every_rule() -> None:
    assert T.from_name("dystress", tau_min=0.07, tau_max=0.2) == T.DySTreSS(0.07, 0.2)
    assert T.from_name("FIXED", tau=0.5) == T.Fixed(0.5)
    for name in T.NAMES:
        assert isinstance(T.from_name(name), T.TemperatureRule)


def test_options_are_the_constructors_arguments() -> None:
    """OPTIONS, the command line's temperature options, come from the signatures."""
    expected: dict[str, list[str]] = {}
    for name in T.NAMES:
        for argument in inspect.signature(T._RULES[name]).parameters:
            expected.setdefault(argument, []).append(name)
    assert {k: list(v) for k, v in T.OPTIONS.items()} == expected
    assert T.OPTIONS["tau_floor"] == ("macl", "learned")


@pytest.mark.parametrize("name", T.NAMES)
def test_every_argument_says_what_it_means(name: str) -> None:
    rule = T._RULES[name]
    arguments = set(inspect.signature(rule).parameters)
    assert set(rule.arguments) == arguments, (
        f"{rule.__name__}.arguments must say what each constructor argument means: "
        f"missing {sorted(arguments - set(rule.arguments))}, "
        f"not arguments {sorted(set(rule.arguments) - arguments)}"
    )


def test_option_help_names_the_rules_and_their_defaults() -> None:
    assert T.option_help("rate") == "exponential: the rate c (default: 3.5, the paper's)"
    assert T.option_help("tau_max") == (
        "dystress, shifted, linear, exponential: the highest temperature (default: 0.2); "
        "dystress-neurips: the highest temperature: the positives' at s = +-1, the negatives' "
        "at s = 0 (default: 0.2); schedule: the highest temperature (default: 1); "
        "isogclr: the highest individual temperature (default: 0.7, LibAUC's)"
    )
    assert T.option_help("reweight").endswith("(default: on)")
    assert "default" not in T.option_help("formula")  # the command line needs --formula


def test_dual_temperature_is_a_weighted_fixed_temperature() -> None:
    rule = T.DualTemperature(0.1, dt_m=10.0)
    assert rule.reweight and not rule.per_pair and rule.inter_scale == pytest.approx(0.1)
    assert rule.sympy(S) == sp.Rational(1, 10) and rule.params() == {"tau": 0.1, "dt_m": 10.0}
    assert float(rule.tau(torch.zeros(3))) == pytest.approx(0.1)
    assert T.MACL().inter_scale is None  # MACL's weight has no numerator
    with pytest.raises(ValueError, match=r"turn the decoupled loss off \(--no-decoupled\)"):
        rule.check_decoupled(True, decoupled_off="--no-decoupled")
    rule.check_decoupled(False)


def test_a_reweighting_rule_refuses_the_decoupled_loss() -> None:
    T.MACL().check_decoupled(False)
    T.MACL(reweight=False).check_decoupled(True)
    T.Fixed().check_decoupled(True)
    with pytest.raises(ValueError, match=r"reweighting off \(reweight=False\)"):
        T.MACL().check_decoupled(True)
    with pytest.raises(ValueError, match=r"\(--no-reweight\) or the decoupled loss off \(--x\)"):
        T.MACL().check_decoupled(True, reweight_off="--no-reweight", decoupled_off="--x")


ALL_RULES = [
    *PER_PAIR,
    T.Fixed(0.2),
    T.CosineSchedule(0.1, 1.0, period=40),
    T.MACL(0.1, 0.5, 0.0),
    T.MACL(0.05, 2.0, 0.8, reweight=False, tau_floor=0.02),
    T.Learned(0.07, tau_floor=0.01),
    T.DualTemperature(),
    T.DualTemperature(0.2, dt_m=3.0),
    T.TemperatureFree(),
]


@pytest.mark.parametrize("rule", ALL_RULES, ids=repr)
def test_params_rebuild_the_rule(rule: T.TemperatureRule) -> None:
    name = {v: k for k, v in T._RULES.items()}[type(rule)]
    assert T.from_name(name, **rule.params()) == rule


@pytest.mark.parametrize("rule", PER_PAIR, ids=repr)
def test_logit_slope_torch_matches_sympy(rule: T.TemperatureRule) -> None:
    expr = rule.logit_slope(S)
    assert sp.simplify(expr - sp.diff(S / rule.sympy(S), S)) == 0
    f = sp.lambdify(S, expr, "math")
    expected = torch.tensor([float(f(float(x))) for x in GRID], dtype=GRID.dtype)
    torch.testing.assert_close(rule.logit_slope(GRID), expected, rtol=0, atol=1e-9)


def test_logit_slope_takes_the_other_inputs() -> None:
    rule = T.MACL(0.1, 0.5, 0.0)
    slope = rule.logit_slope(S, positive_mean=sp.Rational(1, 2))
    assert slope == 1 / (sp.Rational(1, 10) * sp.Rational(5, 4))
    s = torch.tensor([0.3, -0.2])
    tau = rule.tau(s, positive_mean=torch.tensor(0.5))
    torch.testing.assert_close(rule.logit_slope(s, tau), torch.full((2,), 8.0))


class _FlatSlope(T.TemperatureRule):
    """A per-pair rule whose derivative is a 0-d tensor, as the base class allows."""

    def tau(self, s, progress=None, positive_mean=None):
        return torch.full_like(s, 0.25)

    def derivative(self, s):
        return s.new_zeros(())


def test_logit_slope_broadcasts_a_0d_derivative() -> None:
    s = torch.rand(3, 3)
    torch.testing.assert_close(_FlatSlope().logit_slope(s), torch.full((3, 3), 4.0))


def test_temperature_free_is_the_log_odds_of_the_similarity() -> None:
    """Kim and Kim's logit, log(p / (1 - p)) with p = (1 + s) / 2, is s / tau(s) = 2 atanh(s)."""
    rule = T.TemperatureFree()
    s = GRID[(GRID.abs() < 0.999) & (GRID.abs() > 0.001)]  # the series near 0: tested below
    log_odds = torch.log((1 + s) / (1 - s))
    torch.testing.assert_close(s / rule(s), log_odds, rtol=1e-13, atol=0)  # log loses digits
    torch.testing.assert_close(s / rule(s), 2 * torch.atanh(s), rtol=1e-14, atol=0)
    closed = rule.closed_form(S)
    assert sp.simplify(S / closed - 2 * sp.atanh(S)) == 0
    assert sp.simplify(sp.diff(S / closed, S) - 2 / (1 - S**2)) == 0  # the logit's slope
    assert sp.limit(closed, S, 0) == sp.Rational(1, 2)
    assert rule.params() == {} and T.from_name("temperature-free") == rule


def test_temperature_free_handles_its_singular_points() -> None:
    """At s = 0 (0 / 0) the series takes over, continuous with the closed form; at s = +-1 and
    beyond (float32's self-pair) the temperature stays finite and positive."""
    rule = T.TemperatureFree()
    edge = torch.tensor([0.001, -0.001], dtype=torch.float64)
    series = 0.5 - edge**2 / 6 - 2 * edge**4 / 45
    torch.testing.assert_close(rule(edge), series, rtol=1e-15, atol=0)  # both branches agree
    assert rule(torch.zeros(1, dtype=torch.float64)).item() == 0.5
    for dtype in (torch.float64, torch.float32):
        s = torch.tensor([-1.0000001, -1.0, 0.0, 1.0, 1.0000001], dtype=dtype)
        tau = rule(s)
        assert torch.isfinite(tau).all() and (tau > 0).all(), tau
        assert torch.isfinite(rule.derivative(s)).all()
        assert (s / tau).abs().max() < 14.6  # the logit held at 2 atanh(1 - 1e-6)


def test_temperature_free_is_a_one_line_formula() -> None:
    """The reader's Formula of the same text runs the very same code."""
    rule, formula = T.TemperatureFree(), T.Formula(T.TEMPERATURE_FREE)
    for dtype in (torch.float64, torch.float32):
        s = GRID.to(dtype)
        assert torch.equal(formula(s), rule(s))
        assert torch.equal(formula.derivative(s), rule.derivative(s))
    assert sp.simplify(formula.sympy(S) - rule.sympy(S)) == 0
