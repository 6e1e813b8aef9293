"""A run's parts and one SGD step: what the loop (``dyntemp.train``) and the step timer
(``dyntemp.timing``) both use.

``start_run`` builds a run's model, optimiser, temperature rule and views on its device,
seeded by the config; ``train_step`` takes one SGD step on a batch of view pairs, its
phases labelled for torch's profiler (``PHASES``). ``Run`` holds what the loop works with
and what a checkpoint saves.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.profiler import record_function

from dyntemp import distributed, models, optim, runs, temperature
from dyntemp.augment import SimCLRAugment
from dyntemp.config import TrainConfig
from dyntemp.cpu_share import ThreadGuard
from dyntemp.isogclr import isogclr_loss
from dyntemp.loss import ntxent
from dyntemp.moco import MoCo, symmetric_moco_loss
from dyntemp.parts import build_augment, build_model
from dyntemp.precision import Precision, by_rule

__all__ = ["PHASES", "Run", "start_run", "train_step"]

#: The labels of a step's phases in torch's profiler (the views are made by the batches).
PHASES = {
    "views": "dyntemp: views",
    "forward": "dyntemp: forward",
    "loss": "dyntemp: loss",
    "backward": "dyntemp: backward",
    "optimiser": "dyntemp: optimiser",
}


# ----------------------------------------------------------------------------- a run


@dataclass
class Run:
    """A run in progress: what the loop works with, and what a checkpoint saves."""

    config: TrainConfig
    context: distributed.Context
    rule: temperature.TemperatureRule
    precision: Precision  # what the steps compute in, fixed for the whole run
    images: torch.Tensor  # the training images, on the device
    augment: SimCLRAugment
    model: models.SimCLRModel
    step_model: nn.Module  # the model as the steps call it (DDP, compiled)
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    global_batch: int
    steps_per_epoch: int
    epoch: int = 0  # epochs finished
    history: list[dict[str, Any]] = field(default_factory=list)
    elapsed: float = 0.0  # seconds of training, over every resumption
    moco: MoCo | None = None  # method moco: the key encoder and the queue
    thread_guard: ThreadGuard | None = None  # on the CPU: one thread while others are busy

    @property
    def dtype(self) -> torch.dtype | None:
        return self.precision.dtype

    @property
    def channels_last(self) -> bool:
        return self.precision.channels_last

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.config.epochs

    @property
    def warmup_steps(self) -> int:
        return round(self.config.warmup_epochs * self.steps_per_epoch)

    def state(self, fingerprint: str) -> dict[str, Any]:
        """The checkpoint: tensors and plain values only, loadable with weights_only."""
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else {},
            "temperature": self.rule.state_dict(),
            "moco": self.moco.state_dict() if self.moco is not None else {},
            "epoch": self.epoch,
            "history": self.history,
            "elapsed": self.elapsed,
            "precision": self.precision.as_dict(),
            "dataset_fingerprint": fingerprint,
            "config": self.config.as_dict(),
        }

    def restore(self, state: dict[str, Any], fingerprint: str, folder: Path) -> None:
        """Continue from a checkpoint of this run."""
        if state.get("dataset_fingerprint") != fingerprint:
            raise ValueError(
                f"the training data differ from those of the run in {folder} (fingerprint "
                f"{fingerprint[:12]} vs {str(state.get('dataset_fingerprint'))[:12]})"
            )
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            if self.rule.parameters() or self.rule.needs_indices:  # learned, or per image
                self.rule.load_state_dict(state["temperature"])
            if self.moco is not None:
                self.moco.load_state_dict(state["moco"])
        except (KeyError, RuntimeError, ValueError, TypeError) as error:
            raise runs.RunFolderError(
                f"{folder / runs.CHECKPOINT_FILE} does not fit this run: {error}"
            ) from None
        # A run may resume under another mixed precision (Colab hands out other GPUs): the
        # loss scale of fp16 carries over only between two fp16 runs.
        if self.scaler.is_enabled() and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.history = int(state["epoch"]), list(state["history"])
        self.elapsed = float(state["elapsed"])


def start_run(
    config: TrainConfig,
    context: distributed.Context,
    images: torch.Tensor,
    precision: Precision | None = None,
) -> Run:
    """Model, optimiser and views of a new run on ``images`` (uint8, N x 3 x H x W), moved to
    the context's device; everything seeded by the config. ``precision`` defaults to what
    the config names, ``auto`` resolved by rule (``train`` measures instead, on a CPU)."""
    device = context.device
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    if precision is None:
        precision = by_rule(config.amp, config.channels_last, device)
    dtype, channels_last = precision.dtype, precision.channels_last
    images = images.to(device)
    torch.manual_seed(config.seed)
    model = build_model(config).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if context.distributed:  # before the optimizer: the conversion makes new parameters
        model = distributed.sync_batchnorm(model, device)
    rule = config.temperature_rule().to(device)
    if rule.needs_indices:  # iSogCLR: a temperature (and its state) for every training image
        rule.bind(len(images), device)  # type: ignore[attr-defined]
    groups: list[dict[str, Any]] = [{"params": list(model.parameters())}]
    if rule.parameters():  # a learned temperature: trained, never decayed
        groups.append({"params": rule.parameters(), "weight_decay": 0.0})
    moco = None
    if config.method == "moco":  # the key encoder starts as a copy of the model
        moco = MoCo(
            model,
            queue_size=config.queue_size,
            dim=config.projector_dim,
            momentum=config.moco_momentum,
            seed=config.seed,
        )
    optimizer = optim.build_optimizer(
        config.optimizer,
        groups,  # type: ignore[arg-type]
        lr=config.lr,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
    )
    step_model: nn.Module = model
    if context.distributed:
        step_model = nn.parallel.DistributedDataParallel(
            step_model, device_ids=[device.index] if device.type == "cuda" else None
        )
    if config.compile:
        step_model = torch.compile(step_model)
    global_batch = config.batch_size * context.world_size
    return Run(
        config=config,
        context=context,
        rule=rule,
        precision=precision,
        images=images,
        augment=build_augment(config, images.shape[-1]),
        model=model,
        step_model=step_model,
        optimizer=optimizer,
        scaler=torch.amp.GradScaler(device.type, enabled=dtype == torch.float16),
        global_batch=global_batch,
        steps_per_epoch=len(images) // global_batch,
        moco=moco,
        thread_guard=ThreadGuard() if device.type == "cpu" else None,
    )


def train_step(
    run: Run,
    view1: torch.Tensor,
    view2: torch.Tensor,
    step: int,
    indices: torch.Tensor | None = None,
) -> torch.Tensor:
    """One SGD step on a batch of view pairs; returns the loss (detached, on the device).
    ``indices``: the batch's images' indices, for a rule with a temperature per image.

    Its phases are labelled for torch's profiler (``PHASES``; ``bench train --profile``).
    """
    lr = optim.learning_rate(
        run.config.lr_schedule, step, run.total_steps, run.config.lr, run.warmup_steps
    )
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    device_type = run.context.device.type
    with record_function(PHASES["forward"]):
        views = torch.cat([view1, view2])
        if run.channels_last:
            views = views.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device_type, dtype=run.dtype, enabled=run.dtype is not None):
            projections = run.step_model(views)
    options = {
        "detach_temperature": run.config.detach_temperature,
        "decoupled": run.config.decoupled,
        "progress": step / run.steps_per_epoch,
    }
    with record_function(PHASES["loss"]):
        if run.moco is None:
            z1, z2 = projections.float().chunk(2)  # the loss runs in float32
            if run.rule.needs_indices:  # iSogCLR: its own loss, and its step on the images
                if indices is None:
                    raise ValueError(f"{run.rule!r} needs the batch's images' indices")
                loss = isogclr_loss(z1, z2, indices, run.rule, gather=run.context.distributed)
            else:
                loss = ntxent(z1, z2, run.rule, gather=run.context.distributed, **options)
        else:  # MoCo: the keys of the momentum encoder, updated first (as MoCo's code)
            with torch.no_grad():
                run.moco.update(run.model)
                with torch.autocast(device_type, dtype=run.dtype, enabled=run.dtype is not None):
                    keys = run.moco.encoder(views)
            q1, q2 = projections.float().chunk(2)
            k1, k2 = keys.float().chunk(2)
            loss = symmetric_moco_loss(q1, q2, k1, k2, run.moco.queue, run.rule, **options)
    with record_function(PHASES["backward"]):
        run.optimizer.zero_grad(set_to_none=True)
        run.scaler.scale(loss).backward()
        _average_temperature_gradients(run)
    with record_function(PHASES["optimiser"]):
        run.scaler.step(run.optimizer)
        run.scaler.update()
        run.rule.clamp_()
        if run.moco is not None:
            run.moco.enqueue(k1, k2)
    return loss.detach()


def _average_temperature_gradients(run: Run) -> None:
    """A learned temperature is no module parameter: DDP does not average its gradient."""
    if not run.context.distributed:
        return
    import torch.distributed as dist

    for parameter in run.rule.parameters():
        if parameter.grad is not None:
            dist.all_reduce(parameter.grad)
            parameter.grad.div_(run.context.world_size)
