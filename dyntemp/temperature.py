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
them back.

Two rules go beyond a temperature. ``MACL`` (with ``reweight``) also weights each anchor's loss
by the detached 1 / (1 - P_ip), and says so by its attribute ``reweight``, which the loss
reads. ``Learned`` holds a parameter, log tau, trained with the network: ``rule.parameters()``
lists it, the loss returns its gradient through ``rule.parameter_gradients``, and
``rule.state_dict()`` / ``load_state_dict`` carry it through checkpoints.
"""

from __future__ import annotations

import functools
import inspect
import math
from typing import Any

import sympy as sp
import torch
from torch import Tensor, nn

__all__ = [
    "NAMES",
    "CosineSchedule",
    "DySTreSS",
    "Exponential",
    "Fixed",
    "Formula",
    "Learned",
    "Linear",
    "MACL",
    "ProfileRule",
    "ShiftedDySTreSS",
    "TemperatureRule",
    "from_name",
]


def _check_finite(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def _check_positive(name: str, value: float) -> float:
    value = _check_finite(name, value)
    if value <= 0:
        raise ValueError(f"{name} must be > 0, got {value}")
    return value


def _check_range(tau_min: float, tau_max: float) -> tuple[float, float]:
    tau_min = _check_positive("tau_min", tau_min)
    tau_max = _check_positive("tau_max", tau_max)
    if tau_min > tau_max:
        raise ValueError(f"tau_min must be <= tau_max, got tau_min={tau_min} > tau_max={tau_max}")
    return tau_min, tau_max


def _exact(name: str, value: float, symbolic: bool) -> sp.Expr:
    """A parameter for SymPy: a positive symbol, or the exact decimal value (0.1 -> 1/10)."""
    if symbolic:
        return sp.Symbol(name, positive=True)
    return sp.Rational(repr(value))


class TemperatureRule:
    """Base class: ``rule(s, progress=None, positive_mean=None)`` -> temperatures."""

    #: True when the temperature depends on the pair's similarity.
    per_pair: bool = True
    #: True when the rule reads the training progress (in epochs).
    needs_progress: bool = False
    #: True when the rule reads the batch's mean positive similarity.
    needs_positive_mean: bool = False
    #: True when each anchor's loss is weighted by the detached 1 / (1 - P_ip) (MACL).
    reweight: bool = False

    def parameters(self) -> list[nn.Parameter]:
        """The tensors the rule learns with the network (none for a fixed rule)."""
        return list(self.named_parameters().values())

    def named_parameters(self) -> dict[str, nn.Parameter]:
        return {}

    def parameter_gradients(self, grad_tau: Tensor) -> tuple[Tensor, ...]:
        """The gradients of ``parameters()`` given dL/dtau (rules with one tau per batch)."""
        return ()

    def state_dict(self) -> dict[str, Tensor]:
        """The learned state, plain tensors (empty for a rule that learns nothing)."""
        return {name: p.detach().clone() for name, p in self.named_parameters().items()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        params = self.named_parameters()
        if set(state) != set(params):
            raise ValueError(
                f"the temperature state has {sorted(state)}, {self!r} needs {sorted(params)}"
            )
        with torch.no_grad():
            for name, value in state.items():
                params[name].copy_(value)

    def clamp_(self) -> None:
        """Hold the learned parameters in their range, after each optimiser step (no-op)."""

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None):
        """Move the learned parameters (in place, the same Parameter objects); returns self."""
        for p in self.parameters():
            p.data = p.data.to(device=device, dtype=dtype)
        return self

    def tau(
        self, s: Tensor, progress: float | None = None, positive_mean: Tensor | None = None
    ) -> Tensor:
        """The temperature, broadcastable to ``s`` (a 0-d tensor for rules that ignore s).

        It must return a new tensor: the loss reuses its memory.
        """
        raise NotImplementedError

    def check_inputs(self, progress: float | None, positive_mean: Tensor | None) -> None:
        """Raise ValueError when the rule lacks what it reads."""
        if self.needs_progress and progress is None:
            raise ValueError(f"{self!r} needs the training progress (in epochs)")
        if self.needs_positive_mean and positive_mean is None:
            raise ValueError(f"{self!r} needs the batch's mean positive similarity")

    def derivative(self, s: Tensor) -> Tensor:
        """d tau / d s, elementwise, broadcastable to ``s`` (0-d for rules that ignore s).

        The generic version differentiates ``tau`` with autograd; rules override it with
        their closed form.
        """
        with torch.enable_grad():
            x = s.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(self.tau(x).sum(), x)
        return grad

    def logit_slope(
        self,
        s: Tensor | sp.Expr,
        tau: Tensor | None = None,
        *,
        progress: float | sp.Expr | None = None,
        positive_mean: Tensor | sp.Expr | None = None,
    ) -> Tensor | sp.Expr:
        """d(s / tau(s)) / ds = (tau - s tau'(s)) / tau^2, the slope of the effective logit.

        For a tensor ``s`` a tensor of its shape (``tau``, if given, is ``self.tau(s)``
        already computed, and is left unchanged); for a SymPy symbol the expression, from
        ``self.sympy``.
        """
        if isinstance(s, sp.Basic):
            tau_s = self.sympy(s, progress=progress, positive_mean=positive_mean)
            return (tau_s - s * sp.diff(tau_s, s)) / tau_s**2
        if tau is None:
            tau = self.tau(s, progress, positive_mean)
        slope = self.derivative(s) * s  # out of place: the derivative may be 0-d
        return slope.neg_().add_(tau).div_(tau).div_(tau)

    def __call__(
        self, s: Tensor, progress: float | None = None, positive_mean: Tensor | None = None
    ) -> Tensor:
        self.check_inputs(progress, positive_mean)
        return self.tau(s, progress, positive_mean).expand_as(s)

    def sympy(
        self,
        s: sp.Expr,
        *,
        progress: sp.Expr | float | None = None,
        positive_mean: sp.Expr | float | None = None,
        symbolic: bool = False,
    ) -> sp.Expr:
        """The rule as a SymPy expression of the similarity symbol ``s``.

        ``progress`` (epochs) and ``positive_mean`` are the other inputs of the rules that
        read them (a symbol ``t`` or ``A`` when not given); ``symbolic=True`` keeps the
        parameters as symbols.
        """
        raise NotImplementedError

    def params(self) -> dict[str, float]:
        """The rule's parameters, by the names its constructor (and the command line) takes."""
        return dict(vars(self))

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v:g}" for k, v in self.params().items())
        return f"{type(self).__name__}({args})"

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self.params() == other.params()  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((type(self).__name__, tuple(self.params().items())))


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
    from dyntemp.formula import Formula, S

    return Formula(kind(**dict(params)).sympy(S))


