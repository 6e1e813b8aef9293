"""bench train runs end to end at a tiny size (its numbers are not tested: it is no timed test)."""

from __future__ import annotations

import json

import pytest
import torch

from dyntemp.bench import train as bench


def test_bench_train_runs_and_writes_its_results(tmp_path, capsys, monkeypatch):
    real = bench.convolution_gflops  # the full-size peak takes seconds where bf16 is emulated
    monkeypatch.setattr(bench, "convolution_gflops",
                        lambda dtype: real(dtype, 1, images=2, channels=16))  # fmt: skip
    out = tmp_path / "bench"
    arguments = "--images 64 --batch-size 32 --steps 1 --rounds 1 --workers 0 --no-gpu"
    assert bench.main([*arguments.split(), "--out", str(out)]) == 0
    payload = json.loads((out / "results.json").read_text())
    rates = payload["cpu"]["median_images_per_s"]
    assert set(rates) == {*bench.VARIANTS, "reference"}
    assert all(rate > 0 for rate in rates.values())
    assert set(payload["cpu"]["speedup"]) == set(bench.VARIANTS)
    assert payload["cpu"]["peak_gflops"]["fp32"] > 0 and payload["cpu"]["flops_per_image"] > 0
    printed = capsys.readouterr().out
    assert "dyntemp bf16 + channels_last" in printed and "x reference" in printed
    assert "of peak" in printed and "3x3 convolution" in printed
    for name in ("fp32", "bf16"):  # the peak is the faster of the two measurements
        measured = payload["cpu"]["peak_measurements"][name]
        assert measured["peak"] == max(measured["matmul"], measured["convolution"]) > 0
        assert payload["cpu"]["peak_gflops"][name] == measured["peak"]


def test_bench_train_times_the_trainers_own_step(monkeypatch):
    from dyntemp import step

    calls = []
    real = step.train_step
    monkeypatch.setattr(step, "train_step", lambda *a, **k: calls.append(1) or real(*a, **k))
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
    assert set(loaded) == {*bench.VARIANTS, bench.GUARDED}
    assert bench.GUARDED in capsys.readouterr().out


def test_the_table_columns_line_up_whatever_the_row_names():
    cpu = {
        "model": "small",
        "batch_size": 256,
        "torch_threads": 2,
        "omp_wait_policy": "(default)",
        "native_bf16": True,
        "median_images_per_s": {"dyntemp fp32": 1368.0, "dyntemp bf16": 3673.0, "reference": 741.0},
        "speedup": {"dyntemp fp32": 1.85, "dyntemp bf16": 4.96},
        "peak_gflops": {"fp32": 400.0, "bf16": 800.0},
        "flops_per_image": 116.6e6,
        "median_under_load_images_per_s": {"dyntemp bf16": 1045.0, bench.GUARDED: 1457.0},
        "reference": "torchvision",
    }
    header, *rows = bench.format_table(cpu).splitlines()[2:-1]
    ends = {len(header)} | {len(row) for row in rows}
    assert ends == {len(header)}  # every row as long as the header: the columns align
    assert rows[-1].startswith(bench.GUARDED + " ") and rows[-1].endswith("1457")
    column = header.index("images/s") + len("images/s")
    assert rows[1][:column].endswith("3673") and rows[1].endswith("1045")


def test_each_row_is_measured_against_the_peak_of_its_arithmetic():
    cpu = {
        "median_images_per_s": {"dyntemp fp32": 1000.0, "dyntemp bf16": 2000.0, "reference": 500.0},
        "peak_gflops": {"fp32": 400.0, "bf16": 800.0},
        "flops_per_image": 100e6,
    }
    rows = bench.peak_and_fraction(cpu)
    assert rows["dyntemp fp32"] == {"gflops": 100.0, "fraction_of_peak": 0.25}
    assert rows["dyntemp bf16"] == {"gflops": 200.0, "fraction_of_peak": 0.25}  # bf16 peak
    assert rows["reference"]["fraction_of_peak"] == 50.0 / 400.0


