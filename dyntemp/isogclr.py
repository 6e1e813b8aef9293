"""iSogCLR: a temperature for every training image, learned by a step of its own.

Qiu et al., "Not All Semantics are Created Equal: Contrastive Self-supervised Learning with
Automatic Temperature Individualization" (ICML 2023). Image i owns a temperature tau_i; the
objective is the robust global contrastive loss

    F(w, tau) = 1/n sum_i [ tau_i log E_{k in S_i^-} exp((s_ik - s_ip) / tau_i) + tau_i rho ],

optimised with SogCLR's moving-average estimator of the inner mean (Yuan et al., ICML 2022)
and a momentum step on each tau_i, clamped to [tau_min, tau_max]. This module is LibAUC's
``GCLoss_v1(enable_isogclr=True)`` (libauc 2.0.0, ``libauc/losses/contrastive.py``: the state
at lines 81 and 96-97, the step at lines 161-208), rewritten for dyntemp's trainer:

* anchor x of image i (either view) against the 2B - 2 other views of the batch (the views
  of the other images, both; S_i^-), M = 2(B - 1) of them, e_xk = exp(s_xk / tau_i) with
  tau_i as it was before the step;
* u_x = (1 - gamma) u_i + gamma mean_k e_xk, per anchor from the image's stored u_i; gamma is 1
  when every image of the batch has u = 0 (never seen), as LibAUC's constant schedule does
  without ``adjust_gamma``; then u_i <- (u_x1 + u_x2) / 2 over the image's two anchors;
* the loss is LibAUC's surrogate: for each anchor, sum_k w_xk s_xk / M - s_xp with the
  detached weights w_xk = e_xk / max(u_x, 1e-8), summed over the two views and averaged over
  the B images. Its value is not the contrastive loss (it may be negative): its gradient is
  the estimator's, w_xk / M on the negatives and -1 on the positive;
* the temperature's gradient g_x = log u_x + rho - sum_k w_xk s_xk / tau_i / M, averaged over
  the image's two anchors, enters a moving average m_i <- (1 - beta) m_i + beta g, and
  tau_i <- clamp(tau_i - eta m_i, tau_min, tau_max).

Defaults are LibAUC's: tau 0.1 (every image's start), tau_min 0.05, tau_max 0.7, rho 0.3,
eta 0.01, beta 0.9, gamma 0.9. The per-image state (tau, u and m, each of length n) is the
rule's ``state_dict``, saved in every checkpoint; ``bind(n)`` allocates it for n images.
Under several processes each one's anchors meet every process's views, the indices and each
image's new values are gathered, and every process keeps the same whole state (LibAUC keeps
on each process only the temperatures of its own anchors).

Differences from LibAUC kept: the state lives on the training device (LibAUC's on the CPU);
the sums run in another order (float rounding); the first-batch rule reads the stored u of
the whole (gathered) batch. tests/test_references.py checks losses, gradients and the state
step by step against LibAUC's class on the same batches, indices and state.

``ISogCLR`` is a temperature rule (``--temperature isogclr``) whose loss is not NT-Xent: the
trainer calls ``isogclr_loss`` with the images' indices, and ``ntxent`` refuses the rule.
"""

from __future__ import annotations

import sympy as sp
import torch
from torch import Tensor, nn

from dyntemp import checks
from dyntemp.distributed import gather_with_gradient
from dyntemp.rule import TemperatureRule

__all__ = ["STATE", "ISogCLR", "isogclr_loss"]

#: The names of the per-image state: temperatures, moving averages u, temperature momenta m.
STATE = ("tau", "u", "tau_gradient")
EPS = 1e-8  # LibAUC's floor of u in the weights


