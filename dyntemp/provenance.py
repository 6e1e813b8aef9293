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

__all__ = [
    "code_commit",
    "command",
    "cpu_features",
    "git_commit",
    "machine",
    "native_bf16_cpu",
    "provenance",
    "usable_cores",
]

_CPUINFO = Path("/proc/cpuinfo")  # Linux only; elsewhere the flags are unknown
# The /proc/cpuinfo flags reported, by the name they have there ("bf16" is arm64's).
X86_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16")
ARM_FLAGS = ("asimd", "sve", "bf16")
_X86 = ("x86_64", "amd64", "i386", "i686")
_ARM64 = ("aarch64", "arm64")


def _git(folder: Path, *arguments: str) -> str:
    """The output of ``git ARGUMENTS`` run in ``folder`` (OSError or CalledProcessError)."""
    return subprocess.run(
        ["git", *arguments], cwd=folder, capture_output=True, text=True, check=True
    ).stdout.strip()


def _package_folder(path: str | os.PathLike | None) -> Path:
    return Path(path) if path is not None else Path(__file__).resolve().parent


def git_commit(path: str | os.PathLike | None = None) -> str | None:
    """The commit of the checkout holding this package (``+dirty`` if its code has changes).

    Only the package's own files count: results or notebooks being written do not make the
    code dirty.
    """
    folder = _package_folder(path)
    try:
        commit = _git(folder, "rev-parse", "HEAD")
        dirty = _git(folder, "status", "--porcelain", "--untracked-files=no", "--", ".")
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit + ("+dirty" if dirty else "")


def package_commit(path: str | os.PathLike | None = None) -> str | None:
    """The last commit that changed this package's own files (``+dirty`` if they have
    uncommitted changes): the same for every run of one version of the code, even while
    results are committed between the runs."""
    folder = _package_folder(path)
    current = git_commit(folder)
    if current is None:
        return None
    try:
        commit = _git(folder, "log", "-1", "--format=%H", "--", ".")
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit + ("+dirty" if current.endswith("+dirty") else "")


@functools.cache
def code_version() -> str | None:
    """``package_commit()`` as first asked for in this process (the code that ran)."""
    return package_commit()


@functools.cache
def code_commit() -> str | None:
    """The commit of this package's code as first asked for in this process.

    Asked at the start of a run, it names the code that ran, even if the checkout
    changes while the run goes on.
    """
    return git_commit()


def usable_cores() -> int:
    """The CPU cores this process may run on.

    Its affinity mask where the system has one (Linux), else the cores Python sees
    (``os.process_cpu_count`` from Python 3.13, else ``os.cpu_count``); at least 1.
    """
    affinity = getattr(os, "sched_getaffinity", None)  # absent on macOS and Windows
    if affinity is not None:
        try:
            return max(1, len(affinity(0)))
        except OSError:
            pass
    count = getattr(os, "process_cpu_count", None) or os.cpu_count
    return max(1, count() or 1)


def cpuinfo(field_name: str) -> str | None:
    """The first value of ``field_name`` in /proc/cpuinfo (``model name``, ``cpu family``,
    ``flags``...); None where there is no such file (macOS, Windows) or field."""
    try:
        text = _CPUINFO.read_text(errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == field_name:
            return value.strip()
    return None


def _cpuinfo_flags() -> set[str] | None:
    """The first ``flags`` (x86) or ``Features`` (arm) line of /proc/cpuinfo; None if none."""
    for key in ("flags", "Features"):
        value = cpuinfo(key)
        if value is not None:
            return set(value.split())
    return None


def _torch_capability() -> str | None:
    """The vector instruction set ATen's CPU kernels use (``AVX512``, ``AVX2``, ``DEFAULT``...)."""
    get = getattr(getattr(torch.backends, "cpu", None), "get_cpu_capability", None)
    try:
        return str(get()) if get is not None else None
    except RuntimeError:
        return None


def cpu_features() -> dict[str, Any]:
    """The CPU's vector and bf16 features: one bool per flag, None where unknown.

    Read from /proc/cpuinfo (Linux): on x86 the flags in ``X86_FLAGS``, on arm64 those in
    ``ARM_FLAGS`` (key ``arm_<flag>``). Where /proc/cpuinfo is missing (macOS, Windows) or
    has no flags line, every flag is None. ``torch_capability`` is the instruction set
    PyTorch's own kernels chose, as a cross-check; ``native_bf16`` is ``native_bf16_cpu()``.
    """
    arch = platform.machine().lower()
    if arch in _X86:
        names = list(X86_FLAGS)
    elif arch in _ARM64:
        names = [f"arm_{f}" for f in ARM_FLAGS]
    else:
        names = []
    flags = _cpuinfo_flags()
    features: dict[str, Any] = {
        name: (None if flags is None else name.removeprefix("arm_") in flags) for name in names
    }
    features["torch_capability"] = _torch_capability()
    features["native_bf16"] = _native_bf16(arch, features)
    return features


def _native_bf16(arch: str, features: dict[str, Any]) -> bool:
    if arch in _X86:
        claimed = features["avx512_bf16"] is True or features["amx_bf16"] is True
        # PyTorch choosing less than AVX-512 contradicts the flags (a hypervisor hiding
        # state, or ATEN_CPU_CAPABILITY lowered): then trust neither, and say no.
        return claimed and features["torch_capability"] not in ("DEFAULT", "AVX2")
    if arch in _ARM64:
        return features["arm_bf16"] is True
    return False


def native_bf16_cpu() -> bool:
    """Whether the CPU computes bf16 natively, so that bf16 autocast can speed it up.

    True for AVX512-BF16 or AMX-BF16 on x86 (and PyTorch using AVX-512), for the ``bf16``
    feature on arm64 Linux; False elsewhere, and wherever the flags are unknown.
    """
    return cpu_features()["native_bf16"]


def cpu_model() -> str:
    """The processor's model name (/proc/cpuinfo on Linux, else what ``platform`` says)."""
    return cpuinfo("model name") or platform.processor() or platform.machine()


def cpu_kind() -> str | None:
    """The processor's family and model numbers (x86 Linux: ``family 25 model 17``), which
    tell apart kinds that share a model name such as ``AMD EPYC``; None where unknown."""
    family, model = cpuinfo("cpu family"), cpuinfo("model")
    return f"family {family} model {model}" if family and model else None


def machine(device: torch.device | str | None = None) -> dict[str, Any]:
    """The hardware a number was measured on; with ``cpu_features()`` when it ran on the CPU."""
    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cpu_kind": cpu_kind(),
        "cpu_cores": usable_cores(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
    }
    device = torch.device(device) if device is not None else None
    if device is not None and device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["gpu_capability"] = ".".join(map(str, torch.cuda.get_device_capability(device)))
    elif device is None or device.type == "cpu":
        info["cpu_features"] = cpu_features()
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
        "package_commit": code_version(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "machine": machine(device),
    }


def load_average() -> tuple[float, float, float] | None:
    """The 1, 5 and 15-minute load averages, or None where the system has none (Windows)."""
    try:
        return os.getloadavg()
    except (AttributeError, OSError):
        return None
