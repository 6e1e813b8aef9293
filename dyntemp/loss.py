"""NT-Xent with a temperature for every pair, with an exact analytic backward.

For 2N views z_1..z_2N (L2-normalised), s_ik = z_i . z_k and p(i) the other view of i::

    L_i = -log( exp(s_ip / tau_ip) / sum_{k != i} exp(s_ik / tau_ik) ),   L = mean_i L_i

The temperature tau_ik = rule(s_ik) is evaluated on the true similarities (the self-pair
is masked afterwards). With ``decoupled=True`` the positive leaves the denominator (DCL).

Speed: one similarity matrix, worked on in place; no Python loop over the batch, no
boolean-mask gathers. The backward is written out: with P the softmax over k != i,
dL/dx_ik = (P_ik - [k = p(i)]) / (2N) for x = s / tau, then

* tau detached (the paper's code):  dL/ds = dL/dx / tau
* tau in the graph:                 dL/ds = dL/dx * (tau - s tau'(s)) / tau^2

and back to the embeddings in one matrix product. Everything runs in float32 (float64
stays float64), outside autocast, so fp16 training cannot overflow exp(s / tau).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dyntemp.temperature import Fixed, TemperatureRule

__all__ = ["NTXent", "ntxent"]


def _as_rule(temperature: TemperatureRule | float) -> TemperatureRule:
    if isinstance(temperature, TemperatureRule):
        return temperature
    if isinstance(temperature, int | float) and not isinstance(temperature, bool):
        return Fixed(float(temperature))
    raise ValueError(
        f"temperature must be a rule from dyntemp.temperature or a number, got {temperature!r}"
    )


class _PairwiseNTXent(torch.autograd.Function):
    """Mean NT-Xent of the anchor rows against the key columns, exact backward.

    ``keys=None`` means the anchors are the keys (one process): the similarity matrix is
    symmetric and both gradient paths meet in a single product (G + G^T) z.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx,
        anchors: Tensor,
        keys: Tensor | None,
        self_index: Tensor,
        positive_index: Tensor,
        rule: TemperatureRule,
        progress: float | None,
        positive_mean: Tensor | None,
        detach_temperature: bool,
        decoupled: bool,
        normaliser: int,
    ) -> Tensor:
        rows = torch.arange(anchors.shape[0], device=anchors.device)
        logits = anchors @ (anchors if keys is None else keys).T  # s, then s / tau, then P
        rule.check_inputs(progress, positive_mean)
        tau = rule.tau(logits, progress, positive_mean)  # on the true s, self-pairs included
        if detach_temperature or not rule.per_pair:
            logits.div_(tau)
            scale = tau.reciprocal_()  # dL/ds = dL/dx / tau
        else:
            # dL/ds = dL/dx * (tau - s tau') / tau^2, taken before s is overwritten
            scale = rule.derivative(logits).mul_(logits).neg_().add_(tau).div_(tau).div_(tau)
            logits.div_(tau)
        del tau
        positive = logits[rows, positive_index]
        logits[rows, self_index] = float("-inf")
        if decoupled:
            logits[rows, positive_index] = float("-inf")
        lse = torch.logsumexp(logits, dim=1)
        loss = (lse - positive).sum() / normaliser

        # The gradient, ready for backward: G = (P - Y) * scale / normaliser.
        grad = logits.sub_(lse[:, None]).exp_()
        grad[rows, positive_index] -= 1.0
        grad.mul_(scale).div_(normaliser)
        ctx.save_for_backward(anchors, keys if keys is not None else anchors, grad)
        ctx.symmetric = keys is None
        return loss

    @staticmethod
    def backward(ctx, grad_loss: Tensor):  # type: ignore[override]
        anchors, keys, grad = ctx.saved_tensors
        if ctx.symmetric:
            grad_anchors, grad_keys = ((grad + grad.T) @ anchors).mul_(grad_loss), None
        else:
            grad_anchors = (grad @ keys).mul_(grad_loss)
            grad_keys = (grad.T @ anchors).mul_(grad_loss)
        return grad_anchors, grad_keys, None, None, None, None, None, None, None, None


class _GatherWithGradient(torch.autograd.Function):
    """all_gather whose backward sums every rank's gradient and keeps this rank's slice."""

    @staticmethod
    def forward(ctx, tensor: Tensor) -> Tensor:  # type: ignore[override]
        import torch.distributed as dist

        ctx.rank, ctx.size = dist.get_rank(), tensor.shape[0]
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        import torch.distributed as dist

        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank * ctx.size : (ctx.rank + 1) * ctx.size]


