"""bench gpu: its measurements run on the CPU at tiny sizes (the numbers are not tested)."""

from __future__ import annotations

import os

import torch

from dyntemp.bench import gpu


def test_without_cuda_it_says_so_in_one_line_and_exits_0(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu.main(["--out", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == 1 and "no CUDA" in printed[0]
    assert not (tmp_path / "out").exists()


def test_views_on_the_cpu(monkeypatch, tmp_path):
    monkeypatch.setenv("DYNTEMP_DATA", str(tmp_path / "none"))  # random images
    result = gpu.measure_views("cpu", batch=16, epoch_images=64, rounds=1)
    assert result["epoch_views"] == 2 * 64 and result["views_per_s"] > 0
    assert result["epoch_views_per_s"] > 0 and result["host_syncs"] is None
    assert "random" in result["images"]


def test_loss_on_the_cpu_has_every_candidate_at_every_size():
    rows = gpu.measure_loss("cpu", sizes=(8, 16), dim=4, repeats=1)
    names = {r["loss"] for r in rows}
    assert "dyntemp ntxent, DySTreSS(0.1, 0.2)" in names and "plain autograd, fixed 0.2" in names
    assert {r["views"] for r in rows} == {8, 16}
    assert all(r["ms"] > 0 and r["peak_mib"] is None for r in rows)


def test_nccl_is_measured_on_the_cpu_with_gloo():
    import torch.distributed as dist

    before = dict(os.environ)
    result = gpu.measure_nccl("cpu", steps=2, batch=8, dim=4)
    assert set(result) == {"backend", "steps", "views", "ms_per_step"}  # it only measures
    assert result["backend"] == "gloo" and result["views"] == 16 and result["ms_per_step"] > 0
    assert not dist.is_initialized() and dict(os.environ) == before


def test_report_goals_and_failures_from_a_result():
    result = {
        "machine": gpu.machine_info("cpu"),
        "views": {
            "images": "random",
            "size": 32,
            "batch": 512,
            "views_per_s": 300_000.0,
            "epoch_views": 100_000,
            "epoch_seconds": 0.4,
            "epoch_views_per_s": 250_000.0,
            "host_syncs": "none",
        },
        "loss": [{"views": 8, "loss": "x", "ms": 1.0, "peak_mib": None, "host_syncs": "yes: item"}],
        "training": [
            {
                "name": "a",
                "amp_dtype": "bfloat16",
                "train_seconds": 1.5,
                "images_per_s": 33e3,
                "losses_finite": True,
            },
            {
                "name": "b",
                "amp_dtype": "float16",
                "train_seconds": 3.0,
                "images_per_s": 16e3,
                "losses_finite": False,
            },
            {"name": "c", "error": "RuntimeError: boom"},
        ],
        "nccl": {"backend": "nccl", "steps": 5, "views": 512, "ms_per_step": 1.0},
    }
    found = gpu.goals(result)
    assert any("300,000, floor met" in g for g in found)
    assert any("1.50 s (a), met" in g for g in found)
    problems = gpu.failures(result)
    assert problems == [
        "training 'b': a loss is not finite",
        "training 'c': RuntimeError: boom",
        "host sync: yes: item",
    ]
    text = gpu.format_report({**result, "goals": found})
    assert "RuntimeError: boom" in text and "NOT finite" in text and "goal:" in text


def test_training_rows_time_the_trainers_steps_on_a_fake_cifar(tmp_path, monkeypatch):
    from fake_cifar import write_fake_cifar10

    from dyntemp import timing

    root = write_fake_cifar10(tmp_path / "data")  # 200 training images: 6 steps of 32
    timed = []
    real = timing.epoch_seconds
    monkeypatch.setattr(gpu, "epoch_seconds", lambda *a, **k: timed.append(a) or real(*a, **k))
    rows = [
        gpu.TrainingRow("fixed", {"amp": "off", "temperature": "fixed", "tau": 0.05}),
        gpu.TrainingRow("bad", {"amp": "fp16"}),  # fp16 needs CUDA: an error, not a crash
        gpu.TrainingRow("late", {"amp": "auto"}),
    ]
    tiny = dict(model="small", batch_size=32, warmup=1)
    first, bad = gpu.measure_training("cpu", str(root), rows[:2], **tiny)
    assert first["steps"] == 6 and first["losses_finite"] and first["amp_dtype"] == "off"
    assert first["train_seconds"] > 0 and first["images_per_s"] > 0
    assert "CIFAR-10 from" in first["images"] and "error" in bad and "fp16" in bad["error"]
    (config, images, _), *_ = timed
    assert (config.temperature, config.tau, config.batch_size) == ("fixed", 0.05, 32)
    assert len(images) == 200
    skipped = gpu.measure_training("cpu", None, rows[2:], deadline=0.0, images=32)
    assert skipped == [{"name": "late", "amp": "auto", "skipped": "the time budget was spent"}]


def test_the_whole_run_on_the_cpu_writes_its_results(tmp_path, monkeypatch, capsys):
    import json

    from fake_cifar import write_fake_cifar10

    monkeypatch.setenv("DYNTEMP_DATA", str(tmp_path / "none"))  # random images for the views
    root = write_fake_cifar10(tmp_path / "data")
    result = gpu.measure(
        "cpu",
        data_root=str(root),
        views=(16, 32),
        loss_sizes=(8,),
        training={
            "rows": [gpu.TrainingRow("fixed", {"temperature": "fixed", "tau": 0.2, "amp": "off"})],
            "model": "small",
            "batch_size": 32,
            "warmup": 1,
        },
    )
    assert result["failures"] == [] and [r["name"] for r in result["training"]] == ["fixed"]
    gpu.report(result, tmp_path / "out")
    printed = capsys.readouterr().out
    assert "fixed" in printed and "gloo" in printed
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["benchmark"] == "gpu" and saved["provenance"]["command"]
    assert set(saved) >= {"machine", "views", "loss", "nccl", "training", "goals", "failures"}
