"""Temperature rules: how hot the softmax of NT-Xent runs, pair by pair.

Each rule is a small object. Called on a tensor of cosine similarities it returns the
temperature of every pair, a tensor of the same shape::

    rule = DySTreSS(tau_min=0.1, tau_max=0.2)
    tau = rule(s)                       # same shape as s

``rule.sympy(s)`` returns the very same rule as a SymPy expression of the symbol ``s``, so
the book derives its mathematics from the definitions the loss uses; with
``symbolic=True`` the parameters stay symbols too. ``rule.derivative(s)`` is d tau / d s and
``rule.logit_slope(s)`` the slope of the effective logit, d(s / tau) / ds, for a tensor or a
SymPy symbol alike: the loss uses it when gradients flow through the temperature, the book
when it analyses a rule.

Some rules need more than the similarity: ``CosineSchedule`` reads the training
``progress`` (in epochs), ``MACL`` the batch's mean positive similarity ``positive_mean``;
``tau`` and ``sympy`` take both under those names.

Every rule is built by name with the options of the command line:
``from_name("exponential", tau_min=0.1, tau_max=0.2, rate=3.5)``; ``rule.params()`` gives
them back. ``OPTIONS`` lists the constructors' arguments with the rules that take each, read
from their signatures, and ``option_help`` says what one means (from each rule's
``arguments``): the command line's temperature flags are made from them.

The base class ``TemperatureRule`` lives in ``dyntemp.rule``, and ``Formula``, a rule from one
formula of s, in ``dyntemp.formula`` (which compiles SymPy expressions to torch code, the
code the rules here run too); both are importable from here.

``DySTreSS`` is the rule as the journal version's code runs it (one cosine for every pair,
tau_min at s = 0); ``DySTreSSNeurIPS`` as the NeurIPS-2023 submission's code ran it, the
negative pairs under the cosine of pi s (tau_max at s = 0) and the positive pairs under
DySTreSS's, given by its ``positive_rule``, which the loss reads. ``TemperatureFree`` is Kim
and Kim's temperature-free InfoNCE written as tau(s) = s / (2 atanh(s)), its singular points
handled (``TEMPERATURE_FREE``, the same as a one-line ``Formula``).

Two rules go beyond a temperature. ``MACL`` (with ``reweight``) also weights each anchor's loss
by the detached 1 / (1 - P_ip), and says so by its attribute ``reweight``, which the loss
reads. ``Learned`` holds a parameter, log tau, trained with the network: ``rule.parameters()``
lists it, the loss returns its gradient through ``rule.parameter_gradients``, and
``rule.state_dict()`` / ``load_state_dict`` carry it through checkpoints. ``ISogCLR``
(``dyntemp.isogclr``) holds a temperature for every training image, learned by its own step in
its own loss (``isogclr_loss``, with the images' indices), and carried the same way.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, ClassVar

import sympy as sp
import torch
from torch import Tensor, nn

from dyntemp import checks
from dyntemp.formula import SIMILARITY, Formula
from dyntemp.isogclr import ISogCLR
from dyntemp.rule import TemperatureRule

__all__ = [
    "NAMES",
    "OPTIONS",
    "CosineSchedule",
    "DySTreSS",
    "DualTemperature",
    "DySTreSSNeurIPS",
    "Exponential",
    "Fixed",
    "Formula",
    "ISogCLR",
    "Learned",
    "Linear",
    "MACL",
    "ProfileRule",
    "ShiftedDySTreSS",
    "TEMPERATURE_FREE",
    "TemperatureFree",
    "TemperatureRule",
    "from_name",
    "option_help",
]


def _range(tau_min: float, tau_max: float) -> tuple[float, float]:
    tau_min = checks.number("tau_min", tau_min, above=0)
    tau_max = checks.number("tau_max", tau_max, above=0)
    checks.at_most("tau_min", tau_min, "tau_max", tau_max)
    return tau_min, tau_max


#: The texts of ``tau_min`` and ``tau_max``, for the rules that take both.
_RANGE = {
    "tau_min": "the lowest temperature (default: {default})",
    "tau_max": "the highest temperature (default: {default})",
}


def _exact(name: str, value: float, symbolic: bool) -> sp.Expr:
    """A parameter for SymPy: a positive symbol, or the exact decimal value (0.1 -> 1/10)."""
    if symbolic:
        return sp.Symbol(name, positive=True)
    return sp.Rational(repr(value))


class ProfileRule(TemperatureRule):
    """A per-pair rule written once, as its SymPy form (``sympy``): the tensor code of tau and
    of its derivative are compiled from that expression (``dyntemp.formula``), the same code
    a reader's ``Formula`` gets, and as fast as the forms once written by hand
    (``python -m dyntemp bench loss`` measures the DySTreSS formula beside this class)."""

    def tau(self, s, progress=None, positive_mean=None):
        return _profile(self).tau(s)

    def derivative(self, s):
        return _profile(self).derivative(s)


@functools.lru_cache(maxsize=256)
def _compiled(kind: type, params: tuple[tuple[str, float], ...]) -> TemperatureRule:
    return Formula(kind(**dict(params)).sympy(SIMILARITY))


def _profile(rule: ProfileRule) -> TemperatureRule:
    """The compiled formula of ``rule``, made once for each kind and parameters."""
    return _compiled(type(rule), tuple(rule.params().items()))


class Fixed(TemperatureRule):
    """One temperature for every pair: SimCLR's NT-Xent."""

    per_pair = False
    arguments = {"tau": "the temperature (default: {default})"}

    def __init__(self, tau: float = 0.2) -> None:
        self.tau_value = checks.number("tau", tau, above=0)

    def params(self) -> dict[str, float]:
        return {"tau": self.tau_value}

    def tau(self, s, progress=None, positive_mean=None):
        return s.new_full((), self.tau_value)  # a fill, not a host-to-device copy

    def derivative(self, s: Tensor) -> Tensor:
        return s.new_zeros(())

    def sympy(self, s, *, progress=None, positive_mean=None, symbolic=False):
        return _exact("tau", self.tau_value, symbolic)


