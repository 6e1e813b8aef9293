"""Run folders: the one place that knows their files, how they are written and read, and
whether a folder holds the run a config describes.

A run folder holds

- ``config.json``: the config and the number of processes, written when the run starts;
- ``checkpoint.pt``: model, optimiser and loop state after the last finished epoch;
- ``metrics.jsonl``: one line per finished epoch;
- ``results.json``: written once, when the last epoch is done: the run is *finished*;
- ``eval.json``, ``embedding.json`` and ``longtail.json``: evaluations of the finished run
  (``python -m dyntemp eval``, ``--long-tail`` and the book's study); removed when training
  resumes, so none outlives its weights;
- ``.lock`` while a process trains in it.

Every file is written atomically (a temporary file, then a rename; the temporary file is
removed if the write fails), so an interrupted run leaves each file whole or absent. Files
are read without running code: JSON, and checkpoints with ``torch.load(weights_only=True)``.
Two configs describe the same run when they agree on every setting but those in
``NOT_COMPARED``, a setting missing from an older or newer file counting as its default.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import pickle
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dyntemp.config import TrainConfig

CONFIG_FILE = "config.json"
CHECKPOINT_FILE = "checkpoint.pt"
METRICS_FILE = "metrics.jsonl"
RESULTS_FILE = "results.json"
EVAL_FILE = "eval.json"
EMBEDDING_FILE = "embedding.json"
LONG_TAIL_FILE = "longtail.json"
LOCK_FILE = ".lock"
#: The files a run writes after its config, in the order they appear.
RUN_FILES = (
    CHECKPOINT_FILE,
    METRICS_FILE,
    RESULTS_FILE,
    EVAL_FILE,
    EMBEDDING_FILE,
    LONG_TAIL_FILE,
)
#: The evaluations of a finished run.
EVALUATION_FILES = (EVAL_FILE, EMBEDDING_FILE)
#: Settings that may differ between a run and its continuation (where and how it runs).
NOT_COMPARED = ("out", "force", "progress", "data_root", "download", "compile")


class RunFolderError(ValueError):
    """A run folder cannot be used as asked; the message says why and what to do."""


# ----------------------------------------------------------------------------- writing


def atomic_write_bytes(path: Path, payload: bytes) -> None:
    """Write ``payload`` to ``path`` whole or not at all."""
    temporary = path.with_name(path.name + ".tmp")
    try:
        with open(temporary, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, value: Any) -> None:
    atomic_write_bytes(path, (json.dumps(value, indent=2) + "\n").encode())


#: What torch's file writer says, in a RuntimeError without an errno, when a write fails.
WRITE_FAILED = ("file write failed", "unexpected pos", "iostream error", "no space left")
DISK_FULL = "the write failed: the disk is full (no space left on device)"


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """``torch.save`` atomically; ``state`` holds tensors and plain values only.

    A write that fails (torch raises a RuntimeError) is an OSError with errno ENOSPC:

    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> save_checkpoint(folder / "checkpoint.pt", {"epoch": 1})
    >>> sorted(p.name for p in folder.iterdir())
    ['checkpoint.pt']
    """
    temporary = path.with_name(path.name + ".tmp")
    try:
        try:
            torch.save(state, temporary)
        except RuntimeError as error:
            if not any(text in str(error).lower() for text in WRITE_FAILED):
                raise
            raise OSError(errno.ENOSPC, DISK_FULL, str(temporary)) from error
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


# ----------------------------------------------------------------------------- reading


def read_json(path: Path) -> Any:
    """The JSON in ``path``; a missing, unreadable or malformed file is one clear error."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} is missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise RunFolderError(f"cannot read {path}: {error}") from None


def load_checkpoint(path: Path, map_location: torch.device | str = "cpu") -> dict[str, Any]:
    """A checkpoint, loaded without running code; anything else is refused in one line."""
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} is missing") from None
    except pickle.UnpicklingError:  # objects beyond tensors and plain values: could run code
        raise RunFolderError(
            f"cannot load {path}: not a checkpoint that loads safely (it holds objects other "
            f"than tensors and plain values, and such objects can run code)"
        ) from None
    except Exception as error:  # truncated or corrupt
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise RunFolderError(
            f"cannot load {path}: not a checkpoint that loads safely ({reason[:160]})"
        ) from None
    if not isinstance(state, dict) or "model" not in state or "epoch" not in state:
        raise RunFolderError(f"{path} is not a dyntemp checkpoint")
    return state


