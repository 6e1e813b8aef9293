"""Run folders under bad input and faults: nothing lost, nothing executed, one line each.

Every case drives the command line (``dyntemp.__main__.main``) as a user would, on a tiny
generated CIFAR-10, and checks the exit code, that the error is one line, and what the
folder holds afterwards.
"""

from __future__ import annotations

import errno
import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from dyntemp import experiments, run_metrics, runs
from dyntemp.__main__ import main

TINY = (
    "--model small --epochs 2 --batch-size 40 --knn-k 20 --projector-hidden-dim 64 "
    "--projector-dim 32 --no-progress --amp off"
).split()


@pytest.fixture(scope="module")
def trained(fake_root, tmp_path_factory) -> Path:
    """A finished two-epoch run, copied by the tests that change it."""
    out = tmp_path_factory.mktemp("trained") / "run"
    assert main(["train", *command(fake_root, out)]) == 0
    return out


def command(root: Path, out: Path, *extra: str) -> list[str]:
    return ["--data-root", str(root), *TINY, "--out", str(out), *extra]


def copy_of(folder: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    return copy


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def one_error_line(capsys, *expected: str) -> str:
    error = capsys.readouterr().err
    assert error.startswith("error: ") and error.count("\n") == 1, error
    for text in expected:
        assert text in error, error
    return error


def exit_code(arguments: list[str]) -> int:
    try:
        return main(arguments)
    except SystemExit as stop:
        return int(stop.code)


# ----------------------------------------------------------------------------- nothing lost


def test_a_committed_run_without_checkpoint_is_finished_not_wiped(trained, fake_root, tmp_path):
    folder = copy_of(trained, tmp_path)
    (folder / "checkpoint.pt").unlink()  # the layout of every run committed under results/
    before = snapshot(folder)
    assert main(["train", *command(fake_root, folder)]) == 0
    assert snapshot(folder) == before


def test_a_committed_run_of_another_config_is_refused(trained, fake_root, tmp_path, capsys):
    folder = copy_of(trained, tmp_path)
    (folder / "checkpoint.pt").unlink()
    before = snapshot(folder)
    assert main(["train", *command(fake_root, folder, "--lr", "0.1")]) == 2
    one_error_line(capsys, "different config (lr 0.2 -> 0.1)", "--force")
    assert snapshot(folder) == before


@pytest.mark.parametrize("names", [["checkpoint.pt"], ["results.json"], ["eval.json"]])
def test_files_of_an_unknown_run_are_refused_unless_forced(names, fake_root, tmp_path, capsys):
    folder = tmp_path / "foreign"
    folder.mkdir()
    for name in names:
        (folder / name).write_bytes(b"someone else's")
    before = snapshot(folder)
    assert main(["train", *command(fake_root, folder)]) == 2
    one_error_line(capsys, "of an unknown run", "--force")
    assert snapshot(folder) == before
    assert main(["train", *command(fake_root, folder, "--force", "--epochs", "1")]) == 0
    assert runs.is_finished(folder) and not (folder / "eval.json").exists()


def test_an_unfinished_run_without_checkpoint_is_refused(trained, fake_root, tmp_path, capsys):
    folder = copy_of(trained, tmp_path)
    for name in ("checkpoint.pt", "results.json"):
        (folder / name).unlink()
    assert main(["train", *command(fake_root, folder)]) == 2
    one_error_line(capsys, "without its checkpoint", "--force")
    assert (folder / "metrics.jsonl").exists()


@pytest.mark.parametrize("text", ["[1, 2]", "{not json", '{"config": 3}'])
def test_a_config_json_that_is_not_a_config_is_refused(text, fake_root, tmp_path, capsys):
    folder = tmp_path / "odd"
    folder.mkdir()
    (folder / "config.json").write_text(text)
    assert main(["train", *command(fake_root, folder)]) == 2
    one_error_line(capsys, str(folder / "config.json"))
    assert (folder / "config.json").read_text() == text


# ----------------------------------------------------------------------------- nothing executed


class _Payload:
    """Unpickling this runs ``marker.touch()``: what a crafted checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def plant_payload(folder: Path, marker: Path) -> None:
    with open(folder / "checkpoint.pt", "wb") as handle:
        pickle.dump({"model": _Payload(marker), "epoch": 1}, handle, protocol=2)


def test_a_crafted_checkpoint_runs_no_code_on_resume(trained, fake_root, tmp_path, capsys):
    folder = copy_of(trained, tmp_path)
    (folder / "results.json").unlink()  # unfinished: training would resume from it
    marker = tmp_path / "pwned"
    plant_payload(folder, marker)
    assert main(["train", *command(fake_root, folder)]) == 2
    one_error_line(
        capsys, "not a checkpoint that loads safely", "can run code", str(folder / "checkpoint.pt")
    )
    assert not marker.exists()


def test_a_crafted_checkpoint_runs_no_code_on_eval(trained, tmp_path, capsys):
    folder = copy_of(trained, tmp_path)
    marker = tmp_path / "pwned"
    plant_payload(folder, marker)
    assert main(["eval", str(folder)]) == 2
    one_error_line(capsys, "not a checkpoint that loads safely")
    assert not marker.exists()


@pytest.mark.parametrize("what", ["train", "eval"])
def test_a_truncated_checkpoint_is_one_line(what, trained, fake_root, tmp_path, capsys):
    folder = copy_of(trained, tmp_path)
    (folder / "results.json").unlink()
    payload = (folder / "checkpoint.pt").read_bytes()
    (folder / "checkpoint.pt").write_bytes(payload[: len(payload) // 2])
    arguments = ["train", *command(fake_root, folder)] if what == "train" else ["eval", str(folder)]
    assert exit_code(arguments + (["--unfinished"] if what == "eval" else [])) == 2
    one_error_line(capsys, "cannot load", "checkpoint.pt")


# ----------------------------------------------------------------------------- faults


def test_an_output_folder_under_a_file_is_one_line(fake_root, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert main(["train", *command(fake_root, tmp_path / "file" / "run")]) == 2
    one_error_line(capsys, str(tmp_path / "file"))


def test_an_unwritable_folder_is_one_line(fake_root, tmp_path, capsys, monkeypatch):
    def refuse(path, value):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(runs, "atomic_write_json", refuse)
    out = tmp_path / "run"
    assert main(["train", *command(fake_root, out)]) == 2
    one_error_line(capsys, "Permission denied", str(out))


def test_a_full_disk_keeps_the_last_checkpoint_and_no_temporary(
    trained, fake_root, tmp_path, capsys, monkeypatch
):
    out = tmp_path / "run"
    real_save = torch.save
    calls = []

    def save_then_fill_the_disk(state, path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 2:  # the checkpoint of epoch 2: half written, then the disk is full
            Path(path).write_bytes(b"partial")
            raise OSError(28, "No space left on device", str(path))
        return real_save(state, path, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save_then_fill_the_disk)
    assert main(["train", *command(fake_root, out)]) == 2
    one_error_line(capsys, "No space left on device", "checkpoint of epoch 1 is kept")
    left = sorted(p.name for p in out.iterdir())
    assert left == ["checkpoint.pt", "config.json", "metrics.jsonl"]
    assert torch.load(out / "checkpoint.pt", weights_only=True)["epoch"] == 1
    monkeypatch.setattr(torch, "save", real_save)
    assert main(["train", *command(fake_root, out)]) == 0  # resumes from epoch 1
    assert runs.is_finished(out)


#: What torch.save raises when its writer cannot write (a full disk): RuntimeErrors, no errno.
TORCH_WRITE_FAILURES = [
    "[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file "
    "data/3: file write failed",
    "[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598",
    "basic_ios::clear: iostream error",
]


def test_torch_failing_to_write_a_checkpoint_is_one_line_saying_the_disk_is_full(
    fake_root, tmp_path, capsys, monkeypatch
):
    out = tmp_path / "run"
    real_save = torch.save
    calls = []

    def save_then_fail(state, path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 2:  # the checkpoint of epoch 2: half written, then torch's error
            Path(path).write_bytes(b"partial")
            raise RuntimeError(TORCH_WRITE_FAILURES[0])
        return real_save(state, path, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save_then_fail)
    assert main(["train", *command(fake_root, out)]) == 2
    error = one_error_line(capsys, f"cannot write epoch 2 into {out}", "the disk is full")
    assert "no space left on device" in error and "checkpoint of epoch 1 is kept" in error
    left = sorted(p.name for p in out.iterdir())
    assert left == ["checkpoint.pt", "config.json", "metrics.jsonl"]
    assert torch.load(out / "checkpoint.pt", weights_only=True)["epoch"] == 1
    monkeypatch.setattr(torch, "save", real_save)  # space freed: the rerun completes
    assert main(["train", *command(fake_root, out)]) == 0
    assert runs.is_finished(out)
    assert torch.load(out / "checkpoint.pt", weights_only=True)["epoch"] == 2


_real_save = torch.save


def _torch_says(message: str):
    def failing_save(state, path, *args, **kwargs):
        Path(path).write_bytes(b"partial")
        raise RuntimeError(message)

    return failing_save


def _save_to_a_full_device(state, path, *args, **kwargs):
    """torch.save's own error on a device that is always full (Linux' /dev/full)."""
    Path(path).write_bytes(b"partial")
    _real_save(state, "/dev/full", *args, **kwargs)


FAILING_SAVES = [
    *(pytest.param(_torch_says(m), id=m[-24:]) for m in TORCH_WRITE_FAILURES),
    pytest.param(
        _save_to_a_full_device,
        id="/dev/full",
        marks=pytest.mark.skipif(not Path("/dev/full").exists(), reason="no /dev/full"),
    ),
]


@pytest.mark.parametrize("failing_save", FAILING_SAVES)
def test_a_failed_checkpoint_write_is_enospc_and_keeps_the_last(
    failing_save, tmp_path, monkeypatch
):
    path = tmp_path / runs.CHECKPOINT_FILE
    runs.save_checkpoint(path, {"epoch": 1, "model": {}})
    before = path.read_bytes()
    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="the disk is full") as caught:
        runs.save_checkpoint(path, {"epoch": 2, "model": {"w": torch.zeros(1000)}})
    assert caught.value.errno == errno.ENOSPC
    assert caught.value.filename == str(path) + ".tmp"
    assert path.read_bytes() == before and sorted(tmp_path.iterdir()) == [path]


def test_other_errors_of_torch_save_are_not_taken_for_a_full_disk(tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise RuntimeError("cannot pickle a generator")

    monkeypatch.setattr(torch, "save", fail)
    with pytest.raises(RuntimeError, match="cannot pickle"):
        runs.save_checkpoint(tmp_path / runs.CHECKPOINT_FILE, {"epoch": 1})
    assert list(tmp_path.iterdir()) == []


def test_a_second_run_in_a_locked_folder_is_refused(fake_root, tmp_path, capsys):
    out = tmp_path / "run"
    with runs.lock(out):
        assert main(["train", *command(fake_root, out)]) == 2
        one_error_line(capsys, "is in use by process", "wait for it to finish")
    assert not (out / runs.LOCK_FILE).exists()
    assert main(["train", *command(fake_root, out, "--epochs", "1")]) == 0


# ----------------------------------------------------------------------------- evaluations


def test_eval_of_an_unfinished_run_says_so(trained, fake_root, tmp_path, capsys):
    folder = copy_of(trained, tmp_path)
    (folder / "results.json").unlink()
    assert main(["eval", str(folder)]) == 2
    one_error_line(capsys, "is unfinished (epoch 2 of 2)", "--unfinished")
    assert main(["eval", str(folder), "--unfinished"]) == 0
    assert "UNFINISHED" in capsys.readouterr().out
    assert json.loads((folder / "eval.json").read_text())["finished"] is False


def test_resuming_clears_stale_evaluations(trained, fake_root, tmp_path):
    folder = tmp_path / "run"
    assert main(["train", *command(fake_root, folder, "--epochs", "1")]) == 0
    # Make it a run of two epochs stopped after the first, evaluated at that point.
    (folder / "results.json").unlink()
    config = json.loads((folder / "config.json").read_text())
    config["config"]["epochs"] = 2
    (folder / "config.json").write_text(json.dumps(config))
    assert main(["eval", str(folder), "--unfinished"]) == 0
    assert (folder / "eval.json").exists()
    assert main(["train", *command(fake_root, folder)]) == 0
    assert not (folder / "eval.json").exists()


def test_an_evaluation_cut_short_is_completed_later(trained, tmp_path, monkeypatch):
    folder = copy_of(trained, tmp_path)
    write = runs.atomic_write_bytes

    def interrupted_at_the_embedding(path, payload):
        if path.name == runs.EMBEDDING_FILE:
            raise KeyboardInterrupt
        write(path, payload)

    monkeypatch.setattr(runs, "atomic_write_bytes", interrupted_at_the_embedding)
    with pytest.raises(KeyboardInterrupt):
        experiments.evaluate_folder(folder, tsne=False)
    assert (folder / "eval.json").exists() and not (folder / "embedding.json").exists()
    assert not experiments.evaluated(folder)
    monkeypatch.undo()
    first_eval = (folder / "eval.json").read_bytes()
    experiments.evaluate_folder(folder, tsne=False)
    assert experiments.evaluated(folder)
    assert (folder / "eval.json").read_bytes() == first_eval  # only the missing one was made
    assert json.loads((folder / "embedding.json").read_text())["test_images"] == 100


def test_load_run_refuses_a_checkpoint_of_another_model(trained, tmp_path):
    folder = copy_of(trained, tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config["config"]["projector_dim"] = 16
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(runs.RunFolderError, match="does not fit its config"):
        run_metrics.load_run(folder)


# ----------------------------------------------------------------------------- same run


def test_one_rule_for_the_same_run():
    from dyntemp.config import TrainConfig

    base = TrainConfig(out="a").as_dict()
    assert runs.same_config(base, {**base, "out": "b", "progress": False, "compile": True})
    assert runs.differences(base, {**base, "lr": 0.1}) == ["lr 0.2 -> 0.1"]
    older = {k: v for k, v in base.items() if k != "channels_last"}  # saved by an older version
    assert runs.same_config(older, base)
    assert not runs.same_config(older, {**base, "channels_last": "on"})
    newer = {**base, "a_future_setting": 1}
    assert runs.differences(base, newer) == ["a_future_setting None -> 1"]
