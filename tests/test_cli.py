"""The command line: train and eval end to end, and one clear line for every bad input."""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dyntemp.__main__ import main

TINY = (
    "--model small --epochs 1 --batch-size 40 --knn-k 20 --projector-hidden-dim 64 "
    "--projector-dim 32 --no-progress"
).split()


@pytest.fixture(scope="module")
def finished_run_and_output(fake_root, tmp_path_factory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("run") / "run"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        assert main(["train", "--data-root", str(fake_root), *TINY, "--out", str(out)]) == 0
    return out, stdout.getvalue()


@pytest.fixture(scope="module")
def finished_run(finished_run_and_output) -> Path:
    return finished_run_and_output[0]


def test_train_writes_results_and_prints_the_accuracy(finished_run_and_output):
    folder, printed = finished_run_and_output
    results = json.loads((folder / "results.json").read_text())
    assert results["knn_top1"] > 50
    assert results["provenance"]["command"].startswith("python -m dyntemp train --data-root")
    assert printed.splitlines()[-1] == (
        f"kNN top-1 {results['knn_top1']:.2f} % after 1 epochs; results in {folder}/results.json"
    )


def test_rerunning_a_finished_run_says_so_and_keeps_it(finished_run, fake_root, capsys):
    before = {p.name: p.stat().st_mtime_ns for p in finished_run.iterdir()}
    command = ["train", "--data-root", str(fake_root), *TINY, "--out", str(finished_run)]
    assert main(command) == 0
    assert "finished earlier: kNN top-1" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in finished_run.iterdir()} == before


def test_presets_and_flags_combine(fake_root, tmp_path, capsys):
    out = tmp_path / "smoke"
    options = "--preset smoke --subset 100 --test-subset 50 --batch-size 50 --epochs 1"
    options += " --no-progress --temperature fixed --tau 0.5"
    code = main(["train", *options.split(), "--data-root", str(fake_root), "--out", str(out)])
    assert code == 0
    assert "kNN top-1" in capsys.readouterr().out
    config = json.loads((out / "config.json").read_text())["config"]
    assert (config["model"], config["subset"], config["epochs"]) == ("small", 100, 1)
    assert (config["temperature"], config["tau"]) == ("fixed", 0.5)
    results = json.loads((out / "results.json").read_text())
    assert results["temperature"]["rule"] == "Fixed(tau=0.5)"
    assert results["provenance"]["dataset"]["train_images"] == 100


