"""Where a result came from: the command, the code's commit, the machine, the versions."""

from __future__ import annotations

import functools
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

__all__ = ["code_commit", "command", "git_commit", "machine", "provenance"]


def git_commit(path: str | os.PathLike | None = None) -> str | None:
    """The commit of the checkout holding this package (``+dirty`` if its code has changes).

    Only the package's own files count: results or notebooks being written do not make the
    code dirty.
    """
    folder = Path(path) if path is not None else Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", "."],
            cwd=folder,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit + ("+dirty" if dirty else "")


@functools.cache
def code_commit() -> str | None:
    """The commit of this package's code as first asked for in this process.

    Asked at the start of a run, it names the code that ran, even if the checkout
    changes while the run goes on.
    """
    return git_commit()


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device: torch.device | str | None = None) -> dict[str, Any]:
    """The hardware a number was measured on."""
    info: dict[str, Any] = {
        "cpu": _cpu_model(),
        "cpu_cores": len(os.sched_getaffinity(0)),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
    }
    device = torch.device(device) if device is not None else None
    if device is not None and device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["gpu_capability"] = ".".join(map(str, torch.cuda.get_device_capability(device)))
    info["device"] = info.get("gpu", info["cpu"]) if device is not None else info["cpu"]
    return info


def command() -> str:
    """The command line that is running, as a reader would type it."""
    argv = list(sys.argv) or [""]
    if Path(argv[0]).parts[-2:] == ("dyntemp", "__main__.py"):
        argv[0] = "-m dyntemp"
    else:
        argv[0] = Path(argv[0]).name
    return " ".join(["python", *argv]).strip()


def provenance(device: torch.device | str | None = None) -> dict[str, Any]:
    """Command, commit, versions and machine, for a results file."""
    return {
        "command": command(),
        "git_commit": code_commit(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "machine": machine(device),
    }


def native_bf16_cpu() -> bool:
    """True when this CPU computes bf16 natively (AVX512-BF16 or AMX on x86)."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags
