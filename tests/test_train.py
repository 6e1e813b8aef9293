"""The trainer: configuration, schedule, LARS, checkpoints, resumption, failure handling."""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import interrupted_then_resumed, tiny, untimed_metrics

from dyntemp import config, data, optim, parts, runs, step, temperature, train
from dyntemp.config import TrainConfig, preset

# ----------------------------------------------------------------------------- configuration


def test_defaults_are_the_papers_cifar_setup():
    config = TrainConfig()
    assert (config.dataset, config.model, config.stem) == ("cifar10", "resnet18", "cifar")
    assert (config.projector_hidden_dim, config.projector_dim) == (512, 128)
    assert (config.optimizer, config.lr, config.weight_decay, config.momentum) == (
        "sgd",
        0.2,
        5e-4,
        0.0,
    )
    assert (config.batch_size, config.epochs, config.eval_every) == (128, 200, 1)
    assert (config.knn_k, config.knn_temperature) == (200, 0.1)
    assert config.temperature_rule() == temperature.DySTreSS(0.1, 0.2)


def test_every_field_is_documented():
    for field in dataclasses.fields(TrainConfig):
        assert field.metadata.get("help"), field.name


def test_temperature_options_map_to_each_rule():
    def rule(name, **options):
        return TrainConfig(temperature=name, **options).temperature_rule()

    assert rule("fixed", tau=0.5) == temperature.Fixed(0.5)
    assert rule("dystress", tau_min=0.07) == temperature.DySTreSS(0.07, 0.2)
    assert rule("shifted", shift=-0.3, width=0.5) == temperature.ShiftedDySTreSS(
        0.1, 0.2, -0.3, 0.5
    )
    assert rule("linear", tau_max=0.3) == temperature.Linear(0.1, 0.3)
    # tau(0) = a - b = tau_min and a = tau_max: the paper's (a, b, c) = (0.2, 0.1, 3.5).
    assert rule("exponential") == temperature.Exponential(0.1, 0.2, 3.5)
    assert rule("exponential", tau_min=0.05, tau_max=0.3, rate=2.0) == temperature.Exponential(
        tau_min=0.05, tau_max=0.3, rate=2.0
    )
    assert rule("schedule", period=100) == temperature.CosineSchedule(0.1, 1.0, 100)
    assert rule("macl", tau=0.2, alpha=0.3) == temperature.MACL(0.2, 0.3, 0.0)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"dataset": "mnist"}, "unknown --dataset 'mnist'"),
        ({"model": "vgg"}, "unknown --model"),
        ({"temperature": "warm"}, "unknown temperature rule"),
        ({"tau_min": 0.3, "tau_max": 0.2}, "tau_min"),
        (
            {"temperature": "fixed", "tau_min": 0.1},
            "tau_min does not apply to the temperature rule 'fixed', which takes tau",
        ),
        ({"epochs": 0}, "--epochs must be positive"),
        ({"epochs": 10**20}, "--epochs must be at most"),
        ({"batch_size": -1}, "--batch-size must be positive"),
        ({"batch_size": 1}, "--batch-size must be at least 2"),
        ({"seed": -1}, "--seed must be at least 0"),
        ({"seed": 10**23}, "--seed must be at most"),
        ({"lr": float("inf")}, "--lr must be a finite number"),
        ({"weight_decay": float("nan")}, "--weight-decay must be a finite number"),
        ({"knn_temperature": float("inf")}, "--knn-temperature must be a finite number"),
        ({"optimizer": "adam"}, "unknown --optimizer"),
        ({"amp": "fp8"}, "unknown --amp"),
        ({"channels_last": "maybe"}, "unknown --channels-last"),
        ({"out": None}, "output folder"),
        ({"lr": 0}, r"^--lr must be > 0, got 0.0$"),
        ({"weight_decay": -1e-4}, r"^--weight-decay must be >= 0"),
        ({"momentum": 1}, r"^--momentum must be in \[0, 1\), got 1.0$"),
        ({"moco_momentum": -0.1}, r"^--moco-momentum must be in \[0, 1\)"),
        ({"warmup_epochs": 201}, r"^--warmup-epochs must be in \[0, 200\], got 201.0$"),
        ({"crop_scale_min": 0}, r"^--crop-scale-min must be in \(0, 1\]"),
        ({"blur": 2}, r"^--blur must be in \[0, 1\]"),
        ({"subset": 0}, r"^--subset must be positive, got 0$"),
        ({"validation": 2.5}, r"^--validation must be a whole number, got 2.5$"),
        ({"queue_size": 0}, r"^--queue-size must be positive"),
        ({"image_size": 3}, r"^--image-size must be at least 8, got 3$"),
        ({"image_size": 5000}, r"^--image-size must be at most 4096"),
        ({"imbalance": 0.1}, r"^--imbalance applies to cifar10-lt and cifar100-lt, not cifar10$"),
        ({"dataset": "cifar10-lt", "imbalance": 0.0}, r"^--imbalance must be in \(0, 1\]"),
        ({"temperature": "formula"}, r"^--temperature formula needs --formula"),
        (
            {"temperature": "macl", "decoupled": True},
            r"turn the reweighting off \(--no-reweight\) or the decoupled loss off "
            r"\(--no-decoupled\)$",
        ),
    ],
)
def test_bad_settings_are_refused(changes, message, tmp_path):
    config = dataclasses.replace(TrainConfig(out=str(tmp_path)), **changes)
    with pytest.raises(ValueError, match=message):
        config.check()


