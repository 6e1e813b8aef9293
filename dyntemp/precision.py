"""The arithmetic of a run: mixed precision and memory layout, asked for or chosen by measuring.

On a GPU, ``--amp auto`` follows a rule: bf16 on compute capability 8.0 and above, fp16
with a gradient scaler below (a Colab T4). On a CPU no rule is reliable: the same flags
(AVX512-BF16, say) make bf16 more than twice as fast as float32 on one processor and
slower on another, and channels_last pays on some and not others. So on a CPU,
``--amp auto`` or ``--channels-last auto`` time the trainer's own step under each candidate
(``CPU_CANDIDATES``, bf16 only where the processor computes it natively) and take the
fastest. The probe takes seconds; its answer is cached per machine, torch version,
threads, network and batch (``cache_file``), and recorded in the run (its checkpoint and
results), so that a run keeps its arithmetic to the end and on resume.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from dyntemp import provenance

#: The CPU candidates: (autocast dtype, channels_last), by name.
CPU_CANDIDATES: dict[str, tuple[torch.dtype | None, bool]] = {
    "fp32": (None, False),
    "fp32 + channels_last": (None, True),
    "bf16": (torch.bfloat16, False),
    "bf16 + channels_last": (torch.bfloat16, True),
}


@dataclass(frozen=True)
class Precision:
    """What a run computes in: the autocast dtype (None: float32), the layout, and how the
    choice was made (``asked``, ``rule``, ``probe``, ``cache`` or ``resumed``), with the
    probe's images per second where one ran."""

    dtype: torch.dtype | None
    channels_last: bool
    source: str = "rule"
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def amp(self) -> str:
        """``off``, ``bfloat16`` or ``float16``, as run results name it."""
        return "off" if self.dtype is None else str(self.dtype).removeprefix("torch.")

    def as_dict(self) -> dict[str, Any]:
        return {
            "amp": self.amp,
            "channels_last": self.channels_last,
            "source": self.source,
            "probe_images_per_s": dict(self.timings),
        }

    @classmethod
    def from_dict(cls, saved: dict[str, Any], source: str | None = None) -> Precision:
        dtypes = {"off": None, "bfloat16": torch.bfloat16, "float16": torch.float16}
        if saved.get("amp") not in dtypes:
            raise ValueError(f"unknown saved precision {saved.get('amp')!r}")
        return cls(
            dtypes[saved["amp"]],
            bool(saved["channels_last"]),
            source or saved.get("source", "rule"),
            dict(saved.get("probe_images_per_s", {})),
        )


