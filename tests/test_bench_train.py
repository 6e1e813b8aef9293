"""bench train runs end to end at a tiny size (its numbers are not tested: it is no timed test)."""

from __future__ import annotations

import json

import torch

from dyntemp.bench import train as bench


def test_bench_train_runs_and_writes_its_results(tmp_path, capsys):
    out = tmp_path / "bench"
    arguments = "--images 64 --batch-size 32 --steps 1 --rounds 1 --workers 0 --no-gpu"
    assert bench.main([*arguments.split(), "--out", str(out)]) == 0
    payload = json.loads((out / "results.json").read_text())
    rates = payload["cpu"]["median_images_per_s"]
    assert set(rates) == {"dyntemp fp32", "dyntemp bf16", "reference"}
    assert all(rate > 0 for rate in rates.values())
    assert set(payload["cpu"]["speedup"]) == {"dyntemp fp32", "dyntemp bf16"}
    printed = capsys.readouterr().out
    assert "dyntemp bf16" in printed and "x reference" in printed


def test_bench_train_times_the_trainers_own_step(monkeypatch):
    from dyntemp import train

    calls = []
    real = train.train_step
    monkeypatch.setattr(bench, "train_step", lambda *a, **k: calls.append(1) or real(*a, **k))
    images = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8)
    steps = bench.dyntemp_steps(images, 32, "small", torch.device("cpu"), "off", "off")
    next(steps), next(steps), next(steps)
    assert len(calls) == 3


def test_bench_train_under_load_has_the_thread_guard_row(tmp_path, capsys):
    out = tmp_path / "bench"
    arguments = "--images 64 --batch-size 32 --steps 1 --rounds 1 --workers 0 --no-gpu"
    before = torch.get_num_threads()
    assert bench.main([*arguments.split(), "--under-load", "--out", str(out)]) == 0
    assert torch.get_num_threads() == before  # the guard gave the threads back
    loaded = json.loads((out / "results.json").read_text())["cpu"]["median_under_load_images_per_s"]
    assert set(loaded) == {"dyntemp fp32", "dyntemp bf16", bench.GUARDED}
    assert bench.GUARDED in capsys.readouterr().out