class ISogCLR(TemperatureRule):
    """iSogCLR's individual temperatures (see the module's docstring), one per training image.

    Without an image the rule has no temperature but the starting one: ``tau(s)`` and
    ``sympy`` give ``tau`` (a symbol tau_i with ``symbolic=True``); the learned ones are
    ``state_dict()["tau"]`` once ``bind`` has allocated them.
    """

    per_pair = False
    needs_indices = True
    arguments = {
        "tau": "the temperature every image starts at (default: {default}, LibAUC's)",
        "tau_min": "the lowest individual temperature (default: {default}, LibAUC's)",
        "tau_max": "the highest individual temperature (default: {default}, LibAUC's)",
        "rho": "iSogCLR's rho, the weight of the temperatures' penalty tau_i rho (default: "
        "{default}, LibAUC's)",
        "eta": "the step size of the temperatures' updates (default: {default}, LibAUC's)",
        "beta": "the weight of the new gradient in the temperatures' momentum (default: "
        "{default}, LibAUC's)",
        "gamma": "the weight of the batch in SogCLR's moving averages u (default: {default}, "
        "LibAUC's)",
    }

    def __init__(
        self,
        tau: float = 0.1,
        tau_min: float = 0.05,
        tau_max: float = 0.7,
        rho: float = 0.3,
        eta: float = 0.01,
        beta: float = 0.9,
        gamma: float = 0.9,
    ) -> None:
        self.tau_init = checks.number("tau", tau, above=0)
        self.tau_min = checks.number("tau_min", tau_min, above=0)
        self.tau_max = checks.number("tau_max", tau_max, above=0)
        checks.at_most("tau_min", self.tau_min, "tau", self.tau_init)
        checks.at_most("tau", self.tau_init, "tau_max", self.tau_max)
        self.rho = checks.number("rho", rho, low=0)
        self.eta = checks.number("eta", eta, above=0)
        self.beta = checks.number("beta", beta, above=0, high=1)
        self.gamma = checks.number("gamma", gamma, above=0, high=1)
        self._state: dict[str, Tensor] = {}

    def params(self) -> dict[str, float]:
        return {
            "tau": self.tau_init,
            "tau_min": self.tau_min,
            "tau_max": self.tau_max,
            "rho": self.rho,
            "eta": self.eta,
            "beta": self.beta,
            "gamma": self.gamma,
        }

    # ------------------------------------------------------------------ the per-image state

    def bind(
        self,
        images: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> ISogCLR:
        """Allocate the state of ``images`` training images: every temperature ``tau``, every
        u and momentum 0 (LibAUC's start). Returns self."""
        images = checks.whole("images", images, low=1)
        self._state = {
            "tau": torch.full((images,), self.tau_init, dtype=dtype, device=device),
            "u": torch.zeros(images, dtype=dtype, device=device),
            "tau_gradient": torch.zeros(images, dtype=dtype, device=device),
        }
        return self

    @property
    def images(self) -> int:
        """The number of images the state holds (0 before ``bind``)."""
        return len(self._state["tau"]) if self._state else 0

    def state(self, name: str) -> Tensor:
        """One part of the state, the tensor itself (``STATE`` names them)."""
        if not self._state:
            raise ValueError(f"{self!r} holds no images yet: bind(number of images) first")
        return self._state[name]

    def state_dict(self) -> dict[str, Tensor]:
        return {name: value.clone() for name, value in self._state.items()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        if set(state) != set(STATE):
            raise ValueError(f"the temperature state has {sorted(state)}, {self!r} needs {STATE}")
        sizes = {tuple(value.shape) for value in state.values()}
        if len(sizes) != 1 or len(next(iter(sizes))) != 1:
            raise ValueError(f"the temperature state's tensors differ in shape: {sorted(sizes)}")
        if not self._state:
            tau = state["tau"]
            self.bind(len(tau), tau.device, tau.dtype)
        if len(state["tau"]) != self.images:
            raise ValueError(
                f"the temperature state holds {len(state['tau'])} images, this run {self.images}"
            )
        with torch.no_grad():
            for name in STATE:
                self._state[name].copy_(state[name])

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None):
        self._state = {k: v.to(device=device, dtype=dtype) for k, v in self._state.items()}
        return self

    def summary(self) -> dict[str, float]:
        """The mean and spread of the images' temperatures, for the trainer's log."""
        tau = self.state("tau").double()
        return {"tau_mean": tau.mean().item(), "tau_std": tau.std(correction=0).item()}

    # ------------------------------------------------------------------ as a temperature rule

    def tau(self, s, progress=None, positive_mean=None):
        return s.new_full((), self.tau_init)  # no image given: where every image starts

    def derivative(self, s):
        return s.new_zeros(())

    def sympy(self, s, *, progress=None, positive_mean=None, symbolic=False):
        if symbolic:
            return sp.Symbol("tau_i", positive=True)
        return sp.Rational(repr(self.tau_init))

    def check_decoupled(self, decoupled, *, reweight_off="", decoupled_off="decoupled=False"):
        if decoupled:
            raise ValueError(
                f"{self!r} leaves the positive out of its estimator's denominator already: "
                f"there is no decoupled form to ask for ({decoupled_off})"
            )


def _gather(tensor: Tensor) -> Tensor:
    """Every process's ``tensor``, concatenated in rank order (no gradient)."""
    import torch.distributed as dist

    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


def isogclr_loss(
    z1: Tensor, z2: Tensor, indices: Tensor, rule: ISogCLR, *, gather: bool = False
) -> Tensor:
    """iSogCLR's loss of a batch of views, and its step on the images' state.

    Args:
        z1, z2: (B, D) projector outputs of the two views; row r of each is image
            ``indices[r]``.
        indices: (B,) the images' indices into the rule's state (``rule.bind(n)``).
        rule: the ``ISogCLR`` rule holding the state; its u, momenta and temperatures of the
            batch's images are updated here, from values the loss reads before the update.
        gather: under ``torch.distributed``, every process's views are negatives and the
            state is updated for every process's images (the same on each process).

    Returns:
        LibAUC's surrogate loss (see the module's docstring), float32 (float64 for float64
        input), whose gradient is iSogCLR's estimator.
    """
    if z1.dim() != 2 or z1.shape != z2.shape or z1.shape[0] < 2:
        raise ValueError(
            f"z1 and z2 must be (B, D) of one shape with B >= 2, got {tuple(z1.shape)} and "
            f"{tuple(z2.shape)}"
        )
    if not isinstance(rule, ISogCLR):
        raise ValueError(f"isogclr_loss needs an ISogCLR rule, got {rule!r}")
    batch = z1.shape[0]
    if not isinstance(indices, Tensor) or indices.shape != (batch,):
        raise ValueError(f"indices must be a tensor of the batch's {batch} image indices")
    tau_state, u_state, momentum = (rule.state(name) for name in STATE)
    indices = indices.to(device=tau_state.device, dtype=torch.long)
    dtype = torch.float64 if z1.dtype == torch.float64 else torch.float32
    with torch.autocast(device_type=z1.device.type, enabled=False):
        h1 = nn.functional.normalize(z1.to(dtype), dim=1)
        h2 = nn.functional.normalize(z2.to(dtype), dim=1)
        anchors = torch.cat([h1, h2])
        if gather:
            import torch.distributed as dist

            if not (dist.is_available() and dist.is_initialized()):
                raise ValueError("gather=True needs an initialised torch.distributed process group")
            keys = torch.cat([gather_with_gradient(h1), gather_with_gradient(h2)])
            every_index = _gather(indices)
            total = batch * dist.get_world_size()
            local = torch.arange(batch, device=h1.device) + dist.get_rank() * batch
        else:
            keys, every_index, total = anchors, indices, batch
            local = torch.arange(batch, device=h1.device)
        sims = anchors @ keys.T  # (2B, 2 total): first views' anchors, then second views'
        rows = torch.arange(2 * batch, device=h1.device)
        positive_index = torch.cat([local + total, local])
        self_index = torch.cat([local, local + total])
        count = 2 * (total - 1)  # the negatives of an anchor
        with torch.no_grad():
            s = sims.detach()
            tau = tau_state[indices].to(dtype).repeat(2)[:, None]  # each anchor's image's
            exp = torch.exp(s / tau)
            exp[rows, positive_index] = 0.0
            exp[rows, self_index] = 0.0
            unseen = u_state[every_index].sum() == 0  # the batch's first visit: gamma = 1
            gamma = s.new_full((), rule.gamma).masked_fill_(unseen, 1.0)
            keep = s.new_full((), 1 - rule.gamma).masked_fill_(unseen, 0.0)  # 1 - gamma
            u = keep * u_state[indices].to(dtype).repeat(2) + gamma * exp.sum(1) / count
            weights = exp / u.clamp(min=EPS)[:, None]
            tau_gradient = torch.log(u) + rule.rho - (weights * (s / tau)).sum(1) / count
            new_u = (u[:batch] + u[batch:]) / 2
            new_gradient = (tau_gradient[:batch] + tau_gradient[batch:]) / 2
        loss = ((weights * sims).sum(1) / count - sims[rows, positive_index]).sum() / batch
        with torch.no_grad():  # the step, for every process's images
            if gather:
                new_u, new_gradient = _gather(new_u), _gather(new_gradient)
            u_state[every_index] = new_u.to(u_state.dtype)
            m = (1.0 - rule.beta) * momentum[every_index] + rule.beta * new_gradient
            momentum[every_index] = m.to(momentum.dtype)
            stepped = tau_state[every_index] - rule.eta * momentum[every_index]
            tau_state[every_index] = stepped.clamp_(min=rule.tau_min, max=rule.tau_max)
    return loss