class DySTreSS(ProfileRule):
    """The paper's cosine rule, as the journal version's code runs it: for every pair, tau_max
    at s = +-1, tau_min at s = 0.

    tau(s) = tau_min + (tau_max - tau_min)/2 * (1 + cos(pi (1 + s)))

    Source: github.com/sadimanna/DySTreSS (the code of the IEEE Transactions on Artificial
    Intelligence version), ``smallscale/main.py`` lines 30 and 48 (``get_temp_positive`` and
    ``get_temp_negative``, both ``tmin + 0.5*(tmax - tmin)*(1 + cos((1 + cossim)*pi))``) and
    ``imagenet/ts_ntx_ent_loss.py`` line 81 (one ``get_temp`` for the whole matrix). The
    NeurIPS-2023 submission's code gave the negative pairs another profile:
    ``DySTreSSNeurIPS`` (``"dystress-neurips"``).
    """

    arguments = _RANGE

    def __init__(self, tau_min: float = 0.1, tau_max: float = 0.2) -> None:
        self.tau_min, self.tau_max = _range(tau_min, tau_max)

    def sympy(self, s, *, progress=None, positive_mean=None, symbolic=False):
        lo = _exact("tau_min", self.tau_min, symbolic)
        hi = _exact("tau_max", self.tau_max, symbolic)
        return lo + (hi - lo) / 2 * (1 + sp.cos(sp.pi * (1 + s)))


