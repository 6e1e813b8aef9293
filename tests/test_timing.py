"""The step timer: the trainer's own steps, timed as one stretch (the numbers are not tested)."""

from __future__ import annotations

import math

import pytest
import torch

from dyntemp import step, timing
from dyntemp.config import TrainConfig

TINY = dict(model="small", batch_size=16, projector_hidden_dim=16, projector_dim=8, device="cpu")


def images(count: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (count, 3, 32, 32), dtype=torch.uint8, generator=generator)


def test_the_steps_are_the_trainers_epoch_after_epoch(monkeypatch):
    calls = []
    real = step.train_step
    monkeypatch.setattr(step, "train_step", lambda *a: calls.append(a[-1]) or real(*a))
    config = TrainConfig(**TINY, amp="off", channels_last="off", epochs=2)
    steps = timing.trainer_steps(config, images(32), "cpu")  # 2 steps an epoch, 4 a run
    losses = [next(steps) for _ in range(5)]
    assert calls == [0, 1, 2, 3, 0]  # the schedule's step, around again after the run's end
    assert all(loss.dim() == 0 and math.isfinite(loss.item()) for loss in losses)


def test_an_epoch_is_timed_after_the_warm_up():
    config = TrainConfig(**TINY, amp="off", channels_last="off")
    epoch = timing.epoch_seconds(config, images(48), "cpu", warmup=1)
    assert epoch["steps"] == 3 and epoch["losses_finite"]
    assert epoch["images_per_s"] == pytest.approx(48 / epoch["seconds"])


def test_a_step_estimate_leaves_the_random_state_as_it_was():
    config = TrainConfig(**TINY, amp="off", channels_last="off")
    state = torch.get_rng_state()
    assert 0 < timing.step_seconds(config, steps=2) < 60
    assert torch.equal(torch.get_rng_state(), state)
    with pytest.raises(ValueError, match="steps must be positive"):
        timing.step_seconds(config, steps=0)


def test_too_few_images_for_a_batch_are_refused():
    config = TrainConfig(**TINY)
    with pytest.raises(ValueError, match="8 images do not make a batch of 16"):
        next(timing.trainer_steps(config, images(8), "cpu"))


def test_the_timer_steps_a_rule_with_a_temperature_per_image():
    config = TrainConfig(out="unused", model="small", batch_size=8, projector_hidden_dim=16,
                         projector_dim=8, temperature="isogclr", amp="off",
                         channels_last="off")  # fmt: skip
    images = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    steps = timing.trainer_steps(config, images, "cpu")
    losses = [next(steps) for _ in range(3)]  # over an epoch's end: the indices follow
    assert all(torch.isfinite(loss) for loss in losses)
