"""torchrun on CPU (gloo): two processes train, and equal one process with the whole batch."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from fake_cifar import write_fake_cifar10
from helpers import train_in_processes

from dyntemp import parts
from dyntemp.config import TrainConfig

OPTIONS = (
    "--model small --epochs 1 --knn-k 5 --projector-hidden-dim 64 --projector-dim 32 "
    "--no-progress --momentum 0.9"
).split()


def trained(root: Path, out: Path, processes: int, batch_size: int, amp: str = "off") -> dict:
    """The results of one tiny run on `processes` processes."""
    return train_in_processes(root, out, processes, batch_size, [*OPTIONS, "--amp", amp])


@pytest.fixture(scope="module")
def one_step_data(tmp_path_factory) -> Path:
    # 20 training images: one step of a global batch of 16 in the epoch.
    return write_fake_cifar10(tmp_path_factory.mktemp("data"), train_per_class=2, test_per_class=2)


@pytest.mark.slow
def test_two_processes_with_batch_b_equal_one_with_batch_2b(one_step_data, tmp_path):
    single = trained(one_step_data, tmp_path / "single", processes=1, batch_size=16)
    double = trained(one_step_data, tmp_path / "double", processes=2, batch_size=8)
    assert double["provenance"]["world_size"] == 2
    assert single["final"]["step"] == double["final"]["step"] == 1
    assert double["final"]["loss"] == pytest.approx(single["final"]["loss"], rel=1e-5)
    a = torch.load(tmp_path / "single" / "checkpoint.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "double" / "checkpoint.pt", weights_only=True)["model"]
    torch.manual_seed(0)  # the initial weights, as the trainer makes them
    config = TrainConfig(model="small", projector_hidden_dim=64, projector_dim=32)
    initial = parts.build_model(config).state_dict()
    assert a.keys() == b.keys() == initial.keys()
    for key in a:
        if not a[key].is_floating_point():  # BatchNorm's step counters
            assert torch.equal(a[key], b[key]), key
            continue
        # Each tensor's change in the step agrees to float32 accumulation error (~1e-5).
        change, other = a[key] - initial[key], b[key] - initial[key]
        assert change.norm() > 0, key
        assert (change - other).norm() <= 1e-4 * change.norm(), key


@pytest.mark.slow
def test_two_processes_complete_a_run(tmp_path):
    root = write_fake_cifar10(tmp_path / "data")
    results = trained(root, tmp_path / "run", processes=2, batch_size=20)  # 200 images: 5 steps
    assert results["provenance"]["world_size"] == 2
    assert results["final"]["step"] == 5
    assert results["knn_top1"] > 50
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 1


@pytest.mark.slow
def test_two_processes_train_under_bf16_autocast(one_step_data, tmp_path):
    results = trained(one_step_data, tmp_path / "bf16", processes=2, batch_size=8, amp="bf16")
    assert results["provenance"]["amp"] == "bfloat16" and results["provenance"]["world_size"] == 2
    assert math.isfinite(results["final"]["loss"])