class DySTreSSNeurIPS(ProfileRule):
    """DySTreSS as the NeurIPS-2023 submission's code ran it: the negatives' cosine peaks at s = 0.

    Negative pairs: tau(s) = tau_min + (tau_max - tau_min)/2 * (1 + cos(pi s)), tau_max at
    s = 0 and tau_min at s = +-1 (``sympy`` and ``tau`` are this profile). Positive pairs:
    ``DySTreSS``'s cosine, tau_min at s = 0 and tau_max at s = +-1 (``positive_rule``, which the
    loss applies to the positive pairs).

    Source: github.com/subanon/dystress-nips2023 (the anonymous code of the submission),
    ``main.py`` as first uploaded (commit a545f71, 2023-05-16: lines 39 and 69) and at commit
    00df3f5 (2023-05-24: lines 31 and 49): ``get_temp_positive`` is
    ``tmin + 0.5*(tmax - tmin)*(1 + cos((1 + cossim)*pi))`` and ``get_temp_negative``
    ``tmin + 0.5*(tmax - tmin)*(1 + cos((0 + cossim)*pi))``, both on the detached similarities
    (``positive_samples`` and ``negative_samples``). The repository's last commit (eae44ef, the
    same day) writes ``(1 + cossim)`` for the negatives too: the rule of ``DySTreSS``, which the
    journal version's code keeps.
    """

    arguments = {
        "tau_min": "the lowest temperature: the positives' at s = 0, the negatives' at s = +-1 "
        "(default: {default})",
        "tau_max": "the highest temperature: the positives' at s = +-1, the negatives' at s = 0 "
        "(default: {default})",
    }

    def __init__(self, tau_min: float = 0.1, tau_max: float = 0.2) -> None:
        self.tau_min, self.tau_max = _range(tau_min, tau_max)

    @property
    def positive_rule(self) -> DySTreSS:  # type: ignore[override]
        """The positive pairs' rule: DySTreSS's cosine with the same range."""
        return DySTreSS(self.tau_min, self.tau_max)

    def sympy(self, s, *, progress=None, positive_mean=None, symbolic=False):
        lo = _exact("tau_min", self.tau_min, symbolic)
        hi = _exact("tau_max", self.tau_max, symbolic)
        return lo + (hi - lo) / 2 * (1 + sp.cos(sp.pi * s))


class ShiftedDySTreSS(ProfileRule):
    """The paper's DySTreSS*: the cosine shifted by ``shift`` and stretched to ``width``.

    tau(s) = tau_min + (tau_max - tau_min)/2 * (1 + cos(pi (s + shift) / width)) for
    s <= -shift, and tau_max above.
    """

    arguments = {
        **_RANGE,
        "shift": "the shift of the cosine (default: {default}, the paper's)",
        "width": "the width of the cosine (default: {default}, the paper's)",
    }

    def __init__(
        self, tau_min: float = 0.1, tau_max: float = 0.2, shift: float = -0.4, width: float = 0.7
    ) -> None:
        self.tau_min, self.tau_max = _range(tau_min, tau_max)
        self.shift = checks.number("shift", shift)
        self.width = checks.number("width", width, above=0)

    def sympy(self, s, *, progress=None, positive_mean=None, symbolic=False):
        lo = _exact("tau_min", self.tau_min, symbolic)
        hi = _exact("tau_max", self.tau_max, symbolic)
        shift = sp.Symbol("Delta_s", real=True) if symbolic else sp.Rational(repr(self.shift))
        width = _exact("k", self.width, symbolic)
        curve = lo + (hi - lo) / 2 * (1 + sp.cos(sp.pi * (s + shift) / width))
        return sp.Piecewise((curve, s <= -shift), (hi, True))


class Linear(ProfileRule):
    """V-shaped in |s|: tau(s) = tau_min + (tau_max - tau_min) |s|."""

    arguments = _RANGE

    def __init__(self, tau_min: float = 0.1, tau_max: float = 0.2) -> None:
        self.tau_min, self.tau_max = _range(tau_min, tau_max)

    def sympy(self, s, *, progress=None, positive_mean=None, symbolic=False):
        lo = _exact("tau_min", self.tau_min, symbolic)
        hi = _exact("tau_max", self.tau_max, symbolic)
        return lo + (hi - lo) * sp.Abs(s)


class Exponential(ProfileRule):
    """tau(s) = a - b e^{-c|s|} with a = tau_max, a - b = tau_min = tau(0) and c = rate.

    The same as max(a - b e^{-cs}, a - b e^{cs}); it rises from tau_min at s = 0 towards
    tau_max as |s| grows (to a - b e^{-c} at |s| = 1).
    """

    arguments = {**_RANGE, "rate": "the rate c (default: {default}, the paper's)"}

    def __init__(self, tau_min: float = 0.1, tau_max: float = 0.2, rate: float = 3.5) -> None:
        self.tau_min, self.tau_max = _range(tau_min, tau_max)
        self.rate = checks.number("rate", rate, low=0)

    def sympy(self, s, *, progress=None, positive_mean=None, symbolic=False):
        lo = _exact("tau_min", self.tau_min, symbolic)
        hi = _exact("tau_max", self.tau_max, symbolic)
        c = _exact("c", self.rate, symbolic)
        return hi - (hi - lo) * sp.exp(-c * sp.Abs(s))