def test_the_config_has_a_field_for_each_argument_of_the_rules():
    """A rule's new keyword argument needs a TrainConfig field of its name, and nothing else."""
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    arguments: dict[str, set[type]] = {}  # each argument with the types of its defaults
    for name in temperature.NAMES:
        rule = type(temperature.from_name(name))
        for argument, parameter in inspect.signature(rule).parameters.items():
            arguments.setdefault(argument, set()).add(type(parameter.default))
    wanted = set(arguments) - set(config.SET_BY_THE_RUN)
    missing = sorted(wanted - set(fields))
    assert not missing, (
        f"no TrainConfig field for the rules' argument(s) {missing}: add one of each name to "
        f'dyntemp/config.py, as `name: float | None = _option("name")`'
    )
    marked = {name for name, f in fields.items() if f.metadata.get("rule")}
    assert marked == wanted, (
        f"fields marked as rule options but no rule's argument: {marked - wanted}"
    )
    assert set(config.TEMPERATURE_OPTIONS) == wanted
    hints = {name: str(hint) for name, hint in TrainConfig.__annotations__.items()}
    for name in sorted(wanted):
        (kind,) = arguments[name]  # one type for every rule that takes it
        assert fields[name].default is None, name  # None: the rule's own default
        assert hints[name] == f"{kind.__name__} | None", (name, hints[name], kind)


def test_a_temperature_options_help_says_which_rules_take_it():
    fields = {f.name: f.metadata["help"] for f in dataclasses.fields(TrainConfig)}
    assert fields["tau_min"].startswith(
        "dystress, shifted, linear, exponential, schedule: the lowest temperature (default: 0.1)"
    )
    assert fields["tau_floor"] == "macl, learned: the lowest temperature (default: 0.01, CLIP's)"
    assert fields["rate"] == temperature.option_help("rate")
    assert config.flag("tau_floor") == "--tau-floor"