def amp_dtype(mode: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``mode`` on ``device`` by rule (None: full float32).

    auto on CUDA: bf16 on compute capability >= 8.0, fp16 below (a Colab T4, 7.5, says it
    supports bf16, through slow emulation: the capability decides). auto on a CPU, where
    no probe is made (``choose`` makes one): bf16 where the processor computes it natively
    (AVX512-BF16, AMX), else none.
    """
    if mode == "off":
        return None
    if device.type != "cuda":
        if mode == "fp16":
            raise ValueError(f"--amp fp16 needs a CUDA device, not {device}")
        if mode == "bf16" or provenance.native_bf16_cpu():
            return torch.bfloat16
        return None
    if mode == "bf16":
        return torch.bfloat16
    if mode == "fp16":
        return torch.float16
    major, _ = torch.cuda.get_device_capability(device)
    return torch.bfloat16 if major >= 8 else torch.float16


def use_channels_last(mode: str, device: torch.device, dtype: torch.dtype | None) -> bool:
    """By rule: auto is on with CUDA, and on a CPU with bf16."""
    if mode != "auto":
        return mode == "on"
    return device.type == "cuda" or dtype == torch.bfloat16


def by_rule(amp: str, channels_last: str, device: torch.device) -> Precision:
    """The precision that ``amp`` and ``channels_last`` name, ``auto`` resolved by rule."""
    dtype = amp_dtype(amp, device)
    asked = amp != "auto" and channels_last != "auto"
    return Precision(
        dtype, use_channels_last(channels_last, device, dtype), "asked" if asked else "rule"
    )


def candidates(amp: str, channels_last: str) -> dict[str, tuple[torch.dtype | None, bool]]:
    """The CPU candidates that ``amp`` and ``channels_last`` leave open."""
    native = provenance.native_bf16_cpu()
    found = {}
    for name, (dtype, layout) in CPU_CANDIDATES.items():
        if dtype is not None and not (native or amp == "bf16"):
            continue  # emulated bf16 is slow: never a candidate unless asked for
        if amp == "off" and dtype is not None or amp == "bf16" and dtype is None:
            continue
        if channels_last != "auto" and layout != (channels_last == "on"):
            continue
        found[name] = (dtype, layout)
    return found


def choose(
    amp: str,
    channels_last: str,
    device: torch.device,
    key: dict[str, Any],
    time_step: Callable[[torch.dtype | None, bool], float],
    *,
    cache: Path | bool = True,
) -> Precision:
    """The precision of a new run: by rule on a GPU or where nothing is ``auto``; on a CPU
    the fastest candidate by ``time_step(dtype, channels_last)`` (images per second of the
    trainer's step), cached under ``key`` (the network and batch; the machine is added) in
    ``cache`` (True: ``cache_file()``; False: none).

    >>> speeds = {(None, False): 900.0, (None, True): 1000.0}
    >>> cpu = torch.device("cpu")
    >>> chosen = choose("off", "auto", cpu, {}, lambda d, c: speeds[d, c], cache=False)
    >>> chosen.amp, chosen.channels_last, chosen.source
    ('off', True, 'probe')
    """
    cache = cache_file() if cache is True else (cache or None)
    if device.type != "cpu" or (amp != "auto" and channels_last != "auto"):
        return by_rule(amp, channels_last, device)
    open_ = candidates(amp, channels_last)
    if len(open_) == 1:
        ((dtype, layout),) = open_.values()
        return Precision(dtype, layout, "rule")
    full_key = json.dumps({**key, **machine_key(), "amp": amp, "cl": channels_last}, sort_keys=True)
    saved = _read_cache(cache).get(full_key) if cache is not None else None
    if saved is not None:
        try:
            return Precision.from_dict(saved, source="cache")
        except (AttributeError, KeyError, TypeError, ValueError):
            pass  # a damaged entry: measured again, and replaced
    timings = {name: time_step(dtype, layout) for name, (dtype, layout) in open_.items()}
    best = max(timings, key=timings.get)
    dtype, layout = open_[best]
    chosen = Precision(dtype, layout, "probe", {k: round(v, 1) for k, v in timings.items()})
    if cache is not None:
        _write_cache(cache, full_key, chosen.as_dict())
    return chosen


def machine_key() -> dict[str, Any]:
    """What makes one machine's timings another's: processor, its features, torch, threads."""
    return {
        "cpu": provenance.cpu_model(),
        "family": provenance.cpuinfo("cpu family"),
        "model": provenance.cpuinfo("model"),
        "features": provenance.cpu_features(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }


def cache_file() -> Path:
    """``precision.json`` in dyntemp's cache folder (``dyntemp.stored.cache_root``)."""
    from dyntemp.stored import cache_root

    return cache_root() / "precision.json"


def _read_cache(path: Path) -> dict[str, Any]:
    try:
        found = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def _write_cache(path: Path, key: str, value: dict[str, Any]) -> None:
    """Add one entry; a cache that cannot be written is skipped (the probe runs again)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        entries = _read_cache(path)
        entries[key] = value
        temporary = path.with_suffix(f".{os.getpid()}.tmp")
        temporary.write_text(json.dumps(entries, indent=1, sort_keys=True))
        os.replace(temporary, path)
    except OSError:
        pass