#: Kim and Kim's temperature-free InfoNCE (arXiv 2501.17683) as a temperature: the logit
#: s / tau(s) is the log-odds of (1 + s) / 2, log((1 + s) / (1 - s)) = 2 atanh(s), so
#: tau(s) = s / (2 atanh(s)). Its singular points are handled: at s = 0 (0 / 0; the limit is
#: 1/2) by the series 1/2 - s^2/6 - 2 s^4/45 for |s| < 0.001 (the next term, 22 s^6/945, is
#: below float64's rounding there), and at s = +-1 (atanh infinite: tau = 0) by holding the
#: similarity inside the atanh to +-(1 - 1e-6), where the logit is +-14.5 (a cosine of 1 in
#: float32, the self-pair's, or just above it, then gives a finite positive temperature).
TEMPERATURE_FREE = (
    "Piecewise((1/2 - s**2/6 - 2*s**4/45, Abs(s) < 0.001), "
    "(s/(2*atanh(Max(-0.999999, Min(s, 0.999999)))), True))"
)


class TemperatureFree(ProfileRule):
    """Temperature-free InfoNCE (Kim and Kim 2025, arXiv 2501.17683), written as tau(s).

    The paper replaces the logit s / tau by the log-odds of the similarity read as a
    probability, p = (1 + s) / 2: log(p / (1 - p)) = log((1 + s) / (1 - s)) = 2 atanh(s). As
    a temperature that is tau(s) = s / (2 atanh(s)): 1/2 at s = 0, falling to 0 at s = +-1,
    and the effective logit's slope 2 / (1 - s^2) is positive everywhere. ``sympy`` gives the
    formula the tensor code runs, ``TEMPERATURE_FREE`` (the series near 0, the similarity
    held inside +-(1 - 1e-6) in the atanh), which is also a reader's one-line ``Formula``;
    ``closed_form`` gives s / (2 atanh(s)) itself. No parameters: that is the point.

    The paper's loss is this rule with the temperature in the graph
    (``detach_temperature=False``, ``--no-detach-temperature``): the gradient then flows
    through the map, d(2 atanh s)/ds = 2 / (1 - s^2), as in the paper. Detached (the
    library's default, DySTreSS's way) it is another method: the arctanh profile used as a
    stop-gradient temperature.
    """

    arguments: ClassVar[dict[str, str]] = {}

    def sympy(self, s, *, progress=None, positive_mean=None, symbolic=False):
        return Formula(TEMPERATURE_FREE).sympy(s)

    @staticmethod
    def closed_form(s: sp.Expr) -> sp.Expr:
        """tau(s) = s / (2 atanh(s)), without the handling of s = 0 and s = +-1."""
        return s / (2 * sp.atanh(s))


class CosineSchedule(TemperatureRule):
    """Kukleva et al.'s schedule over training time, one temperature for every pair.

    tau(t) = tau_min + (tau_max - tau_min)/2 * (1 + cos(2 pi t / period)), t in epochs: lightly's
    ``cosine_schedule(step, ..., tau_max, tau_min, period)`` with the period in steps
    (tests/test_references.py).
    """

    per_pair = False
    needs_progress = True
    arguments = {**_RANGE, "period": "the period in epochs (default: {default}, the paper's)"}

    def __init__(self, tau_min: float = 0.1, tau_max: float = 1.0, period: float = 400.0) -> None:
        self.tau_min, self.tau_max = _range(tau_min, tau_max)
        self.period = checks.number("period", period, above=0)

    def tau(self, s, progress=None, positive_mean=None):
        t = float(progress) if progress is not None else 0.0
        half = 0.5 * (self.tau_max - self.tau_min)
        value = self.tau_min + half * (1.0 + math.cos(2 * math.pi * t / self.period))
        return s.new_full((), value)  # a fill, not a host-to-device copy

    def derivative(self, s):
        return s.new_zeros(())

    def sympy(self, s, *, progress=None, positive_mean=None, symbolic=False):
        t = sp.Symbol("t", nonnegative=True) if progress is None else sp.sympify(progress)
        lo = _exact("tau_min", self.tau_min, symbolic)
        hi = _exact("tau_max", self.tau_max, symbolic)
        period = _exact("T", self.period, symbolic)
        return lo + (hi - lo) / 2 * (1 + sp.cos(2 * sp.pi * t / period))