def _profile(rule: ProfileRule) -> TemperatureRule:
    """The compiled formula of ``rule``, made once for each kind and parameters."""
    return _compiled(type(rule), tuple(rule.params().items()))


class Fixed(TemperatureRule):
    """One temperature for every pair: SimCLR's NT-Xent."""

    per_pair = False

    def __init__(self, tau: float = 0.2) -> None:
        self.tau_value = _check_positive("tau", tau)

    def params(self) -> dict[str, float]:
        return {"tau": self.tau_value}

    def tau(self, s, progress=None, positive_mean=None):
        return s.new_full((), self.tau_value)  # a fill, not a host-to-device copy

    def derivative(self, s: Tensor) -> Tensor:
        return s.new_zeros(())

    def sympy(self, s, *, progress=None, positive_mean=None, symbolic=False):
        return _exact("tau", self.tau_value, symbolic)


class DySTreSS(ProfileRule):
    """The paper's cosine rule: tau_max at s = +-1, tau_min at s = 0.

    tau(s) = tau_min + (tau_max - tau_min)/2 * (1 + cos(pi (1 + s)))
    """

    def __init__(self, tau_min: float = 0.1, tau_max: float = 0.2) -> None:
        self.tau_min, self.tau_max = _check_range(tau_min, tau_max)

    def sympy(self, s, *, progress=None, positive_mean=None, symbolic=False):
        lo = _exact("tau_min", self.tau_min, symbolic)
        hi = _exact("tau_max", self.tau_max, symbolic)
        return lo + (hi - lo) / 2 * (1 + sp.cos(sp.pi * (1 + s)))


class ShiftedDySTreSS(ProfileRule):
    """The paper's DySTreSS*: the cosine shifted by ``shift`` and stretched to ``width``.

    tau(s) = tau_min + (tau_max - tau_min)/2 * (1 + cos(pi (s + shift) / width)) for
    s <= -shift, and tau_max above.
    """

    def __init__(
        self, tau_min: float = 0.1, tau_max: float = 0.2, shift: float = -0.4, width: float = 0.7
    ) -> None:
        self.tau_min, self.tau_max = _check_range(tau_min, tau_max)
        self.shift = _check_finite("shift", shift)
        self.width = _check_positive("width", width)

    def sympy(self, s, *, progress=None, positive_mean=None, symbolic=False):
        lo = _exact("tau_min", self.tau_min, symbolic)
        hi = _exact("tau_max", self.tau_max, symbolic)
        shift = sp.Symbol("Delta_s", real=True) if symbolic else sp.Rational(repr(self.shift))
        width = _exact("k", self.width, symbolic)
        curve = lo + (hi - lo) / 2 * (1 + sp.cos(sp.pi * (s + shift) / width))
        return sp.Piecewise((curve, s <= -shift), (hi, True))