def test_eval_computes_every_metric(finished_run, capsys):
    assert main(["eval", str(finished_run), "--linear", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "weighted kNN top-1" in printed and "tolerance" in printed
    metrics = json.loads((finished_run / "eval.json").read_text())
    results = json.loads((finished_run / "results.json").read_text())
    assert metrics["knn_top1"] == pytest.approx(results["knn_top1"])
    assert set(metrics["knn_majority_top1"]) == {"1", "10", "200"}
    assert 0 <= metrics["alignment"] <= 4
    assert -4 <= metrics["uniformity"] <= 0 and -4 <= metrics["inter_class_uniformity"] <= 0
    assert -1 <= metrics["tolerance"] <= 1
    assert 0 <= metrics["linear_top1"] <= 100
    histograms = metrics["histograms"]
    assert sum(histograms["positive"]) == 100  # one per test image
    assert sum(histograms["same_class"]) == 10 * (10 * 9 // 2)
    assert sum(histograms["other_class"]) == 100 * 99 // 2 - 10 * (10 * 9 // 2)


def test_eval_long_tail_scores_head_medium_and_tail_as_the_paper(fake_root, tmp_path, capsys):
    from dyntemp import evaluate, run_metrics

    out = tmp_path / "lt"
    lt = ["--dataset", "cifar10-lt", "--imbalance", "0.1", "--batch-size", "20"]
    assert main(["train", "--data-root", str(fake_root), *TINY, *lt, "--out", str(out)]) == 0
    assert main(["eval", str(out), "--long-tail", "--device", "cpu"]) == 0
    assert "majority 1-NN" in capsys.readouterr().out
    report = json.loads((out / "longtail.json").read_text())
    counts = report["train_counts"]
    assert counts == sorted(counts, reverse=True) and counts[0] == 20 and counts[-1] == 2
    assert report["groups"]["head"] == report["classes"][:3]
    assert report["groups"]["tail"] == report["classes"][7:]
    assert set(report["classifiers"]) == {"weighted 200-NN", "majority 1-NN", "majority 10-NN"}
    # recomputed independently: majority 1-NN, per class, from the run's own features
    config, model, _ = run_metrics.load_run(out)
    train_set, test_set = run_metrics.load_data(config)
    augment = run_metrics.build_augment(config, 32)
    bank, queries = (
        evaluate.extract_features(model.backbone, images, augment.unaugmented)
        for images in (train_set.images, test_set.images)
    )
    nearest = (
        torch.nn.functional.normalize(queries, dim=1) @ torch.nn.functional.normalize(bank, dim=1).T
    ).argmax(dim=1)
    correct = train_set.labels[nearest] == test_set.labels
    one = report["classifiers"]["majority 1-NN"]
    assert one["top1"] == pytest.approx(100.0 * correct.float().mean().item())
    per_class = [100.0 * correct[test_set.labels == c].float().mean().item() for c in range(10)]
    assert one["per_class"] == pytest.approx(per_class)
    assert one["tail"] == pytest.approx(sum(per_class[7:]) / 3)
    assert report["provenance"]["command"].endswith("--long-tail")


def exit_code(arguments: list[str]) -> int:
    """What ``python -m dyntemp ARGUMENTS`` exits with (argparse's own errors exit directly)."""
    try:
        return main(arguments)
    except SystemExit as stop:
        return stop.code


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--dataset", "mnist"], "unknown --dataset 'mnist'"),
        (["--model", "vgg"], "unknown --model 'vgg'"),
        (["--temperature", "warm"], "unknown temperature rule 'warm'"),
        (["--tau-min", "0.3", "--tau-max", "0.2"], "tau_min"),
        (["--epochs", "0"], "--epochs must be positive"),
        (["--epochs", "1e20"], "--epochs must be at most"),
        (["--batch-size", "0"], "--batch-size must be positive"),
        (["--batch-size", "1"], "--batch-size must be at least 2"),
        (["--batch-size", "500"], "--batch-size 500 exceeds the 200 training images"),
        (["--seed", "-1"], "--seed must be at least 0"),
        (["--seed", "1e23"], "--seed must be at most"),
        (["--lr", "inf"], "--lr must be a finite number"),
        (["--weight-decay", "nan"], "--weight-decay must be a finite number"),
        (["--knn-temperature", "inf"], "--knn-temperature must be a finite number"),
        (["--knn-k", "500"], "--knn-k 500 exceeds the 200 training images"),
        (["--amp", "fp16", "--device", "cpu"], "--amp fp16 needs a CUDA device"),
        (["--epochs", "x"], "invalid int value"),
        (["--epochs", "2.5"], "invalid int value"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(arguments, message, fake_root, tmp_path, capsys):
    out = tmp_path / "r"
    command = ["train", "--data-root", str(fake_root), *TINY, "--out", str(out)]
    assert exit_code([*command, *arguments]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith("error: ") and message in error
    assert not out.exists()  # refused before the folder was touched


def test_missing_data_names_the_folder(tmp_path, capsys):
    missing = tmp_path / "nowhere"
    assert main(["train", "--data-root", str(missing), *TINY, "--out", str(tmp_path / "r")]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and str(missing) in error and error.count("\n") == 1


def test_an_output_folder_of_another_run_is_refused(finished_run, fake_root, capsys):
    command = ["train", "--data-root", str(fake_root), *TINY, "--out", str(finished_run)]
    assert main([*command, "--lr", "0.5"]) == 2
    error = capsys.readouterr().err
    assert "different config (lr 0.2 -> 0.5)" in error and "--force" in error


def test_eval_of_a_folder_without_a_run(tmp_path, capsys):
    assert main(["eval", str(tmp_path)]) == 2
    assert "holds no training run" in capsys.readouterr().err


def test_the_real_entry_point_prints_no_traceback(tmp_path):
    process = subprocess.run(
        [sys.executable, "-m", "dyntemp", "train", "--model", "vgg", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert process.returncode == 2
    expected = "error: unknown --model 'vgg'; choose one of resnet18, resnet50, small\n"
    assert process.stderr == expected


def test_a_formula_rule_from_the_command_line(fake_root, tmp_path, capsys):
    out = tmp_path / "formula"
    formula = "0.1 + 0.05*(1 - cos(pi*s))"
    command = ["train", "--data-root", str(fake_root), *TINY, "--out", str(out)]
    assert main([*command, "--temperature", "formula", "--formula", formula]) == 0
    config = json.loads((out / "config.json").read_text())["config"]
    assert (config["temperature"], config["formula"]) == ("formula", formula)
    results = json.loads((out / "results.json").read_text())
    assert results["temperature"]["params"]["formula"] == formula


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--temperature", "formula"], "--temperature formula needs --formula"),
        (["--temperature", "formula", "--formula", "__import__('os').system('x')"], "not allowed"),
        (["--temperature", "formula", "--formula", "s"], "formula"),
        (["--image-size", "3"], "--image-size must be at least 8"),
        (["--test-subset", "1e20"], "--test-subset"),
    ],
)
def test_bad_rule_options_are_one_line(arguments, message, fake_root, tmp_path, capsys):
    out = tmp_path / "r"
    command = ["train", "--data-root", str(fake_root), *TINY, "--out", str(out), *arguments]
    assert exit_code(command) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith("error: ") and message in error, error
    assert not out.exists()


def test_help_says_each_default_once(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: None)" not in text and "(required) (default" not in text
    assert "imbalance ratio of cifar10-lt / cifar100-lt (default: 0.01)" in text
    assert "(default: 0.01) (default" not in text
    assert "--lr LR peak learning rate (default: 0.2)" in text


def test_a_benchmark_gets_its_own_options(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["bench", "loss", "--help"])
    assert stop.value.code == 0
    assert "python -m dyntemp bench loss" in capsys.readouterr().out


def test_a_benchmarks_usage_error_is_one_line(capsys):
    for bench in ("loss", "augment", "train", "gpu"):
        assert exit_code(["bench", bench, "--no-such-flag"]) == 2
        error = capsys.readouterr().err
        assert error.count("\n") == 1 and error.startswith("error: "), error
        assert f"python -m dyntemp bench {bench} --help" in error
    assert exit_code(["bench", "loss", "--device", "gpu"]) == 2  # checked before anything runs
    assert "unknown device 'gpu'" in capsys.readouterr().err


def test_the_long_tailed_protocol_refuses_fewer_than_three_classes(tmp_path, capsys):
    from PIL import Image

    for split, label, index in itertools.product(("train", "test"), (0, 1), range(8)):
        path = tmp_path / "images" / split / f"class{label}" / f"{index}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (32, 32), (40 + 160 * label + index,) * 3).save(path)
    out = tmp_path / "run"
    small = ["--model", "small", "--epochs", "1", "--batch-size", "8", "--knn-k", "4",
             "--projector-hidden-dim", "16", "--projector-dim", "8", "--amp", "off",
             "--channels-last", "off", "--no-progress"]  # fmt: skip
    folder = ["--dataset", "imagefolder", "--data-root", str(tmp_path / "images")]
    assert main(["train", *folder, *small, "--out", str(out)]) == 0
    capsys.readouterr()
    assert exit_code(["eval", str(out), "--long-tail", "--device", "cpu"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "needs at least 3 classes" in error, error
    assert not (out / "longtail.json").exists()