def test_sizes_are_checked_against_the_images_and_the_processes(tmp_path):
    moco = TrainConfig(out=str(tmp_path), method="moco", batch_size=64, queue_size=256)
    moco.check()
    moco.check_sizes(images=1000, world_size=2)
    with pytest.raises(ValueError, match=r"^--queue-size 256 must hold at least one step's keys "):
        moco.check_sizes(images=1000, world_size=4)  # 512 keys: 2 views x 64 x 4 processes
    with pytest.raises(ValueError, match=r"^--batch-size 64 x 4 processes exceeds the 200 "):
        dataclasses.replace(moco, method="simclr").check_sizes(images=200, world_size=4)
    with pytest.raises(ValueError, match=r"^--knn-k 200 exceeds the 100 training images$"):
        moco.check_sizes(images=100)
    with pytest.raises(ValueError, match=r"^--queue-size 100 must hold at least one step's keys"):
        dataclasses.replace(moco, queue_size=100).check()


def test_presets():
    assert preset("paper-cifar10") == TrainConfig()
    assert preset("paper-cifar100").dataset == "cifar100"
    assert preset("cpu", epochs=3).model == "small"
    assert preset("smoke", epochs=3).epochs == 3
    with pytest.raises(ValueError, match="unknown preset"):
        preset("huge")


def test_cosine_schedule_with_warmup():
    lr = [optim.cosine_lr(step, 10, 1.0, warmup_steps=4) for step in range(10)]
    assert lr[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    # after the warm-up p = (step - 4) / 6
    assert lr[4:] == pytest.approx([0.5 * (1 + math.cos(math.pi * k / 6)) for k in range(6)])
    assert optim.cosine_lr(0, 10, 0.2) == pytest.approx(0.2)
    assert optim.cosine_lr(5, 10, 0.2) == pytest.approx(0.1)


def test_constant_schedule_keeps_the_peak_after_the_warm_up():
    lr = [optim.learning_rate("constant", step, 10, 1.0, warmup_steps=4) for step in range(10)]
    assert lr == pytest.approx([0.25, 0.5, 0.75] + [1.0] * 7)
    assert optim.learning_rate("cosine", 7, 10, 1.0, 4) == optim.cosine_lr(7, 10, 1.0, 4)
    with pytest.raises(ValueError, match="--lr-schedule"):
        optim.learning_rate("step", 0, 10, 1.0)


def test_lars_step_by_hand():
    weight = torch.nn.Parameter(torch.tensor([[3.0, 4.0]]))  # norm 5
    bias = torch.nn.Parameter(torch.tensor([1.0]))
    weight.grad = torch.tensor([[0.0, 1.0]])
    bias.grad = torch.tensor([2.0])
    optimizer = optim.LARS(
        [weight, bias], lr=0.5, momentum=0.9, weight_decay=0.1, trust_coefficient=0.01
    )
    optimizer.step()
    update = torch.tensor([[0.3, 1.4]])  # g + wd w
    ratio = 0.01 * 5.0 / update.norm()
    torch.testing.assert_close(weight.detach(), torch.tensor([[3.0, 4.0]]) - 0.5 * ratio * update)
    torch.testing.assert_close(bias.detach(), torch.tensor([1.0 - 0.5 * 2.0]))  # no decay, no ratio
    bias.grad = torch.tensor([1.0])
    optimizer.step()  # momentum: buffer = 0.9 * 2 + 1
    torch.testing.assert_close(bias.detach(), torch.tensor([0.0 - 0.5 * 2.8]))


# ----------------------------------------------------------------------------- runs


def test_a_run_writes_its_files(fake_root, tmp_path):
    out = tmp_path / "run"
    results = train.train(tiny(fake_root, out, eval_every=1))
    assert {p.name for p in out.iterdir()} == {
        "config.json",
        "checkpoint.pt",
        "metrics.jsonl",
        "results.json",
    }
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in lines] == [1, 2]
    assert all("knn_top1" in m and math.isfinite(m["loss"]) for m in lines)
    saved = json.loads((out / "results.json").read_text())
    assert saved == json.loads(json.dumps(results))
    assert results["knn_top1"] > 50  # ten classes: chance is 10 %
    assert results["epochs"] == 2
    assert results["temperature"]["rule"] == "DySTreSS(tau_min=0.1, tau_max=0.2)"
    source = results["provenance"]
    assert source["torch"] == torch.__version__
    assert (
        source["dataset"]["name"] == "cifar10" and len(source["dataset"]["train_fingerprint"]) == 64
    )
    assert source["config"]["out"] == str(out)
    for key in ("git_commit", "machine", "wall_time_s", "command"):
        assert key in source
    # The last learning rate is that of the last step of the cosine schedule.
    assert lines[-1]["lr"] == pytest.approx(optim.cosine_lr(9, 10, 0.2))