class Linear(ProfileRule):
    """V-shaped in |s|: tau(s) = tau_min + (tau_max - tau_min) |s|."""

    def __init__(self, tau_min: float = 0.1, tau_max: float = 0.2) -> None:
        self.tau_min, self.tau_max = _check_range(tau_min, tau_max)

    def sympy(self, s, *, progress=None, positive_mean=None, symbolic=False):
        lo = _exact("tau_min", self.tau_min, symbolic)
        hi = _exact("tau_max", self.tau_max, symbolic)
        return lo + (hi - lo) * sp.Abs(s)


class Exponential(ProfileRule):
    """tau(s) = a - b e^{-c|s|} with a = tau_max, a - b = tau_min = tau(0) and c = rate.

    The same as max(a - b e^{-cs}, a - b e^{cs}); it rises from tau_min at s = 0 towards
    tau_max as |s| grows (to a - b e^{-c} at |s| = 1).
    """

    def __init__(self, tau_min: float = 0.1, tau_max: float = 0.2, rate: float = 3.5) -> None:
        self.tau_min, self.tau_max = _check_range(tau_min, tau_max)
        self.rate = _check_finite("rate", rate)
        if self.rate < 0:
            raise ValueError(f"rate must be >= 0, got {self.rate}")

    def sympy(self, s, *, progress=None, positive_mean=None, symbolic=False):
        lo = _exact("tau_min", self.tau_min, symbolic)
        hi = _exact("tau_max", self.tau_max, symbolic)
        c = _exact("c", self.rate, symbolic)
        return hi - (hi - lo) * sp.exp(-c * sp.Abs(s))


class CosineSchedule(TemperatureRule):
    """Kukleva et al.'s schedule over training time, one temperature for every pair.

    tau(t) = tau_min + (tau_max - tau_min)/2 * (1 + cos(2 pi t / period)), t in epochs.
    """

    per_pair = False
    needs_progress = True

    def __init__(self, tau_min: float = 0.1, tau_max: float = 1.0, period: float = 400.0) -> None:
        self.tau_min, self.tau_max = _check_range(tau_min, tau_max)
        self.period = _check_positive("period", period)

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
    A0. Neither clamps the temperature: a setting with 1 + alpha (A - a0) <= 0 for some A in
    [-1, 1] (the SimCSE setting tau0 = 0.05, alpha = 2, a0 = 0.8 at A < 0.3) would there give a
    negative temperature, which reverses the softmax. Every finite alpha and a0 is accepted
    here; at that edge the temperature is held at ``tau_floor`` (default 0.01, the lowest
    temperature CLIP allows), a choice of this library, not of the paper. ``sympy`` reads A
    as ``positive_mean`` (a symbol ``A`` if not given) and gives the unclamped formula.
    """

    per_pair = False
    needs_positive_mean = True

    def __init__(
        self,
        tau: float = 0.1,
        alpha: float = 0.5,
        a0: float = 0.0,
        reweight: bool = True,
        tau_floor: float = 0.01,
    ) -> None:
        self.tau0 = _check_positive("tau", tau)
        self.alpha = _check_finite("alpha", alpha)
        self.a0 = _check_finite("a0", a0)
        if not isinstance(reweight, bool):
            raise ValueError(f"reweight must be True or False, got {reweight!r}")
        self.reweight = reweight
        self.tau_floor = _check_positive("tau_floor", tau_floor)
        if self.tau_floor > self.tau0:
            raise ValueError(
                f"tau_floor must be <= tau (the temperature at A = a0), got "
                f"tau_floor={self.tau_floor} > tau={self.tau0}"
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

    def __init__(self, tau: float = 0.2, tau_floor: float = 0.01) -> None:
        self.tau_init = _check_positive("tau", tau)
        self.tau_floor = _check_positive("tau_floor", tau_floor)
        if self.tau_floor > self.tau_init:
            raise ValueError(
                f"tau_floor must be <= tau (the initial temperature), got "
                f"tau_floor={self.tau_floor} > tau={self.tau_init}"
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
    "shifted": ShiftedDySTreSS,
    "linear": Linear,
    "exponential": Exponential,
    "schedule": CosineSchedule,
    "macl": MACL,
    "learned": Learned,
}

#: The names ``from_name`` knows.
NAMES: tuple[str, ...] = tuple(_RULES)


def from_name(name: str, **params: Any) -> TemperatureRule:
    """Build a rule by its name, e.g. ``from_name("dystress", tau_min=0.07, tau_max=0.2)``."""
    try:
        cls = _RULES[name.lower()]
    except (KeyError, AttributeError):
        raise ValueError(f"unknown temperature rule {name!r}; known: {', '.join(NAMES)}") from None
    allowed = [p for p in inspect.signature(cls).parameters]
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        verb = "does" if len(unknown) == 1 else "do"
        raise ValueError(
            f"{', '.join(unknown)} {verb} not apply to the temperature rule {name!r}, "
            f"which takes {', '.join(allowed)}"
        )
    return cls(**params)


# A rule from one formula (dyntemp/formula.py builds on TemperatureRule above).
from dyntemp.formula import Formula  # noqa: E402

_RULES["formula"] = Formula
NAMES = tuple(_RULES)
