"""What several test files share: the tiny training config, training in subprocesses
(``torchrun`` when more than one), a run stopped after its first epoch and rerun, and a run's
metrics without their timings. The fixtures (``fake_root``) are in ``conftest.py``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from dyntemp import train
from dyntemp.config import TrainConfig

#: The fields of metrics.jsonl that measure time, and so differ between identical runs.
TIMING = ("images_per_s", "seconds", "threads")


def tiny(root: Path, out: Path | str, **changes: Any) -> TrainConfig:
    """Two epochs of the small network on the generated CIFAR-10 of ``fake_root`` (5 steps
    of 40 images each), float32 everywhere (bf16 has tests of its own), ``changes`` on top."""
    settings: dict[str, Any] = dict(
        out=str(out),
        data_root=str(root),
        model="small",
        epochs=2,
        batch_size=40,
        knn_k=20,
        progress=False,
        projector_hidden_dim=64,
        projector_dim=32,
        amp="off",
    )
    return TrainConfig(**{**settings, **changes})


def train_in_processes(
    root: Path, out: Path, processes: int, batch_size: int, options: list[str]
) -> dict[str, Any]:
    """``python -m dyntemp train`` with ``options`` in a subprocess (under ``torchrun`` with
    ``processes`` > 1), one thread each; its results.json."""
    command = ["-m", "dyntemp", "train", *options, "--data-root", str(root)]
    command += ["--batch-size", str(batch_size), "--out", str(out)]
    if processes > 1:
        launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"]
        command = launcher + command
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    finished = subprocess.run(
        [sys.executable, *command], env=environment, capture_output=True, text=True, timeout=300
    )
    assert finished.returncode == 0, finished.stderr[-3000:]
    return json.loads((out / "results.json").read_text())


class Interrupted(Exception):
    """Raised in place of a kill right after the first epoch."""


def interrupted_then_resumed(
    config: TrainConfig, monkeypatch: pytest.MonkeyPatch
) -> dict[str, Any]:
    """Train ``config`` for one epoch and stop as a kill would after that epoch's checkpoint,
    check the checkpoint holds epoch 1, then rerun it (it resumes); the rerun's results."""
    real = train._one_epoch

    def once(run, *args):
        real(run, *args)
        raise Interrupted

    monkeypatch.setattr(train, "_one_epoch", once)
    with pytest.raises(Interrupted):
        train.train(config)
    monkeypatch.setattr(train, "_one_epoch", real)
    assert torch.load(Path(config.out) / "checkpoint.pt", weights_only=True)["epoch"] == 1
    return train.train(config)


def untimed_metrics(folder: Path) -> list[dict[str, Any]]:
    """The lines of ``folder/metrics.jsonl`` without the fields that measure time."""
    lines = (folder / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING} for line in lines]
