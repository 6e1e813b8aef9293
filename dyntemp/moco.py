"""MoCo v2 with any temperature rule: a momentum encoder, a queue of past keys, InfoNCE.

The query encoder is the trained model; the key encoder a copy of it that follows it as a
moving average, theta_k <- m theta_k + (1 - m) theta_q (m = 0.99 at CIFAR scale), and is
never trained. Each query is contrasted with its own key (the positive) and the K keys of
the queue (the negatives, K = 4,096 at CIFAR scale), the temperature rule applied pair by
pair on the true similarities: ``dyntemp.loss.pairwise_ntxent`` with the queue as the
negatives, and the loss's exact analytic backward.

As the common CIFAR variants (the MoCo authors' CIFAR-10 demo, solo-learn, lightly) the
loss is symmetrised: with q_v = f(x_v) and k_v = f_m(x_v) for the two views,
L = (L(q_1, k_2) + L(q_2, k_1)) / 2, and both views' keys enter the queue, first view
first, the oldest keys leaving (FIFO, wrapping around the end).

Distributed: every rank's keys enter the queue (gathered in rank order, view by view, so
K processes fill the queue exactly as one process with the whole batch), and each rank holds
the same queue. BatchNorm as MoCo v3 does it: both encoders normalise with the statistics
of the global batch (``distributed.sync_batchnorm``; one process: the whole batch), no
shuffling BN.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from dyntemp import checks
from dyntemp.loss import mean_positive_similarity, pairwise_ntxent
from dyntemp.temperature import TemperatureRule

__all__ = ["MoCo", "moco_loss", "symmetric_moco_loss"]


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class MoCo:
    """The key encoder (a copy of ``model``) and the queue (``queue_size`` x ``dim``, unit rows).

    The queue starts as random unit vectors drawn from ``seed`` (as MoCo's), the pointer at 0.
    """

    def __init__(
        self, model: nn.Module, *, queue_size: int, dim: int, momentum: float, seed: int = 0
    ) -> None:
        momentum = checks.number("momentum", momentum, low=0, below=1)
        checks.whole("queue_size", queue_size, low=1)
        self.encoder = copy.deepcopy(model)
        self.encoder.requires_grad_(False)
        self.momentum = float(momentum)
        device = next(model.parameters()).device
        generator = torch.Generator().manual_seed(seed)
        queue = torch.randn(queue_size, dim, generator=generator)
        self.queue = nn.functional.normalize(queue, dim=1).to(device)
        self.pointer = 0  # where the next key goes: a host integer, nothing to read back

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """theta_k <- m theta_k + (1 - m) theta_q, parameter by parameter."""
        keys = list(self.encoder.parameters())
        queries = list(model.parameters())
        if len(keys) != len(queries):
            raise ValueError("the model does not match the key encoder")
        torch._foreach_mul_(keys, self.momentum)
        torch._foreach_add_(keys, [q.detach() for q in queries], alpha=1.0 - self.momentum)

    @torch.no_grad()
    def enqueue(self, *keys: Tensor) -> None:
        """Put the keys (each B x D, this rank's) into the queue, oldest out, wrapping around.

        Under torch.distributed each argument is gathered over the ranks first (rank order).
        """
        parts = []
        for block in keys:
            block = nn.functional.normalize(block.detach().float(), dim=1)
            if _distributed():
                gathered = [torch.empty_like(block) for _ in range(dist.get_world_size())]
                dist.all_gather(gathered, block.contiguous())
                block = torch.cat(gathered)
            parts.append(block)
        new = torch.cat(parts)
        size = self.queue.shape[0]
        if new.shape[0] > size:
            raise ValueError(f"{new.shape[0]} keys do not fit a queue of {size}")
        index = torch.arange(self.pointer, self.pointer + new.shape[0], device=new.device) % size
        self.queue[index] = new.to(self.queue)
        self.pointer = (self.pointer + new.shape[0]) % size

    def state_dict(self) -> dict[str, Any]:
        """Tensors and plain values: the key encoder, the queue and the pointer."""
        return {
            "encoder": self.encoder.state_dict(),
            "queue": self.queue.clone(),
            "pointer": self.pointer,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.encoder.load_state_dict(state["encoder"])
        queue = state["queue"]
        if not isinstance(queue, Tensor) or queue.shape != self.queue.shape:
            raise ValueError(
                f"the saved queue has shape {getattr(queue, 'shape', None)}, this run's "
                f"{tuple(self.queue.shape)}"
            )
        pointer = state["pointer"]
        if isinstance(pointer, bool) or not isinstance(pointer, int):
            raise ValueError(f"the saved queue pointer is not a whole number: {pointer!r}")
        if not 0 <= pointer < self.queue.shape[0]:
            raise ValueError(f"the saved queue pointer {pointer} is outside the queue")
        self.queue.copy_(queue)
        self.pointer = pointer


def moco_loss(
    queries: Tensor,
    keys: Tensor,
    queue: Tensor,
    temperature: TemperatureRule | float = 0.2,
    *,
    detach_temperature: bool = True,
    decoupled: bool = False,
    progress: float | None = None,
) -> Tensor:
    """InfoNCE of the queries (B x D, with gradient) against their keys and the queue:
    ``pairwise_ntxent`` with the queue as negatives.

    A rule reading the mean positive similarity (MACL) gets the mean of q_i . k_i over
    every rank's batch under torch.distributed. Returns the mean over the B queries.

    >>> q, k, queue = torch.eye(3, 4), torch.eye(3, 4), torch.eye(4)[3:]
    >>> round(moco_loss(q, k, queue, 0.5).item(), 4)
    0.1269
    """
    positive_mean = None
    if _distributed() and isinstance(temperature, TemperatureRule):
        if temperature.needs_positive_mean:
            positive_mean = mean_positive_similarity(queries, keys)
            dist.all_reduce(positive_mean)
            positive_mean = positive_mean / dist.get_world_size()
    return pairwise_ntxent(
        queries,
        keys,
        queue,
        temperature,
        detach_temperature=detach_temperature,
        decoupled=decoupled,
        progress=progress,
        positive_mean=positive_mean,
    )


def symmetric_moco_loss(
    q1: Tensor,
    q2: Tensor,
    k1: Tensor,
    k2: Tensor,
    queue: Tensor,
    temperature: TemperatureRule | float = 0.2,
    **options: Any,
) -> Tensor:
    """(L(q1, k2) + L(q2, k1)) / 2, both against the same queue (``moco_loss``'s options)."""
    first = moco_loss(q1, k2, queue, temperature, **options)
    second = moco_loss(q2, k1, queue, temperature, **options)
    return (first + second) / 2
