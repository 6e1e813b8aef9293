"""Running on several processes (``torchrun``): setup, device choice, the loss's gather,
global BatchNorm.

The models know nothing of distribution; the trainer wraps them here. Under ``torchrun``
(``WORLD_SIZE`` > 1 in the environment) ``setup`` joins the process group, NCCL on GPUs and
gloo on CPUs. ``sync_batchnorm`` makes every BatchNorm layer normalise with the statistics of
the global batch: then K processes with batch B compute exactly what one process with batch
K * B computes (the test checks it), and a rank cannot tell its own images apart by their
batch statistics, the shortcut SimCLR's "global BN" closes. torch's ``SyncBatchNorm`` only
runs on GPUs, so on CPUs ``GlobalBatchNorm`` below does the same with two all-reduces.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn


@dataclass(frozen=True)
class Context:
    """Where this process runs: its rank among ``world_size`` processes and its device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Rank 0, the only process that writes files and shows progress."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def choose_device(requested: str = "auto", local_rank: int = 0) -> torch.device:
    """``auto``: CUDA if available, else CPU; ``cpu``, ``cuda`` or ``cuda:N`` as asked."""
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(requested)
    except RuntimeError:
        raise ValueError(f"unknown device {requested!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device cuda was asked for, but torch sees no CUDA GPU")
        if device.index is None:
            device = torch.device("cuda", local_rank)
        if device.index >= torch.cuda.device_count():
            raise ValueError(f"device {device} does not exist: {torch.cuda.device_count()} GPUs")
    elif device.type != "cpu":
        raise ValueError(f"unsupported device {requested!r}; use auto, cpu, cuda or cuda:N")
    return device


def setup(requested_device: str = "auto") -> Context:
    """The context of this process; joins the process group when run by ``torchrun``."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = choose_device(requested_device, local_rank)
    if world_size > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Context(rank, world_size, local_rank, device)


def cleanup(context: Context) -> None:
    """Leave the process group that ``setup`` joined."""
    if context.distributed and dist.is_initialized():
        dist.destroy_process_group()


def barrier(context: Context) -> None:
    if context.distributed:
        dist.barrier()


def mean_over_ranks(value: Tensor, context: Context) -> Tensor:
    """The mean of ``value`` over the ranks (no gradient; for logging)."""
    if not context.distributed:
        return value
    value = value.detach().clone()
    dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value / context.world_size


def min_over_ranks(value: Tensor, context: Context) -> Tensor:
    """The minimum of ``value`` over the ranks."""
    if not context.distributed:
        return value
    value = value.clone()
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return value


def gather_with_gradient(tensor: Tensor) -> Tensor:
    """Every rank's ``tensor`` concatenated along its first dimension, rank by rank; the
    backward pass sums every rank's gradient and keeps this rank's slice, so the loss on the
    gathered tensor trains each rank's own rows as one process with all rows would."""
    return _GatherWithGradient.apply(tensor)


class _GatherWithGradient(torch.autograd.Function):
    """all_gather whose backward sums every rank's gradient and keeps this rank's slice."""

    @staticmethod
    def forward(ctx, tensor: Tensor) -> Tensor:  # type: ignore[override]
        ctx.rank, ctx.size = dist.get_rank(), tensor.shape[0]
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank * ctx.size : (ctx.rank + 1) * ctx.size]


class _SumOverRanks(torch.autograd.Function):
    """all_reduce (sum) with its gradient: the sum over ranks of the incoming gradients."""

    @staticmethod
    def forward(ctx, tensor: Tensor) -> Tensor:  # type: ignore[override]
        tensor = tensor.clone()
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        grad = grad.clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm over the global batch of all ranks, on any device (two all-reduces).

    In training, the mean and then the biased variance are sums over every rank's samples;
    the running statistics get the unbiased variance, as in ``nn.BatchNorm``. Gradients flow
    through the sums, so each rank's backward also carries the other ranks' share of the
    statistics; DistributedDataParallel's averaging then gives the global-batch gradient.
    Outside training, or without a process group, it is plain BatchNorm. The statistics are
    computed in float32 and the output has the input's dtype (bf16 under CPU autocast).
    """

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2-D input, got {input.dim()}-D")

    def forward(self, input: Tensor) -> Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized()):
            return super().forward(input)
        dtype, input = input.dtype, input.float()  # statistics in float32, also under autocast
        dims = [0, *range(2, input.dim())]
        shape = [1, -1] + [1] * (input.dim() - 2)
        local_count = input.numel() // input.shape[1]
        count = _SumOverRanks.apply(input.new_tensor([float(local_count)]))
        mean = _SumOverRanks.apply(input.sum(dims)) / count
        centred = input - mean.view(shape)
        variance = _SumOverRanks.apply(centred.square().sum(dims)) / count
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                if self.momentum is None:
                    momentum = 1.0 / float(self.num_batches_tracked)
                else:
                    momentum = self.momentum
                unbiased = variance * (count / (count - 1).clamp_min(1))
                self.running_mean.lerp_(mean.detach(), momentum)
                self.running_var.lerp_(unbiased.detach(), momentum)
        output = centred * torch.rsqrt(variance + self.eps).view(shape)
        if self.affine:
            output = output * self.weight.view(shape) + self.bias.view(shape)
        return output.to(dtype)


def sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """``module`` with every BatchNorm layer replaced by a global-batch one.

    On CUDA torch's ``SyncBatchNorm``; elsewhere ``GlobalBatchNorm``. Weights, buffers and
    training mode carry over.
    """
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(
        module, GlobalBatchNorm
    ):
        converted = GlobalBatchNorm(
            module.num_features,
            module.eps,
            module.momentum,
            module.affine,
            module.track_running_stats,
        )
        converted.load_state_dict(module.state_dict())
        converted.train(module.training)
        return converted.to(device)
    for name, child in module.named_children():
        module.add_module(name, sync_batchnorm(child, device))
    return module


__all__ = [
    "Context",
    "GlobalBatchNorm",
    "barrier",
    "choose_device",
    "cleanup",
    "mean_over_ranks",
    "min_over_ranks",
    "setup",
    "sync_batchnorm",
]