def read_saved_config(folder: Path) -> tuple[dict[str, Any], int]:
    """The config a folder's run started with, and its number of processes."""
    path = Path(folder) / CONFIG_FILE
    saved = read_json(path)
    if not isinstance(saved, dict) or not isinstance(saved.get("config"), dict):
        raise RunFolderError(f"{path} is not a run's config (no 'config' object in it)")
    world_size = saved.get("world_size", 1)
    return saved["config"], world_size if isinstance(world_size, int) else 1


def load_config(folder: str | os.PathLike) -> TrainConfig:
    """The ``TrainConfig`` of the run in ``folder``, checked."""
    from dyntemp.config import from_dict

    saved, _ = read_saved_config(Path(folder))
    try:
        config = from_dict(saved)
        config.check()
    except (TypeError, ValueError) as error:
        raise RunFolderError(f"{Path(folder) / CONFIG_FILE}: {error}") from None
    return config


# ----------------------------------------------------------------------------- same run


def differences(saved: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    """The settings in which two configs differ, as ``name old -> new``; [] for the same run."""
    defaults = TrainConfig().as_dict()
    missing = object()
    found = []
    for key in sorted((set(saved) | set(wanted)) - set(NOT_COMPARED)):
        old = saved.get(key, defaults.get(key, missing))
        new = wanted.get(key, defaults.get(key, missing))
        if old != new:
            show = [None if v is missing else v for v in (old, new)]
            found.append(f"{key} {show[0]!r} -> {show[1]!r}")
    return found


def same_config(saved: dict[str, Any], wanted: dict[str, Any]) -> bool:
    """True if two configs describe the same run."""
    return not differences(saved, wanted)


# ----------------------------------------------------------------------------- the folder


@dataclass(frozen=True)
class FolderState:
    """What a folder holds for a config: ``fresh``, ``resume`` or ``finished``."""

    status: str
    folder: Path

    @property
    def fresh(self) -> bool:
        return self.status == "fresh"


def present(folder: Path) -> list[str]:
    """The run files (config.json included) that ``folder`` holds."""
    return [name for name in (CONFIG_FILE, *RUN_FILES) if (folder / name).exists()]


def is_finished(folder: str | os.PathLike) -> bool:
    """True if ``folder`` holds a finished run (results.json written for all its epochs)."""
    folder = Path(folder)
    if not ((folder / RESULTS_FILE).is_file() and (folder / CONFIG_FILE).is_file()):
        return False
    try:
        saved, _ = read_saved_config(folder)
        results = read_json(folder / RESULTS_FILE)
    except (ValueError, FileNotFoundError):
        return False
    return isinstance(results, dict) and results.get("epochs") == saved.get("epochs")


def inspect(folder: Path, config: TrainConfig, world_size: int) -> FolderState:
    """Decide what training ``config`` in ``folder`` means, touching nothing.

    A finished run of the same config is ``finished``; an unfinished one with a checkpoint
    is resumed. Anything else that holds run files (another config, no config.json, an
    unreadable config, an unfinished run without a checkpoint) is refused unless
    ``config.force``, because starting afresh would delete it.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise RunFolderError(f"output folder {folder} is a file")
    files = present(folder) if folder.is_dir() else []
    if config.force or not files:
        return FolderState("fresh", folder)
    advice = "choose another --out, or pass --force to delete it and start afresh"
    if CONFIG_FILE not in files:
        raise RunFolderError(f"{folder} holds {', '.join(files)} of an unknown run; {advice}")
    try:
        saved, saved_world = read_saved_config(folder)
    except (ValueError, FileNotFoundError) as error:
        raise RunFolderError(f"{error}; {advice}") from None
    wanted = {**config.as_dict(), "world_size": world_size}
    changed = differences({**saved, "world_size": saved_world}, wanted)
    if changed:
        raise RunFolderError(
            f"{folder} holds a run with a different config ({'; '.join(changed)}); {advice}"
        )
    if is_finished(folder):
        return FolderState("finished", folder)
    if (folder / CHECKPOINT_FILE).exists():
        return FolderState("resume", folder)
    if set(files) & {METRICS_FILE, RESULTS_FILE}:
        raise RunFolderError(
            f"{folder} holds an unfinished run without its checkpoint, which cannot resume; "
            f"pass --force to delete it and start afresh"
        )
    return FolderState("fresh", folder)  # config.json alone: stopped before its first epoch


def clear(folder: Path) -> None:
    """Remove a run's files (for a fresh start, after ``inspect`` allowed it)."""
    for name in RUN_FILES:
        (folder / name).unlink(missing_ok=True)
        (folder / (name + ".tmp")).unlink(missing_ok=True)


def clear_evaluations(folder: Path) -> None:
    """Remove evaluations, which would describe other weights once training goes on."""
    for name in (*EVALUATION_FILES, LONG_TAIL_FILE):
        (folder / name).unlink(missing_ok=True)


def prepare(folder: Path, config: TrainConfig, world_size: int, state: FolderState) -> None:
    """Make the folder ready for the run ``inspect`` allowed: cleared when fresh, stale
    evaluations removed when resumed, the config written."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if state.fresh:
            clear(folder)
        else:
            clear_evaluations(folder)
        atomic_write_json(
            folder / CONFIG_FILE, {"config": config.as_dict(), "world_size": world_size}
        )
    except OSError as error:
        raise RunFolderError(f"cannot write the run folder {folder}: {_reason(error)}") from None


def _reason(error: OSError) -> str:
    return error.strerror or str(error)


@contextlib.contextmanager
def lock(folder: Path) -> Iterator[None]:
    """Hold the folder's lock while a run writes in it; a second run is refused.

    The operating system releases the lock when the process ends, however it ends, so a
    killed run never leaves the folder locked.
    """
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle = open(folder / LOCK_FILE, "a+")  # noqa: SIM115 (held until the run ends)
    except OSError as error:
        raise RunFolderError(f"cannot write the run folder {folder}: {_reason(error)}") from None
    try:
        if not _try_lock(handle):
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise RunFolderError(f"{folder} is in use by {holder}; wait for it to finish")
        handle.seek(0)
        handle.truncate()
        handle.write(f"process {os.getpid()}")
        handle.flush()
        try:
            yield
        finally:
            _unlink_lock(folder, handle)
    finally:
        handle.close()  # releases the lock


def _unlink_lock(folder: Path, handle: Any) -> None:
    """Remove the lock file as the run ends (on Windows only once it is closed)."""
    with contextlib.suppress(OSError):
        if os.name == "nt":
            handle.close()
        (folder / LOCK_FILE).unlink()


def _try_lock(handle: Any) -> bool:
    try:
        if os.name == "nt":
            import msvcrt

            handle.seek(0)
            msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
        else:
            import fcntl

            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


# ----------------------------------------------------------------------------- finished runs


def load(folder: str | os.PathLike) -> dict[str, Any]:
    """A finished run: its folder, config, results, per-epoch metrics and evaluations
    (``eval`` and ``embedding``, None where not written)."""
    folder = Path(folder)
    saved, _ = read_saved_config(folder)
    metrics_path = folder / METRICS_FILE
    try:
        lines = metrics_path.read_text(encoding="utf-8").splitlines()
        metrics = [json.loads(line) for line in lines if line.strip()]
    except (OSError, json.JSONDecodeError) as error:
        raise RunFolderError(f"cannot read {metrics_path}: {error}") from None
    run: dict[str, Any] = {
        "folder": folder,
        "config": saved,
        "results": read_json(folder / RESULTS_FILE),
        "metrics": metrics,
    }
    for key, name in (("eval", EVAL_FILE), ("embedding", EMBEDDING_FILE)):
        path = folder / name
        run[key] = read_json(path) if path.exists() else None
    return run