class MACL(TemperatureRule):
    """MACL (Huang et al., ICML 2023): the model-aware temperature and the reweighting.

    tau = max(tau0 (1 + alpha (A - a0)), tau_floor), with A the batch's mean positive
    similarity, detached, so the temperature is one number for the whole batch; with
    ``reweight`` (the default, as the authors train) each anchor's loss -log P_ip is
    multiplied by the detached, unnormalised w_i = 1 / (1 - P_ip), and the loss is the mean
    of w_i L_i.

    As the authors' code: ``macl.py`` of github.com/chenhaoxing/MACL computes A as the mean
    of the positives' similarities (``trace(fx @ gx.T) / N``, detached), tau as
    ``tau_init * (1 + beta * A)`` (``MACLb``; here a0 = 0) and the loss as
    ``-W.detach() * log(P).diag()`` with ``W = 1 / sum of P over the negatives`` =
    1 / (1 - P_ip), averaged without normalising W; lightly's ``MACLLoss`` does the same with
    A0 (and adds 1e-8 to 1 - P_ip; tests/test_references.py checks the rule against it).
    Neither clamps the temperature: a setting with 1 + alpha (A - a0) <= 0 for some A in
    [-1, 1] (the SimCSE setting tau0 = 0.05, alpha = 2, a0 = 0.8 at A < 0.3) would there give a
    negative temperature, which reverses the softmax. Every finite alpha and a0 is accepted
    here; at that edge the temperature is held at ``tau_floor`` (default 0.01, the lowest
    temperature CLIP allows), a choice of this library, not of the paper. ``sympy`` reads A
    as ``positive_mean`` (a symbol ``A`` if not given) and gives the unclamped formula.
    """

    per_pair = False
    needs_positive_mean = True
    arguments = {
        "tau": "tau0, the temperature at A = A0 (default: {default})",
        "alpha": "the sensitivity alpha (default: {default}, the paper's)",
        "a0": "the reference positive similarity A0 (default: {default}, the paper's)",
        "reweight": "weight each anchor's loss by the detached 1 / (1 - P_ip), as the authors "
        "train (default: {default})",
        "tau_floor": "the lowest temperature (default: {default}, CLIP's)",
    }

    def __init__(
        self,
        tau: float = 0.1,
        alpha: float = 0.5,
        a0: float = 0.0,
        reweight: bool = True,
        tau_floor: float = 0.01,
    ) -> None:
        self.tau0 = checks.number("tau", tau, above=0)
        self.alpha = checks.number("alpha", alpha)
        self.a0 = checks.number("a0", a0)
        self.reweight = checks.boolean("reweight", reweight)
        self.tau_floor = checks.number("tau_floor", tau_floor, above=0)
        checks.at_most(
            "tau_floor", self.tau_floor, "tau", self.tau0, " (the temperature at A = a0)"
        )

    def params(self) -> dict[str, Any]:
        return {
            "tau": self.tau0,
            "alpha": self.alpha,
            "a0": self.a0,
            "reweight": self.reweight,
            "tau_floor": self.tau_floor,
        }

    def __repr__(self) -> str:
        return (
            f"MACL(tau={self.tau0:g}, alpha={self.alpha:g}, a0={self.a0:g}, "
            f"reweight={self.reweight}, tau_floor={self.tau_floor:g})"
        )

    def tau(self, s, progress=None, positive_mean=None):
        if positive_mean is None:
            a = s.new_zeros(())
        else:
            a = torch.as_tensor(positive_mean).detach().to(s)
        return a.sub(self.a0).mul_(self.alpha).add_(1.0).mul_(self.tau0).clamp_min_(self.tau_floor)

    def derivative(self, s):
        return s.new_zeros(())

    def sympy(self, s, *, progress=None, positive_mean=None, symbolic=False):
        a = sp.Symbol("A", real=True) if positive_mean is None else sp.sympify(positive_mean)
        tau0 = _exact("tau_0", self.tau0, symbolic)
        alpha = _exact("alpha", self.alpha, symbolic)
        a0 = sp.Symbol("A_0", real=True) if symbolic else sp.Rational(repr(self.a0))
        return tau0 * (1 + alpha * (a - a0))