def _check_inputs(z1: Tensor, z2: Tensor) -> None:
    if not (isinstance(z1, Tensor) and isinstance(z2, Tensor)):
        raise ValueError("z1 and z2 must be tensors")
    if z1.dim() != 2 or z2.dim() != 2:
        raise ValueError(
            f"z1 and z2 must be 2-D (N, D), got shapes {tuple(z1.shape)} and {tuple(z2.shape)}"
        )
    if z1.shape != z2.shape:
        raise ValueError(
            f"z1 and z2 must have the same shape, got {tuple(z1.shape)} and {tuple(z2.shape)}"
        )
    if z1.shape[0] < 2:
        raise ValueError(f"need at least 2 images (N >= 2) for a negative, got N={z1.shape[0]}")


def ntxent(
    z1: Tensor,
    z2: Tensor,
    temperature: TemperatureRule | float = 0.2,
    *,
    detach_temperature: bool = True,
    decoupled: bool = False,
    gather: bool = False,
    progress: float | None = None,
) -> Tensor:
    """NT-Xent of two batches of views with a per-pair temperature rule.

    Args:
        z1, z2: (N, D) projector outputs of the two views; row i of each is image i.
        temperature: a rule of ``dyntemp.temperature`` or a number (a fixed tau).
        detach_temperature: stop gradients through tau (the paper's code); False lets
            them flow through tau(s).
        decoupled: DCL, the positive removed from the denominator.
        gather: under ``torch.distributed``, use every rank's views as negatives. Each
            rank returns the mean over its own anchors; averaging the ranks' gradients
            (as DistributedDataParallel does) gives the full-batch gradient.
        progress: training progress in epochs, for rules that read it.

    Returns:
        The mean loss over the 2N anchors (a 0-d float32 tensor, float64 for float64 input).
    """
    _check_inputs(z1, z2)
    rule = _as_rule(temperature)
    dtype = torch.float64 if z1.dtype == torch.float64 else torch.float32
    with torch.autocast(device_type=z1.device.type, enabled=False):
        z1 = F.normalize(z1.to(dtype), dim=1)
        z2 = F.normalize(z2.to(dtype), dim=1)
        n = z1.shape[0]
        if gather:
            import torch.distributed as dist

            if not (dist.is_available() and dist.is_initialized()):
                raise ValueError("gather=True needs an initialised torch.distributed process group")
            rank, world = dist.get_rank(), dist.get_world_size()
            all1, all2 = _GatherWithGradient.apply(z1), _GatherWithGradient.apply(z2)
            keys = torch.cat([all1, all2])
            total = n * world
            local = torch.arange(rank * n, (rank + 1) * n, device=z1.device)
            self_index = torch.cat([local, local + total])
            positive_index = torch.cat([local + total, local])
            anchors = torch.cat([z1, z2])
            positive_mean = (all1 * all2).sum(1).mean().detach()
        else:
            anchors, keys = torch.cat([z1, z2]), None
            self_index = torch.arange(2 * n, device=z1.device)
            positive_index = torch.cat([self_index[n:], self_index[:n]])
            positive_mean = (z1 * z2).sum(1).mean().detach()
        return _PairwiseNTXent.apply(
            anchors,
            keys,
            self_index,
            positive_index,
            rule,
            progress,
            positive_mean,
            detach_temperature,
            decoupled,
            anchors.shape[0],
        )


class NTXent(nn.Module):
    """``ntxent`` as a module: ``NTXent(DySTreSS(0.1, 0.2))(z1, z2, progress=epoch)``."""

    def __init__(
        self,
        temperature: TemperatureRule | float = 0.2,
        *,
        detach_temperature: bool = True,
        decoupled: bool = False,
        gather: bool = False,
    ) -> None:
        super().__init__()
        self.temperature = _as_rule(temperature)
        self.detach_temperature = detach_temperature
        self.decoupled = decoupled
        self.gather = gather

    def forward(self, z1: Tensor, z2: Tensor, progress: float | None = None) -> Tensor:
        return ntxent(
            z1,
            z2,
            self.temperature,
            detach_temperature=self.detach_temperature,
            decoupled=self.decoupled,
            gather=self.gather,
            progress=progress,
        )

    def extra_repr(self) -> str:
        return (
            f"temperature={self.temperature!r}, detach_temperature={self.detach_temperature}, "
            f"decoupled={self.decoupled}, gather={self.gather}"
        )
