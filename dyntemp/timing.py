"""Seconds of the trainer's own steps: the one step timer of the benchmarks and estimates.

A step is ``dyntemp.step.train_step``: both views of a batch, the forward pass, the loss,
the backward pass and the update. Steps are timed as one stretch with the device waited for
only before and after, so nothing inside the stretch stops the host; untimed steps first
take the one-off costs (first calls, cuDNN's autotuning, ``torch.compile``).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch

from dyntemp import step
from dyntemp.augment import ViewBatches
from dyntemp.config import TrainConfig
from dyntemp.distributed import Context, choose_device

if TYPE_CHECKING:
    from dyntemp.precision import Precision

__all__ = ["epoch_seconds", "step_seconds", "sync", "time_steps", "trainer_steps"]


def sync(device: torch.device | str) -> None:
    """Wait for the work queued on ``device`` (a no-op on the CPU), so a clock can be read."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def trainer_steps(
    config: TrainConfig,
    images: torch.Tensor,
    device: torch.device | str,
    precision: Precision | None = None,
) -> Iterator[torch.Tensor]:
    """The trainer's steps of ``config`` on ``images`` (uint8, N x 3 x H x W), one process,
    epoch after epoch without end: each ``next`` runs one and gives its loss (on the device).

    ``precision`` defaults to the config's, ``auto`` resolved by rule (``start_run``).
    """
    if len(images) < config.batch_size:
        raise ValueError(f"{len(images)} images do not make a batch of {config.batch_size}")
    run = step.start_run(config, Context(0, 1, 0, torch.device(device)), images, precision)
    done, epoch = 0, 0
    while True:
        batches = iter(
            ViewBatches(
                run.images,
                config.batch_size,
                run.augment,
                seed=0,
                epoch=epoch,
                with_indices=run.rule.needs_indices,  # iSogCLR: the images' own temperatures
            )
        )
        while True:
            with torch.profiler.record_function(step.PHASES["views"]):
                batch = next(batches, None)
            if batch is None:
                break
            view1, view2, *indices = batch
            yield step.train_step(run, view1, view2, done % run.total_steps, *indices)
            done += 1
        epoch += 1


def time_steps(
    steps: Iterator[Any], count: int, device: torch.device | str, into: list | None = None
) -> float:
    """Seconds of the next ``count`` steps, the device waited for before and after; what
    each step gives (the trainer's: its loss) is appended to ``into`` when one is given.

    >>> given = []
    >>> time_steps(iter(range(5)), 3, "cpu", into=given) > 0, given
    (True, [0, 1, 2])
    """
    sync(device)
    start = time.perf_counter()
    if into is None:
        for _ in range(count):
            next(steps)
    else:
        into.extend(next(steps) for _ in range(count))
    sync(device)
    return time.perf_counter() - start


def epoch_seconds(
    config: TrainConfig, images: torch.Tensor, device: torch.device | str, *, warmup: int = 20
) -> dict[str, Any]:
    """One epoch of the trainer's steps on ``images`` (``len(images) // batch_size`` steps),
    timed after ``warmup`` untimed steps: its steps, seconds, images per second and whether
    every loss was finite (read after the clock stopped)."""
    steps = trainer_steps(config, images, device)
    time_steps(steps, warmup, device)
    count, losses = len(images) // config.batch_size, []
    seconds = time_steps(steps, count, device, into=losses)
    return {
        "steps": count,
        "seconds": seconds,
        "images_per_s": count * config.batch_size / seconds,
        "losses_finite": bool(torch.isfinite(torch.stack(losses)).all()),
    }


def step_seconds(
    config: TrainConfig,
    *,
    device: torch.device | str | None = None,
    steps: int = 6,
    precision: Precision | None = None,
) -> float:
    """Seconds of one trainer's step of ``config`` here, on random images of its size: the
    first half of ``steps`` warm up, the rest are timed together. ``device`` defaults to the
    config's; the CPU's global random state is left as it was.

    >>> config = TrainConfig(model="small", batch_size=8, projector_hidden_dim=16,
    ...                      projector_dim=8, amp="off", channels_last="off", device="cpu")
    >>> 0 < step_seconds(config, steps=2) < 60
    True
    """
    if steps < 1:
        raise ValueError(f"steps must be positive, got {steps}")
    device = choose_device(config.device) if device is None else torch.device(device)
    size = config.image_size or 32
    state = torch.get_rng_state()
    try:
        generator = torch.Generator().manual_seed(0)
        shape = (2 * config.batch_size, 3, size, size)
        images = torch.randint(0, 256, shape, dtype=torch.uint8, generator=generator)
        run = trainer_steps(config, images, device, precision)
        time_steps(run, steps // 2, device)
        timed = steps - steps // 2
        seconds = time_steps(run, timed, device)
    finally:
        torch.set_rng_state(state)
    return seconds / timed
