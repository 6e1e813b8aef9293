"""The arithmetic of a run: by rule on a GPU, measured on a CPU, cached, recorded, kept."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from fake_cifar import write_fake_cifar10

from dyntemp import precision, provenance, runs, train
from dyntemp.config import TrainConfig
from dyntemp.precision import Precision

CPU = torch.device("cpu")


def test_mixed_precision_rule(monkeypatch):
    monkeypatch.setattr(provenance, "native_bf16_cpu", lambda: False)
    assert precision.amp_dtype("auto", CPU) is None
    assert precision.amp_dtype("bf16", CPU) == torch.bfloat16  # asked for: emulated, but runs
    monkeypatch.setattr(provenance, "native_bf16_cpu", lambda: True)
    assert precision.amp_dtype("auto", CPU) == torch.bfloat16
    assert precision.amp_dtype("off", CPU) is None
    with pytest.raises(ValueError, match="--amp fp16 needs a CUDA device"):
        precision.amp_dtype("fp16", CPU)
    cuda = torch.device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    assert precision.amp_dtype("auto", cuda) == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    assert precision.amp_dtype("auto", cuda) == torch.float16  # a T4: fp16 with a GradScaler
    assert precision.amp_dtype("off", cuda) is None


def test_channels_last_rule():
    cuda = torch.device("cuda", 0)
    assert precision.use_channels_last("auto", cuda, None)
    assert precision.use_channels_last("auto", CPU, torch.bfloat16)
    assert not precision.use_channels_last("auto", CPU, None)
    assert precision.use_channels_last("on", CPU, None)
    assert not precision.use_channels_last("off", cuda, torch.bfloat16)


def test_the_candidates_are_what_the_flags_leave_open(monkeypatch):
    monkeypatch.setattr(provenance, "native_bf16_cpu", lambda: True)
    assert list(precision.candidates("auto", "auto")) == list(precision.CPU_CANDIDATES)
    assert list(precision.candidates("off", "auto")) == ["fp32", "fp32 + channels_last"]
    assert list(precision.candidates("auto", "on")) == [
        "fp32 + channels_last",
        "bf16 + channels_last",
    ]
    monkeypatch.setattr(provenance, "native_bf16_cpu", lambda: False)  # emulated: never chosen
    assert list(precision.candidates("auto", "auto")) == ["fp32", "fp32 + channels_last"]


def test_the_fastest_candidate_is_chosen_cached_and_reused(monkeypatch, tmp_path):
    monkeypatch.setattr(provenance, "native_bf16_cpu", lambda: True)
    speeds = {(None, False): 700.0, (None, True): 1000.0, (torch.bfloat16, False): 900.0,
              (torch.bfloat16, True): 950.0}  # fmt: skip
    calls = []

    def timer(dtype, layout):
        calls.append((dtype, layout))
        return speeds[dtype, layout]

    cache = tmp_path / "precision.json"
    key = {"model": "small", "batch_size": 128}
    first = precision.choose("auto", "auto", CPU, key, timer, cache=cache)
    assert (first.dtype, first.channels_last, first.source) == (None, True, "probe")
    assert first.timings == {"fp32": 700.0, "fp32 + channels_last": 1000.0, "bf16": 900.0,
                             "bf16 + channels_last": 950.0}  # fmt: skip
    assert len(calls) == 4
    again = precision.choose("auto", "auto", CPU, key, timer, cache=cache)
    assert (again.dtype, again.channels_last, again.source) == (None, True, "cache")
    assert len(calls) == 4  # no second probe
    other = precision.choose("auto", "auto", CPU, {**key, "batch_size": 64}, timer, cache=cache)
    assert other.source == "probe" and len(calls) == 8  # another network or batch: measured
    # asked for, or on a GPU: no probe at all
    asked = precision.choose("bf16", "on", CPU, key, timer, cache=cache)
    assert (asked.dtype, asked.channels_last, asked.source) == (torch.bfloat16, True, "asked")
    assert len(calls) == 8


def test_a_precision_survives_its_record():
    chosen = Precision(torch.bfloat16, True, "probe", {"bf16 + channels_last": 1.0})
    again = Precision.from_dict(json.loads(json.dumps(chosen.as_dict())), source="resumed")
    assert (again.dtype, again.channels_last, again.source) == (torch.bfloat16, True, "resumed")
    with pytest.raises(ValueError, match="unknown saved precision"):
        Precision.from_dict({"amp": "int8", "channels_last": False})


def test_a_run_records_its_measured_choice_and_keeps_it_on_resume(monkeypatch, tmp_path):
    root = write_fake_cifar10(tmp_path / "data")
    monkeypatch.setenv("DYNTEMP_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(provenance, "native_bf16_cpu", lambda: False)
    speeds = {(None, False): 100.0, (None, True): 200.0}
    monkeypatch.setattr(train, "probe_step", lambda config, context, d, c: speeds[d, c])
    config = TrainConfig(
        out=str(tmp_path / "run"), data_root=str(root), model="small", epochs=2,
        batch_size=40, knn_k=20, projector_hidden_dim=64, projector_dim=32, progress=False,
        amp="auto", channels_last="auto",
    )  # fmt: skip
    stop = train._one_epoch

    def one_then_stop(run, bar, splits):
        stop(run, bar, splits)
        if run.epoch == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(train, "_one_epoch", one_then_stop)
    with pytest.raises(KeyboardInterrupt):
        train.train(config)
    saved = runs.load_checkpoint(Path(config.out) / runs.CHECKPOINT_FILE)["precision"]
    assert (saved["amp"], saved["channels_last"], saved["source"]) == ("off", True, "probe")
    # the machine now "prefers" the other layout: the resumed run keeps its own
    monkeypatch.setattr(train, "_one_epoch", stop)
    speeds.update({(None, False): 300.0})
    (tmp_path / "cache" / "precision.json").unlink()
    results = train.train(config)
    recorded = results["provenance"]["precision"]
    assert (recorded["amp"], recorded["channels_last"], recorded["source"]) == (
        "off", True, "resumed",
    )  # fmt: skip
    assert results["provenance"]["channels_last"] is True


def test_the_probe_times_the_real_step_and_leaves_the_rng_alone(tmp_path):
    from dyntemp.distributed import Context

    config = TrainConfig(out=str(tmp_path / "x"), model="small", batch_size=16,
                               projector_hidden_dim=32, projector_dim=16)  # fmt: skip
    before = torch.get_rng_state()
    rate = train.probe_step(config, Context(0, 1, 0, CPU), None, False, steps=1)
    assert rate > 0
    assert torch.equal(torch.get_rng_state(), before)


def test_a_damaged_cache_entry_is_measured_again_and_replaced(monkeypatch, tmp_path):
    monkeypatch.setattr(provenance, "native_bf16_cpu", lambda: False)
    key = {"model": "small", "batch_size": 128}
    cache = tmp_path / "precision.json"

    def timer(dtype, layout):
        return 2.0 if layout else 1.0

    first = precision.choose("off", "auto", CPU, key, timer, cache=cache)
    assert first.source == "probe" and first.channels_last
    entries = json.loads(cache.read_text())
    for damaged in ("not a record", {"amp": "off"}, {"amp": "fp8", "channels_last": True}):
        cache.write_text(json.dumps(dict.fromkeys(entries, damaged)))
        again = precision.choose("off", "auto", CPU, key, timer, cache=cache)
        assert again.source == "probe" and again.channels_last  # measured, not a traceback
        assert json.loads(cache.read_text()) == entries  # and the entry written anew
