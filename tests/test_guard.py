"""The guard of the stored numbers: a tiny fixed-seed run must compute what it always did.

Every run in ``results/`` was made by an earlier commit of the trainer. A change that moves
code around (or makes a step faster) must not change what a run computes, or the stored
study and the new runs stop being comparable. This test trains a tiny run on the CPU in
float32 on one thread (400 real CIFAR-10 images, DySTreSS, 2 epochs of 10 steps, the kNN of 200 test
images after each) and compares
its losses, its kNN accuracies and a checksum of its final weights with the values the
trainer gave when the guard was written. The tolerances admit float32 rounding across
processors (different SIMD kernels sum in different orders), nothing more: a changed
augmentation, schedule, loss or initialisation moves the losses in the third digit.

If a change is meant to change what runs compute, the stored study no longer shows what
the trainer does: say so, rerun what must be rerun, and only then update the values here.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from dyntemp import runs, train
from dyntemp.config import TrainConfig

# What the trainer computed for ``tiny_config`` when the guard was written (torch 2.14.1,
# one thread, a 2-core AMD EPYC with AVX512).
LOSSES = (4.8847808837890625, 3.9798107147216797)
KNN_TOP1 = (26.5, 24.5)
WEIGHT_SQUARES = 5486.731516068808
# Rounding grows with every step: measured between one and two threads, the first epoch's
# loss moves by 2e-5 (relative), the second's by 2e-4, the weights' squares by 3e-6; a
# learning rate 1 % off moves them by 1.5e-3, 4e-4 and 2e-2.
LOSS_TOLERANCE = (1e-4, 1e-3)
WEIGHT_TOLERANCE = 1e-4
STEPS = 20
BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def tiny_config(root: Path, out: Path) -> TrainConfig:
    return TrainConfig(
        out=str(out),
        data_root=str(root),
        subset=400,
        test_subset=200,
        model="small",
        epochs=2,
        batch_size=40,
        knn_k=20,
        projector_hidden_dim=64,
        projector_dim=32,
        temperature="dystress",
        tau_min=0.1,
        tau_max=0.2,
        lr=0.3,
        momentum=0.9,
        amp="off",
        channels_last="off",
        seed=3,
        progress=False,
    )


def weight_squares(folder: Path) -> float:
    """The sum of squares of the model's weights (its parameters, not BatchNorm's running
    statistics), in float64: a checksum that rounding moves little and training much."""
    state = runs.load_checkpoint(folder / runs.CHECKPOINT_FILE)["model"]
    values = [v.double().flatten() for k, v in state.items() if not k.endswith(BUFFERS)]
    flat = torch.cat(values)
    return float((flat * flat).sum())


@pytest.fixture(scope="module")
def guarded_run(cifar10_root, tmp_path_factory) -> Path:
    root = cifar10_root
    out = tmp_path_factory.mktemp("guard") / "run"
    with one_thread():  # as the values were recorded: no reduction order set by threads
        train.train(tiny_config(root, out))
    return out


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.mark.data
def test_the_tiny_run_computes_what_it_did(guarded_run):
    history = runs.load(guarded_run)["metrics"]
    assert [entry["step"] for entry in history] == [STEPS // 2, STEPS]
    losses = tuple(entry["loss"] for entry in history)
    for loss, expected, tolerance in zip(losses, LOSSES, LOSS_TOLERANCE, strict=True):
        assert loss == pytest.approx(expected, rel=tolerance), losses
    # Two test images of 200 may change their votes under another processor's rounding.
    knn = tuple(entry["knn_top1"] for entry in history)
    assert knn == pytest.approx(KNN_TOP1, abs=1.0), knn
    squares = weight_squares(guarded_run)
    assert squares == pytest.approx(WEIGHT_SQUARES, rel=WEIGHT_TOLERANCE), squares


@pytest.mark.data
def test_the_guard_sees_a_changed_computation(guarded_run, tmp_path):
    """The tolerances are tight enough: the same run with a learning rate 1 % off fails them."""
    root = Path(runs.load_config(guarded_run).data_root)
    changed = dataclasses.replace(tiny_config(root, tmp_path / "run"), lr=0.3 * 1.01)
    with one_thread():
        train.train(changed)
    losses = [entry["loss"] for entry in runs.load(tmp_path / "run")["metrics"]]
    assert losses[0] != pytest.approx(LOSSES[0], rel=LOSS_TOLERANCE[0])
    squares = weight_squares(tmp_path / "run")
    assert squares != pytest.approx(WEIGHT_SQUARES, rel=WEIGHT_TOLERANCE)
