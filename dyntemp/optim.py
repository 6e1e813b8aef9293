"""Optimisers and the learning-rate schedule of the trainer.

``LARS`` is layer-wise adaptive SGD with momentum (You et al. 2017) in the form SimCLR and
Barlow Twins use: each weight matrix's update is rescaled by
``trust * ||w|| / ||g + wd w||``; biases and BatchNorm parameters (the 1-d ones) get neither
weight decay nor the rescaling. ``learning_rate`` is the schedule, evaluated every step:
``cosine`` (``cosine_lr``, the cosine decay to zero) or ``constant``, each after a linear
warm-up.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import Tensor

OPTIMIZERS = ("sgd", "lars")
SCHEDULES = ("cosine", "constant")


class LARS(torch.optim.Optimizer):
    """SGD with momentum and layer-wise trust ratios; 1-d parameters are excluded.

    For a parameter w with gradient g (and ``wd = weight_decay``, ``mu = momentum``)::

        d = g + wd w;   d *= trust * ||w|| / ||d||  (if both norms are positive)
        buffer = mu buffer + d;   w -= lr buffer

    For 1-d parameters (biases, BatchNorm) ``d = g``, without decay or rescaling.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict],
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        trust_coefficient: float = 0.001,
    ) -> None:
        if lr <= 0:
            raise ValueError(f"learning rate must be positive, got {lr}")
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "weight_decay": weight_decay,
            "trust_coefficient": trust_coefficient,
        }
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is None:
                    continue
                update = param.grad
                if param.ndim > 1:
                    update = update.add(param, alpha=group["weight_decay"])
                    param_norm = torch.linalg.vector_norm(param)
                    update_norm = torch.linalg.vector_norm(update)
                    ratio = group["trust_coefficient"] * param_norm / update_norm
                    usable = (param_norm > 0) & (update_norm > 0)
                    update = update.mul(torch.where(usable, ratio, torch.ones_like(ratio)))
                state = self.state[param]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.clone(update).detach()
                else:
                    state["momentum_buffer"].mul_(group["momentum"]).add_(update)
                param.add_(state["momentum_buffer"], alpha=-group["lr"])
        return loss


def build_optimizer(
    name: str,
    params: Iterable[Tensor],
    *,
    lr: float,
    momentum: float,
    weight_decay: float,
) -> torch.optim.Optimizer:
    """``sgd`` (torch's SGD, weight decay on every parameter, as the paper's code) or ``lars``."""
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "lars":
        return LARS(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")


def cosine_lr(step: int, total_steps: int, base_lr: float, warmup_steps: int = 0) -> float:
    """Learning rate at ``step`` (0-based) of ``total_steps``.

    Linear warm-up ``base_lr * (step + 1) / warmup_steps`` over the first ``warmup_steps``
    steps, then ``base_lr * (1 + cos(pi * p)) / 2`` with p going from 0 at the end of the
    warm-up to 1 at ``total_steps``.
    """
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    fraction = min(1.0, (step - warmup_steps) / decay_steps)
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * fraction))


def learning_rate(
    schedule: str, step: int, total_steps: int, base_lr: float, warmup_steps: int = 0
) -> float:
    """Learning rate at ``step`` of ``schedule`` (one of ``SCHEDULES``).

    ``cosine``: ``cosine_lr``. ``constant``: the same linear warm-up, then ``base_lr``
    throughout (a pilot run's curve then shows what longer training buys, not the decay).

    >>> learning_rate("constant", 9, 10, 0.3), learning_rate("cosine", 5, 10, 0.2)
    (0.3, 0.1)
    """
    if schedule == "cosine":
        return cosine_lr(step, total_steps, base_lr, warmup_steps)
    if schedule != "constant":
        known = ", ".join(SCHEDULES)
        raise ValueError(f"unknown --lr-schedule {schedule!r}; choose one of {known}")
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    return base_lr