def test_the_flops_of_a_training_image_are_both_views_forward_and_backward():
    from torch.utils.flop_counter import FlopCounterMode

    from dyntemp import models

    backbone = models.build("small")
    model = models.SimCLRModel(backbone, models.Projector(backbone.feature_dim))
    with FlopCounterMode(display=False) as forward_only:
        model(torch.randn(2, 3, 32, 32))  # two views of one image, forward
    per_image = bench.training_flops("small", batch_size=4)
    # backward costs about twice the forward (the first layer's input gradient is skipped)
    assert 2.5 * forward_only.get_total_flops() < per_image < 3.0 * forward_only.get_total_flops()


def test_the_profile_puts_every_millisecond_of_a_step_in_a_category(tmp_path, capsys):
    out = tmp_path / "profile"
    arguments = "--images 64 --batch-size 32 --steps 2 --profile --no-gpu"
    assert bench.main([*arguments.split(), "--out", str(out)]) == 0
    profiles = json.loads((out / "results.json").read_text())["profiles"]
    assert set(profiles) == set(bench.VARIANTS)
    for profile in profiles.values():
        operators, phases = profile["operators"], profile["phases"]
        named = {bench.VIEWS_CATEGORY, *bench.PROFILE_CATEGORIES, bench.PYTHON_CATEGORY}
        assert set(operators) == {*named, "other"}
        # the views' operators and Python are counted once, in their own category
        assert operators[bench.VIEWS_CATEGORY] == pytest.approx(phases["views"], rel=0.02)
        assert operators["convolution, forward"] > 0 and operators["convolution, backward"] > 0
        assert operators["other"] < sum(operators.values())
        assert all(phases[phase] > 0 for phase in ("views", "forward", "loss", "backward"))
        # the phases hold the whole step but its bookkeeping (and the profiler's own)
        assert 0.8 < sum(phases.values()) / sum(operators.values()) < 1.25
    assert "ms a step" in capsys.readouterr().out
    settings = json.loads((out / "results.json").read_text())["settings"]
    assert settings == {"model": "small", "batch_size": 32, "steps": 2}


def test_compile_adds_each_rows_twin_under_torch_compile(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(bench, "VARIANTS", {"dyntemp fp32": ("off", "off")})  # one compile
    real = bench.convolution_gflops
    monkeypatch.setattr(bench, "convolution_gflops",
                        lambda dtype: real(dtype, 1, images=2, channels=16))  # fmt: skip
    out = tmp_path / "bench"
    arguments = "--images 64 --batch-size 32 --steps 1 --rounds 1 --workers 0 --no-gpu --compile"
    assert bench.main([*arguments.split(), "--out", str(out)]) == 0
    rates = json.loads((out / "results.json").read_text())["cpu"]["median_images_per_s"]
    assert list(rates) == ["dyntemp fp32", "dyntemp fp32" + bench.COMPILED, "reference"]
    assert "dyntemp fp32 + torch.compile" in capsys.readouterr().out
    with pytest.raises(ValueError, match="drop --compile"):
        bench.main(["--profile", "--compile"])


def test_compiled_steps_compute_what_the_eager_steps_compute():
    from torch._dynamo.utils import counters

    torch._dynamo.reset()  # compile afresh, even after another test compiled the same model
    counters.clear()
    images = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8)
    cpu = torch.device("cpu")
    eager = bench.dyntemp_steps(images, 32, "small", cpu, "off", "off")
    compiled = bench.dyntemp_steps(images, 32, "small", cpu, "off", "off", compile=True)
    first = torch.stack([next(eager) for _ in range(3)])
    second = torch.stack([next(compiled) for _ in range(3)])
    assert counters["stats"]["unique_graphs"] >= 1  # the twin's model did run compiled
    assert not torch.equal(first[0], first[2])  # the steps train
    torch.testing.assert_close(second, first, rtol=1e-4, atol=0)  # float32 rounding only
