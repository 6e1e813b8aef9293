"""The base class of temperature rules, ``TemperatureRule``: what the loss asks of a rule.

The rules themselves are in ``dyntemp.temperature`` (and ``dyntemp.formula``, a rule from one
formula); both import this module, and it imports neither.
"""

from __future__ import annotations

from typing import ClassVar

import sympy as sp
import torch
from torch import Tensor, nn

__all__ = ["TemperatureRule"]


class TemperatureRule:
    """Base class: ``rule(s, progress=None, positive_mean=None)`` -> temperatures."""

    #: True when the temperature depends on the pair's similarity.
    per_pair: bool = True
    #: True when the rule reads the training progress (in epochs).
    needs_progress: bool = False
    #: True when the rule reads the batch's mean positive similarity.
    needs_positive_mean: bool = False
    #: True when every training image has a temperature of its own, kept by the rule
    #: (iSogCLR): its loss needs the images' indices, and NT-Xent refuses the rule.
    needs_indices: bool = False
    #: True when each anchor's loss is weighted by the detached 1 / (1 - P_ip) (MACL).
    reweight: bool = False
    #: With ``reweight``: the weight is (1 - P'_ip) / (1 - P_ip) instead, P' the softmax of the
    #: logits times this number, at the temperature tau / inter_scale (dual temperature); None:
    #: the numerator is 1.
    inter_scale: float | None = None
    #: The rule of the positive pairs where it differs from this one (a per-pair rule), or
    #: None: one rule for every pair. The loss gives the positive pairs this rule's
    #: temperatures (and, with the temperature in the graph, its logit slope).
    positive_rule: TemperatureRule | None = None
    #: What each argument of the constructor means, for the command line's help
    #: (``temperature.option_help``); ``{default}`` stands for the signature's default.
    arguments: ClassVar[dict[str, str]] = {}

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

    def check_decoupled(
        self,
        decoupled: bool,
        *,
        reweight_off: str = "reweight=False",
        decoupled_off: str = "decoupled=False",
    ) -> None:
        """Raise ValueError when the rule reweights and the loss is decoupled.

        The weight 1 / (1 - P_ip) needs the positive in the denominator, which the decoupled
        loss drops; the message names the two ways out as the caller's reader knows them.
        """
        if self.reweight and decoupled:
            raise ValueError(
                f"{self!r} weights each loss by 1 / (1 - P_ip), which the decoupled loss does "
                f"not have: turn the reweighting off ({reweight_off}) or the decoupled loss off "
                f"({decoupled_off})"
            )

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
