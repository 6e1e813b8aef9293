"""The rules added with issue 21 (both DySTreSS versions, temperature-free InfoNCE, dual
temperature, iSogCLR's individual temperatures) from the command line and through an
interrupted run: each trains, records its rule, and resumes bit-identical on the CPU."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from helpers import interrupted_then_resumed, tiny, untimed_metrics

from dyntemp import temperature as T
from dyntemp import train
from dyntemp.__main__ import main
from dyntemp.config import TrainConfig

TINY = (
    "--model small --epochs 1 --batch-size 40 --knn-k 20 --projector-hidden-dim 64 "
    "--projector-dim 32 --no-progress --amp off"
).split()

# name, command-line options, the rule they build, TrainConfig fields
RULES = [
    ("dystress-neurips", ["--tau-min", "0.07"], T.DySTreSSNeurIPS(0.07, 0.2), {"tau_min": 0.07}),
    (
        "temperature-free",
        ["--no-detach-temperature"],  # the paper's loss: the gradient through 2 atanh(s)
        T.TemperatureFree(),
        {"detach_temperature": False},
    ),
    (
        "dual",
        ["--tau", "0.2", "--dt-m", "5"],
        T.DualTemperature(0.2, 5.0),
        {"tau": 0.2, "dt_m": 5.0},
    ),
    (
        "isogclr",
        ["--rho", "0.5", "--eta", "0.05"],
        T.ISogCLR(rho=0.5, eta=0.05),
        {"rho": 0.5, "eta": 0.05},
    ),
]


@pytest.mark.parametrize(("name", "options", "rule", "fields"), RULES, ids=[r[0] for r in RULES])
def test_each_rule_trains_from_the_command_line(name, options, rule, fields, fake_root, tmp_path):
    out = tmp_path / name
    command = ["train", "--data-root", str(fake_root), *TINY, "--out", str(out)]
    assert main([*command, "--temperature", name, *options]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["temperature"]["name"] == name
    assert results["temperature"]["rule"] == repr(rule)
    assert T.from_name(name, **results["temperature"]["params"]) == rule
    assert results["knn_top1"] is not None


@pytest.mark.slow
@pytest.mark.parametrize(("name", "options", "rule", "fields"), RULES, ids=[r[0] for r in RULES])
def test_each_rule_resumes_exactly(name, options, rule, fields, fake_root, tmp_path, monkeypatch):
    config = tiny(fake_root, tmp_path / "whole", temperature=name, momentum=0.9, **fields)
    assert config.temperature_rule() == rule
    train.train(config)
    resumed = dataclasses.replace(config, out=str(tmp_path / "resumed"))
    interrupted_then_resumed(resumed, monkeypatch)
    whole, other = (
        torch.load(tmp_path / folder / "checkpoint.pt", weights_only=True)
        for folder in ("whole", "resumed")
    )
    for key in whole["model"]:
        assert torch.equal(whole["model"][key], other["model"][key]), key
    assert whole["temperature"].keys() == other["temperature"].keys()
    for key in whole["temperature"]:
        assert torch.equal(whole["temperature"][key], other["temperature"][key]), key
    assert untimed_metrics(tmp_path / "resumed") == untimed_metrics(tmp_path / "whole")


def test_the_timing_probe_of_amp_auto_runs_isogclr(tmp_path):
    """--amp auto times the trainer's step; its probe has no images' indices, so iSogCLR's
    step is timed as NT-Xent at its starting temperature (the same network, the same cost)."""
    from dyntemp.distributed import Context

    config = TrainConfig(
        out=str(tmp_path / "run"), model="small", temperature="isogclr", rho=0.5,
        projector_hidden_dim=16, projector_dim=8, batch_size=8,
    )  # fmt: skip
    context = Context(0, 1, 0, torch.device("cpu"))
    assert train.probe_step(config, context, None, False, steps=1) > 0