def test_rerunning_a_finished_run_returns_its_results(fake_root, tmp_path):
    config = tiny(fake_root, tmp_path / "run", epochs=1)
    first = train.train(config)
    checkpoint = (tmp_path / "run" / "checkpoint.pt").stat().st_mtime_ns
    assert train.train(config) == json.loads(json.dumps(first))
    assert (tmp_path / "run" / "checkpoint.pt").stat().st_mtime_ns == checkpoint


def test_a_folder_with_another_config_is_refused_unless_forced(fake_root, tmp_path):
    train.train(tiny(fake_root, tmp_path / "run", epochs=1))
    other = tiny(fake_root, tmp_path / "run", epochs=1, lr=0.1)
    with pytest.raises(ValueError, match=r"different config \(lr 0.2 -> 0.1\).*--force"):
        train.train(other)
    results = train.train(dataclasses.replace(other, force=True))
    assert results["provenance"]["config"]["lr"] == 0.1


def test_batch_larger_than_the_dataset_is_refused(fake_root, tmp_path):
    with pytest.raises(ValueError, match="--batch-size 300 exceeds the 200 training images"):
        train.train(tiny(fake_root, tmp_path / "run", batch_size=300))


def test_missing_data_says_where_it_looked_and_writes_nothing(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nowhere")):
        train.train(tiny(tmp_path / "nowhere", tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_a_non_finite_loss_stops_the_run_and_keeps_the_last_checkpoint(
    fake_root, tmp_path, monkeypatch
):
    real_ntxent = step.ntxent
    calls = []

    def failing_ntxent(*args, **kwargs):
        calls.append(1)
        loss = real_ntxent(*args, **kwargs)
        return loss * float("nan") if len(calls) == 8 else loss  # step 7, in epoch 2

    monkeypatch.setattr(step, "ntxent", failing_ntxent)
    out = tmp_path / "run"
    with pytest.raises(train.NonFiniteLossError, match="not finite at step 7.*epoch 1"):
        train.train(tiny(fake_root, out, epochs=3))  # 5 steps an epoch
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert not (out / "results.json").exists()


def _command(root: Path, out: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "dyntemp",
        "train",
        "--dataset",
        "cifar10",
        "--data-root",
        str(root),
        "--model",
        "small",
        "--epochs",
        "4",
        "--batch-size",
        "20",
        "--knn-k",
        "20",
        "--projector-hidden-dim",
        "64",
        "--projector-dim",
        "32",
        "--momentum",
        "0.9",
        "--amp",  # one arithmetic, asked for: no probe whose timing could choose another
        "off",
        "--channels-last",
        "off",
        "--out",
        str(out),
    ]


@pytest.mark.slow
def test_a_killed_run_resumes_to_the_identical_result(fake_root, tmp_path):
    # One thread: the thread guard (dyntemp.cpu_share) trains with fewer threads while other
    # processes are busy, and another thread count sums in another order; with one thread
    # the bits cannot depend on what else the machine is doing.
    environment = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    subprocess.run(
        _command(fake_root, whole),
        check=True,
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    process = subprocess.Popen(
        _command(fake_root, killed),
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    for line in process.stdout:
        if line.startswith("epoch 1/4"):  # printed after the epoch's checkpoint is written
            process.send_signal(signal.SIGKILL)
            break
    process.wait()
    assert process.returncode == -signal.SIGKILL
    assert not (killed / "results.json").exists()  # it did not finish
    assert torch.load(killed / "checkpoint.pt", weights_only=True)["epoch"] < 4
    subprocess.run(
        _command(fake_root, killed),
        check=True,
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    a = torch.load(whole / "checkpoint.pt", weights_only=True)
    b = torch.load(killed / "checkpoint.pt", weights_only=True)
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for key in ("optimizer",):
        for state_a, state_b in zip(
            a[key]["state"].values(), b[key]["state"].values(), strict=True
        ):
            assert torch.equal(state_a["momentum_buffer"], state_b["momentum_buffer"])

    assert untimed_metrics(whole) == untimed_metrics(killed)
    assert len(untimed_metrics(whole)) == 4
    results = [json.loads((f / "results.json").read_text()) for f in (whole, killed)]
    assert results[0]["knn_top1"] == results[1]["knn_top1"]


def test_lars_with_warmup_follows_the_schedule(fake_root, tmp_path):
    config = tiny(
        fake_root,
        tmp_path / "run",
        optimizer="lars",
        lr=1.0,
        momentum=0.9,
        weight_decay=1e-6,
        warmup_epochs=1,
        epochs=2,
        eval_every=0,
    )
    results = train.train(config)
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert lines[0]["lr"] == pytest.approx(1.0)  # the last warm-up step reaches the peak
    assert lines[1]["lr"] == pytest.approx(optim.cosine_lr(9, 10, 1.0, warmup_steps=5))
    assert "knn_top1" not in lines[0] and "knn_top1" in lines[1]  # eval_every=0: at the end
    assert math.isfinite(results["final"]["loss"])


def test_resume_under_another_mixed_precision(fake_root, tmp_path):
    """A checkpoint of a run without a loss scale (bf16, CPU) resumes under fp16's scaler,
    and back: Colab hands out different GPUs between sessions."""
    from dyntemp.distributed import Context

    config = tiny(fake_root, tmp_path / "run")
    images = torch.randint(0, 256, (80, 3, 32, 32), dtype=torch.uint8)
    context = Context(0, 1, 0, torch.device("cpu"))
    unscaled = step.start_run(config, context, images)
    state = unscaled.state("fingerprint")
    assert state["scaler"] == {}
    scaled = step.start_run(config, context, images)
    scaled.scaler = torch.amp.GradScaler("cpu", enabled=True, init_scale=1024.0)
    scaled.restore(state, "fingerprint", tmp_path)  # no loss scale to restore: kept
    assert scaled.scaler.get_scale() == 1024.0
    scaled_state = scaled.state("fingerprint")
    assert scaled_state["scaler"]["scale"] == 1024.0
    step.start_run(config, context, images).restore(scaled_state, "fingerprint", tmp_path)
    with pytest.raises(ValueError, match="training data differ"):
        scaled.restore(state, "other data", tmp_path)


# ----------------------------------------------------------------------------- learned tau


def test_a_learned_temperature_is_trained_logged_and_resumed_exactly(
    fake_root, tmp_path, monkeypatch
):
    config = tiny(fake_root, tmp_path / "whole", temperature="learned", tau=0.2, momentum=0.9)
    results = train.train(config)
    lines = [
        json.loads(x) for x in (tmp_path / "whole" / "metrics.jsonl").read_text().split("\n") if x
    ]
    taus = [line["tau"] for line in lines]
    assert len(taus) == 2 and taus[0] != 0.2 and taus[1] != taus[0]  # trained every step
    assert results["final"]["tau"] == taus[-1]
    state = torch.load(tmp_path / "whole" / "checkpoint.pt", weights_only=True)
    assert math.exp(state["temperature"]["log_tau"].item()) == pytest.approx(taus[-1], rel=1e-6)
    groups = state["optimizer"]["param_groups"]
    assert len(groups) == 2 and groups[1]["weight_decay"] == 0.0  # the temperature: no decay
    assert groups[0]["weight_decay"] == config.weight_decay

    # stopped after epoch 1 (its checkpoint written), then rerun: the same run, bit for bit
    resumed = dataclasses.replace(config, out=str(tmp_path / "resumed"))
    interrupted_then_resumed(resumed, monkeypatch)
    other = torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=True)
    assert torch.equal(other["temperature"]["log_tau"], state["temperature"]["log_tau"])
    for key in state["model"]:
        assert torch.equal(other["model"][key], state["model"][key]), key
    assert untimed_metrics(tmp_path / "resumed") == untimed_metrics(tmp_path / "whole")


def test_a_checkpoint_without_the_learned_temperature_does_not_fit(fake_root, tmp_path):
    from dyntemp import runs
    from dyntemp.distributed import Context

    config = tiny(fake_root, tmp_path / "run", temperature="learned")
    images = torch.randint(0, 256, (80, 3, 32, 32), dtype=torch.uint8)
    context = Context(0, 1, 0, torch.device("cpu"))
    state = step.start_run(config, context, images).state("fingerprint")
    state["temperature"] = {}
    with pytest.raises(runs.RunFolderError, match="does not fit this run"):
        step.start_run(config, context, images).restore(state, "fingerprint", tmp_path)


# ----------------------------------------------------------------------------- validation


def test_held_out_images_never_reach_training(fake_root, tmp_path, monkeypatch):
    """Every batch of views is cut from the images ViewBatches is given: record them."""
    seen = []
    original = train.ViewBatches.__init__

    def recording(self, images, *args, **kwargs):
        seen.append(images.clone())
        original(self, images, *args, **kwargs)

    monkeypatch.setattr(train.ViewBatches, "__init__", recording)
    config = tiny(fake_root, tmp_path / "run", validation=50, eval_every=1)
    results = train.train(config)
    splits = parts.load_splits(config)
    assert len(splits.train) == 150 and len(splits.validation) == 50
    assert torch.bincount(splits.validation.labels).tolist() == [5] * 10

    def rows(images):
        return {bytes(image.flatten().tolist()) for image in images}

    held_out = rows(splits.validation.images)
    assert len(seen) == config.epochs
    for images in seen:
        assert len(images) == 150 and not rows(images) & held_out
    # The validation images choose, every epoch; the test set is scored once, at the end.
    metrics = runs.load(tmp_path / "run")["metrics"]
    assert all("val_knn_top1" in entry for entry in metrics)
    assert ["knn_top1" in entry for entry in metrics] == [False, True]
    assert results["val_knn_top1"] == metrics[-1]["val_knn_top1"]
    assert results["knn_top1"] == metrics[-1]["knn_top1"]
    dataset = results["provenance"]["dataset"]
    assert (dataset["train_images"], dataset["validation_images"]) == (150, 50)
    assert dataset["validation_fingerprint"] == splits.validation.fingerprint


def test_validation_split_is_fixed_balanced_and_disjoint(fake_root):
    full = parts.load_splits(tiny(fake_root, "unused")).train
    rest, held_out = data.validation_split(full, 30)
    again = data.validation_split(full, 30)[1]
    assert torch.equal(held_out.images, again.images)  # the same split every time
    assert torch.bincount(held_out.labels).tolist() == [3] * 10
    assert len(rest) + len(held_out) == len(full)
    assert not {bytes(i.flatten().tolist()) for i in rest.images} & {
        bytes(i.flatten().tolist()) for i in held_out.images
    }
    with pytest.raises(ValueError, match="--validation 195 needs 20 images of each"):
        data.validation_split(full, 195, name="--validation")  # 20 of class 0: none left
    with pytest.raises(ValueError, match="--validation must be below 200"):
        data.validation_split(full, 200, name="--validation")
    with pytest.raises(ValueError, match="--validation"):
        tiny(fake_root, "out", validation=0).check()