class DualTemperature(TemperatureRule):
    """Dual temperature (Zhang et al., CVPR 2022): one temperature inside each anchor's
    softmax, another, detached, weighting the anchor.

    L = mean_i w_i (-log P_ip), P the softmax of s / tau (the intra-anchor temperature, the
    rule's temperature), w_i = (1 - P'_ip) / (1 - P_ip) detached, P' the softmax of
    s / (dt_m tau) (the inter-anchor temperature). As the authors' code:
    ``solo/losses/dual_temperature_loss.py`` of github.com/ChaoningZhang/Dual-temperature
    (lines 45-61: ``logits_intra = logits / temperature``, ``logits_inter = logits /
    (temperature*dt_m)``, ``inter_intra = (1 - prob_inter[:, 0]) / (1 - prob_intra[:, 0])``,
    ``loss = inter_intra.detach() * loss``, the mean), with their defaults tau = 0.1,
    dt_m = 10 (``solo/methods/simco_dual_temperature.py``, ``bash_files/simco.sh``). The
    authors' SimCo contrasts each view's anchors with the other view's batch alone (N - 1
    negatives); here the anchors are NT-Xent's, 2N - 2 negatives from both views (and MoCo's
    queue with ``--method moco``). The loss reads ``reweight`` and ``inter_scale`` = 1 / dt_m.
    """

    per_pair = False
    reweight = True
    arguments = {
        "tau": "the intra-anchor temperature, inside each anchor's softmax (default: "
        "{default}, the authors')",
        "dt_m": "the inter-anchor temperature of dual temperature's weight is dt_m * tau "
        "(default: {default}, the authors')",
    }

    def __init__(self, tau: float = 0.1, dt_m: float = 10.0) -> None:
        self.tau_value = checks.number("tau", tau, above=0)
        self.dt_m = checks.number("dt_m", dt_m, above=0)

    @property
    def inter_scale(self) -> float:  # type: ignore[override]
        """tau / tau_inter = 1 / dt_m: the intra-anchor logits times this are the inter's."""
        return 1.0 / self.dt_m

    def params(self) -> dict[str, float]:
        return {"tau": self.tau_value, "dt_m": self.dt_m}

    def check_decoupled(self, decoupled, *, reweight_off="", decoupled_off="decoupled=False"):
        if decoupled:
            raise ValueError(
                f"{self!r} weights each anchor's loss by (1 - P'_ip) / (1 - P_ip), which needs "
                f"the positive in the denominator: turn the decoupled loss off ({decoupled_off})"
            )

    def tau(self, s, progress=None, positive_mean=None):
        return s.new_full((), self.tau_value)

    def derivative(self, s):
        return s.new_zeros(())

    def sympy(self, s, *, progress=None, positive_mean=None, symbolic=False):
        return _exact("tau", self.tau_value, symbolic)


class Learned(TemperatureRule):
    """A temperature learned with the network, as CLIP does: tau = exp(theta), tau >= tau_floor.

    The parameter theta = log tau starts at log ``tau`` and is trained by the optimiser (no
    weight decay); one temperature for every pair. As in CLIP (Radford et al. 2021: initial
    0.07, the logit scale 1 / tau clipped at 100, so tau >= 0.01) the floor is 0.01 by
    default; the trainer clamps theta to log tau_floor after every step (``clamp_``), as
    OpenAI's and OpenCLIP's training code clamp the logit scale, and the forward clamps it
    too, with a zero gradient strictly below the floor. ``params()`` are the constructor's
    settings (the initial tau), ``state_dict()`` the learned value.
    """

    per_pair = False
    arguments = {
        "tau": "the initial temperature (default: {default})",
        "tau_floor": "the lowest temperature (default: {default}, CLIP's)",
    }

    def __init__(self, tau: float = 0.2, tau_floor: float = 0.01) -> None:
        self.tau_init = checks.number("tau", tau, above=0)
        self.tau_floor = checks.number("tau_floor", tau_floor, above=0)
        checks.at_most(
            "tau_floor", self.tau_floor, "tau", self.tau_init, " (the initial temperature)"
        )
        self.log_floor = math.log(self.tau_floor)
        # float64: exp(log tau) gives back the starting value to the last digit
        self.log_tau = nn.Parameter(torch.tensor(math.log(self.tau_init), dtype=torch.float64))

    def params(self) -> dict[str, float]:
        return {"tau": self.tau_init, "tau_floor": self.tau_floor}

    def named_parameters(self) -> dict[str, nn.Parameter]:
        return {"log_tau": self.log_tau}

    def value(self) -> Tensor:
        """The current temperature (detached, 0-d, on the parameter's device)."""
        return self.log_tau.detach().clamp_min(self.log_floor).exp()

    def tau(self, s, progress=None, positive_mean=None):
        # in the graph of log tau (the reference in plain autograd uses it); the loss's
        # backward returns the gradient itself through parameter_gradients
        return self.log_tau.clamp_min(self.log_floor).exp().to(s)

    def parameter_gradients(self, grad_tau: Tensor) -> tuple[Tensor, ...]:
        theta = self.log_tau.detach()
        inside = theta >= self.log_floor  # no gradient strictly below the floor
        tau = theta.clamp_min(self.log_floor).exp()
        grad = grad_tau.to(theta.dtype) * tau * inside
        return (grad.reshape(theta.shape),)

    @torch.no_grad()
    def clamp_(self) -> None:
        """Hold log tau at or above log tau_floor (after each optimiser step)."""
        self.log_tau.clamp_min_(self.log_floor)

    def derivative(self, s):
        return s.new_zeros(())

    def sympy(self, s, *, progress=None, positive_mean=None, symbolic=False):
        return sp.Symbol("tau", positive=True) if symbolic else sp.Rational(repr(self.tau_init))


_RULES: dict[str, type[TemperatureRule]] = {
    "fixed": Fixed,
    "dystress": DySTreSS,
    "dystress-neurips": DySTreSSNeurIPS,
    "shifted": ShiftedDySTreSS,
    "linear": Linear,
    "exponential": Exponential,
    "temperature-free": TemperatureFree,
    "schedule": CosineSchedule,
    "macl": MACL,
    "dual": DualTemperature,
    "learned": Learned,
    "isogclr": ISogCLR,
    "formula": Formula,
}

#: The names ``from_name`` knows.
NAMES: tuple[str, ...] = tuple(_RULES)


def _arguments(rule: type[TemperatureRule]) -> dict[str, inspect.Parameter]:
    """The constructor's arguments, by name, in order."""
    return dict(inspect.signature(rule).parameters)


def _options() -> dict[str, tuple[str, ...]]:
    taken: dict[str, list[str]] = {}
    for name, rule in _RULES.items():
        for argument in _arguments(rule):
            taken.setdefault(argument, []).append(name)
    return {argument: tuple(names) for argument, names in taken.items()}


#: Every argument of the rules' constructors, with the names of the rules that take it, in
#: the order of ``NAMES``: the temperature options of the command line (``dyntemp.config``).
OPTIONS: Mapping[str, tuple[str, ...]] = MappingProxyType(_options())


def from_name(name: str, **params: Any) -> TemperatureRule:
    """Build a rule by its name, with the arguments its constructor takes.

    >>> from_name("dystress", tau_min=0.07, tau_max=0.2)
    DySTreSS(tau_min=0.07, tau_max=0.2)
    >>> from_name("fixed", tau_min=0.1)
    Traceback (most recent call last):
    ValueError: tau_min does not apply to the temperature rule 'fixed', which takes tau
    """
    key = name.lower() if isinstance(name, str) else name
    rule = _RULES[checks.choice("temperature rule", key, NAMES)]
    allowed = list(_arguments(rule))
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        verb = "does" if len(unknown) == 1 else "do"
        takes = ", ".join(allowed) if allowed else "no arguments"
        raise ValueError(
            f"{', '.join(unknown)} {verb} not apply to the temperature rule {name!r}, "
            f"which takes {takes}"
        )
    return rule(**params)


def option_help(option: str) -> str:
    """What ``option`` means to each rule that takes it: the rules' ``arguments`` texts, the
    defaults from their signatures.

    >>> option_help("tau_floor")
    "macl, learned: the lowest temperature (default: 0.01, CLIP's)"
    """
    said: dict[str, list[str]] = {}
    for name in OPTIONS[option]:
        rule = _RULES[name]
        default = _shown(_arguments(rule)[option].default)
        text = rule.arguments.get(option, "(default: {default})")
        said.setdefault(text.replace("{default}", default), []).append(name)
    return "; ".join(f"{', '.join(names)}: {text}" for text, names in said.items())


def _shown(value: object) -> str:
    """A default as the command line's help shows it."""
    if value is inspect.Parameter.empty:
        return "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:g}"
    return repr(value) if isinstance(value, str) else str(value)
