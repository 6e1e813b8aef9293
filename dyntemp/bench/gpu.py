"""``python -m dyntemp bench gpu``: the GPU path, measured in one command.

Meant to take at most about five minutes on one GPU. It prints a short table and writes
``results/bench-gpu/results.json`` with the provenance. With the other benchmarks' own
functions it measures:

* **views**: ``SimCLRAugment`` views per second at 32x32 in batches of 512
  (``bench.augment.time_batched``) and over one epoch of two views of 50,000 images through
  ``ViewBatches``, and whether a step makes the host wait for the GPU (CUDA's sync debug
  mode);
* **loss**: ``ntxent`` forward+backward at 2N = 1024, 4096, 16384 views of D = 128, with
  DySTreSS (0.1, 0.2) and a fixed tau = 0.2, beside the plain autograd ``reference_ntxent``
  and lightly's ``NTXentLoss`` when it is installed: median time and peak memory
  (``bench.loss``);
* **training**: the trainer's ResNet-18 SimCLR steps on CIFAR-10 (``DYNTEMP_DATA``; random
  images without it, at the same speed) in four settings: amp auto (bf16 on compute
  capability >= 8, else fp16), fp16 with the GradScaler and DySTreSS down to tau = 0.05,
  channels_last off, and ``torch.compile``. Each is timed by ``dyntemp.timing.epoch_seconds``,
  the step timer of ``bench train`` too: one epoch's steps after 20 untimed ones (cuDNN's
  autotuning, compilation), its seconds and images/s, and whether every loss is finite;
* **NCCL**: milliseconds of an ``ntxent(..., gather=True)`` step in a one-process ``nccl``
  group (that it equals the loss without gathering is tested, in the tests);
* the machine: GPU name, compute capability, memory, torch, CUDA and cuDNN versions.

The goals: at least 1,000,000 views/s on an H100-class GPU (200,000 at the least), and an
epoch of CIFAR-10 training steps of ResNet-18 in under 2 s on an H100-class GPU.

Without CUDA it says so in one line and exits 0. The measurement functions take a device,
so the tests run them on the CPU at tiny sizes.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import os
import socket
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from dyntemp import checks
from dyntemp.augment import SimCLRAugment, ViewBatches
from dyntemp.bench.augment import test_images, time_batched
from dyntemp.bench.common import host_syncs, training_images, write_results
from dyntemp.bench.loss import peak_memory, time_alternately
from dyntemp.config import TrainConfig
from dyntemp.loss import ntxent, reference_ntxent
from dyntemp.precision import by_rule
from dyntemp.provenance import provenance
from dyntemp.temperature import DySTreSS
from dyntemp.timing import epoch_seconds, time_steps

DEFAULT_OUT = Path("results") / "bench-gpu"
VIEWS_GOAL = 1_000_000  # views/s on an H100-class GPU
VIEWS_FLOOR = 200_000  # views/s on any GPU worth training on
EPOCH_GOAL_S = 2.0  # seconds per CIFAR-10 epoch of ResNet-18 on an H100-class GPU
LOSS_SIZES = (1024, 4096, 16384)


# ----------------------------------------------------------------------------- the machine


def machine_info(device: torch.device | str) -> dict[str, Any]:
    """What torch says about the device and its software."""
    device = torch.device(device)
    info: dict[str, Any] = {
        "device": str(device),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
    }
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        major, minor = torch.cuda.get_device_capability(device)
        info.update(
            gpu=properties.name,
            capability=f"{major}.{minor}",
            memory_gib=round(properties.total_memory / 2**30, 1),
            multiprocessors=properties.multi_processor_count,
            gpus=torch.cuda.device_count(),
            bf16_native=major >= 8,
        )
    return info


# ----------------------------------------------------------------------------- views


def measure_views(
    device: torch.device | str,
    batch: int = 512,
    epoch_images: int = 50_000,
    *,
    size: int = 32,
    rounds: int = 5,
) -> dict[str, Any]:
    """Views per second of ``SimCLRAugment`` in batches of ``batch`` and over one epoch.

    The batch rate is the median over ``rounds`` passes of 8 batches; the epoch is one
    ``ViewBatches`` pass over ``epoch_images`` images (two views each), as training runs it.
    """
    device = torch.device(device)
    images, source = test_images(max(epoch_images, 8 * batch), size)
    images = images.to(device)
    augment = SimCLRAugment(size=size)
    eight = images[: 8 * batch]
    time_batched(augment, eight, batch, seed=0)  # first calls: kernels, the constants
    rates = [time_batched(augment, eight, batch, seed=r) for r in range(rounds)]
    epoch = ViewBatches(images[:epoch_images], batch, augment, seed=0, epoch=0)
    seconds = time_steps(iter(epoch), len(epoch), device)
    result: dict[str, Any] = {
        "images": source,
        "size": size,
        "batch": batch,
        "views_per_s": statistics.median(rates),
        "epoch_images": epoch_images,
        "epoch_views": 2 * len(epoch) * batch,
        "epoch_seconds": seconds,
        "epoch_views_per_s": 2 * len(epoch) * batch / seconds,
        "host_syncs": None,
    }
    if device.type == "cuda":
        steps = iter(ViewBatches(images[:epoch_images], batch, augment, seed=0, epoch=1))
        next(steps)
        result["host_syncs"] = host_syncs(lambda: next(steps))
    return result


# ----------------------------------------------------------------------------- the loss


def loss_candidates(tau: float = 0.2) -> dict[str, Callable[[torch.Tensor, torch.Tensor], Any]]:
    """The losses compared, by name (lightly's only where it is installed)."""
    rule = DySTreSS(0.1, 0.2)
    losses: dict[str, Callable] = {
        "dyntemp ntxent, DySTreSS(0.1, 0.2)": lambda a, b: ntxent(a, b, rule),
        f"dyntemp ntxent, fixed {tau}": lambda a, b: ntxent(a, b, tau),
        f"plain autograd, fixed {tau}": lambda a, b: reference_ntxent(a, b, tau),
    }
    try:
        from lightly.loss import NTXentLoss
    except ImportError:
        pass
    else:
        losses[f"lightly NTXentLoss, fixed {tau}"] = NTXentLoss(temperature=tau)
    return losses


def measure_loss(
    device: torch.device | str,
    sizes: Sequence[int] = LOSS_SIZES,
    dim: int = 128,
    *,
    repeats: int = 10,
) -> list[dict[str, Any]]:
    """Median forward+backward milliseconds and peak MiB (CUDA only) of each candidate."""
    device = torch.device(device)
    losses = loss_candidates()
    rows = []
    for size in sizes:
        g = torch.Generator().manual_seed(size)
        z1 = torch.randn(size // 2, dim, generator=g).to(device).requires_grad_()
        z2 = torch.randn(size // 2, dim, generator=g).to(device).requires_grad_()
        times = time_alternately(losses, z1, z2, repeats)
        for name, fn in losses.items():
            row: dict[str, Any] = {"views": size, "dim": dim, "loss": name}
            row["ms"] = 1000 * times[name]
            row["peak_mib"] = None
            row["host_syncs"] = None
            if device.type == "cuda":
                row["peak_mib"] = peak_memory(fn, z1, z2) / 2**20
                if name.startswith("dyntemp"):
                    row["host_syncs"] = host_syncs(lambda fn=fn, a=z1, b=z2: fn(a, b).backward())
                    z1.grad = z2.grad = None
            rows.append(row)
    return rows


# ----------------------------------------------------------------------------- training


@dataclasses.dataclass(frozen=True)
class TrainingRow:
    """One training setting: a name and the ``TrainConfig`` fields that make it (the
    temperature is the trainer's default, DySTreSS (0.1, 0.2), unless they say otherwise)."""

    name: str
    fields: dict[str, Any]


TRAINING_ROWS = (
    TrainingRow("amp auto, channels_last", {"amp": "auto", "channels_last": "on"}),
    TrainingRow(
        "fp16 + GradScaler, DySTreSS(0.05, 0.2)",
        {"amp": "fp16", "channels_last": "on", "tau_min": 0.05, "tau_max": 0.2},
    ),
    TrainingRow("amp auto, channels_last off", {"amp": "auto", "channels_last": "off"}),
    TrainingRow(
        "amp auto, channels_last, torch.compile",
        {"amp": "auto", "channels_last": "on", "compile": True},
    ),
)


def measure_training(
    device: torch.device | str,
    data_root: str | None,
    rows: Sequence[TrainingRow] = TRAINING_ROWS,
    *,
    model: str = "resnet18",
    batch_size: int = 512,
    images: int = 50_000,
    warmup: int = 20,
    deadline: float = math.inf,
) -> list[dict[str, Any]]:
    """One epoch of the trainer's steps per row on the first ``images`` training images
    (``timing.epoch_seconds`` after ``warmup`` untimed steps): its seconds, images/s and
    whether every loss was finite. A row that fails records its error and the others go
    on; rows that would start after ``deadline`` (``time.perf_counter()``) are skipped."""
    device = torch.device(device)
    pictures, source = training_images(data_root if _has_cifar10(data_root) else None, images)
    pictures = pictures.to(device)
    results = []
    for row in rows:
        entry: dict[str, Any] = {"name": row.name, **row.fields}
        if time.perf_counter() > deadline:
            entry["skipped"] = "the time budget was spent"
        else:
            config = TrainConfig(
                model=model, batch_size=batch_size, device=str(device), **row.fields
            )
            entry.update(_time_a_setting(config, pictures, device, warmup), images=source)
        results.append(entry)
    return results


def _has_cifar10(root: str | None) -> bool:
    return root is not None and any(
        (Path(root) / name).is_dir() for name in ("train", "cifar-10-batches-py")
    )


def _time_a_setting(
    config: TrainConfig, images: torch.Tensor, device: torch.device, warmup: int
) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        amp = by_rule(config.amp, config.channels_last, device).amp
        epoch = epoch_seconds(config, images, device, warmup=warmup)
    except Exception as error:  # a failing setting is a result too
        return {"error": f"{type(error).__name__}: {error}"}
    return {
        "amp_dtype": amp,
        "steps": epoch["steps"],
        "train_seconds": epoch["seconds"],
        "images_per_s": epoch["images_per_s"],
        "losses_finite": epoch["losses_finite"],
        "wall_seconds": time.perf_counter() - started,
    }


# ----------------------------------------------------------------------------- NCCL


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def one_process_group(backend: str, device: torch.device | str) -> Iterator[None]:
    """A process group of this process alone, left and its environment restored after."""
    import torch.distributed as dist

    device = torch.device(device)
    if dist.is_initialized():
        raise RuntimeError("a process group is already initialised")
    saved = {name: os.environ.get(name) for name in ("MASTER_ADDR", "MASTER_PORT")}
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
    try:
        options: dict[str, Any] = {}
        if device.type == "cuda":
            torch.cuda.set_device(device)
            options["device_id"] = device
        dist.init_process_group(backend, world_size=1, rank=0, **options)
        try:
            yield
        finally:
            dist.destroy_process_group()
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def measure_nccl(
    device: torch.device | str,
    backend: str | None = None,
    *,
    steps: int = 5,
    batch: int = 256,
    dim: int = 128,
) -> dict[str, Any]:
    """Median milliseconds of an ``ntxent(..., gather=True)`` forward+backward in a
    one-process group (``nccl`` on a GPU, ``gloo`` on the CPU), after one untimed step."""
    device = torch.device(device)
    backend = backend or ("nccl" if device.type == "cuda" else "gloo")
    rule = DySTreSS(0.1, 0.2)
    g = torch.Generator().manual_seed(1)
    z1 = torch.randn(batch, dim, generator=g).to(device).requires_grad_()
    z2 = torch.randn(batch, dim, generator=g).to(device).requires_grad_()

    def gathered_steps() -> Iterator[None]:
        while True:
            torch.autograd.grad(ntxent(z1, z2, rule, gather=True), (z1, z2))
            yield

    with one_process_group(backend, device):
        step = gathered_steps()
        time_steps(step, 1, device)
        times = [time_steps(step, 1, device) for _ in range(steps)]
    return {
        "backend": backend,
        "steps": steps,
        "views": 2 * batch,
        "ms_per_step": 1000 * statistics.median(times),
    }


# ----------------------------------------------------------------------------- the report


def _number(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def _machine_line(m: dict[str, Any]) -> str:
    return (
        f"{m.get('gpu', m['device'])}, capability {m.get('capability', '-')}, "
        f"{m.get('memory_gib', '-')} GiB; torch {m['torch']}, CUDA {m['cuda']}, "
        f"cuDNN {m['cudnn']}"
    )


def _views_lines(v: dict[str, Any]) -> list[str]:
    return [
        f"views {v['size']}x{v['size']} ({v['images']}): {v['views_per_s']:,.0f}/s in "
        f"batches of {v['batch']}; {v['epoch_views_per_s']:,.0f}/s over an epoch of "
        f"{v['epoch_views']:,} views ({v['epoch_seconds']:.2f} s); host syncs: "
        f"{v['host_syncs']}"
    ]


def _loss_lines(rows: list[dict[str, Any]]) -> list[str]:
    lines = [f"{'2N':>6}  {'loss':<36} {'fwd+bwd ms':>10} {'peak MiB':>9}  host syncs"]
    for r in rows:
        lines.append(
            f"{r['views']:>6}  {r['loss']:<36} {r['ms']:>10.2f} "
            f"{_number(r['peak_mib'], '.1f'):>9}  {(r['host_syncs'] or '-')[:40]}"
        )
    return lines


def _training_lines(rows: list[dict[str, Any]]) -> list[str]:
    lines = [f"{'training':<40} {'amp':>8} {'s/epoch':>8} {'images/s':>9}  losses"]
    for r in rows:
        if "error" in r or "skipped" in r:
            lines.append(f"{r['name']:<40} {r.get('error') or r['skipped']}")
            continue
        lines.append(
            f"{r['name']:<40} {r['amp_dtype']:>8} {r['train_seconds']:>8.2f} "
            f"{r['images_per_s']:>9,.0f}  {'finite' if r['losses_finite'] else 'NOT finite'}"
        )
    return lines


def _nccl_line(n: dict[str, Any]) -> str:
    if "error" in n:
        return f"{n.get('backend', 'nccl')}: {n['error']}"
    return (
        f"{n['backend']}, one process, gather=True: {n['ms_per_step']:.2f} ms per step of "
        f"{n['views']} views"
    )


def format_report(result: dict[str, Any]) -> str:
    """The machine, then a line or table per measurement, then the goals."""
    lines = [_machine_line(result["machine"])]
    if result.get("views"):
        lines += _views_lines(result["views"])
    if result.get("loss"):
        lines += _loss_lines(result["loss"])
    if result.get("training"):
        lines += _training_lines(result["training"])
    if result.get("nccl"):
        lines.append(_nccl_line(result["nccl"]))
    lines += [f"goal: {goal}" for goal in result.get("goals", [])]
    return "\n".join(lines)


def goals(result: dict[str, Any]) -> list[str]:
    """The goals measured, each with its figure and whether it was met: at least
    ``VIEWS_GOAL`` views/s on an H100-class GPU (``VIEWS_FLOOR`` at the least), and an epoch
    of training steps in under ``EPOCH_GOAL_S`` seconds there (the fastest setting)."""
    found = []
    v = result.get("views")
    if v:
        rate = v["views_per_s"]
        verdict = "met" if rate >= VIEWS_GOAL else "floor met" if rate >= VIEWS_FLOOR else "NOT met"
        found.append(
            f"views >= {VIEWS_GOAL:,}/s on an H100-class GPU (>= {VIEWS_FLOOR:,} at the least): "
            f"{rate:,.0f}, {verdict}"
        )
    timed = [r for r in result.get("training", []) if "train_seconds" in r]
    if timed:
        best = min(timed, key=lambda r: r["train_seconds"])
        verdict = "met" if best["train_seconds"] < EPOCH_GOAL_S else "NOT met"
        found.append(
            f"epoch < {EPOCH_GOAL_S:.0f} s on an H100-class GPU: {best['train_seconds']:.2f} s "
            f"({best['name']}), {verdict}"
        )
    return found


def failures(result: dict[str, Any]) -> list[str]:
    """What went wrong: errors, non-finite losses, host syncs."""
    found = []
    for r in result.get("training", []):
        if "error" in r:
            found.append(f"training '{r['name']}': {r['error']}")
        elif "losses_finite" in r and not r["losses_finite"]:
            found.append(f"training '{r['name']}': a loss is not finite")
    syncs = [result.get("views", {}).get("host_syncs")]
    syncs += [r["host_syncs"] for r in result.get("loss", [])]
    found += [f"host sync: {s}" for s in syncs if s not in (None, "none")]
    if "error" in result.get("nccl", {}):
        found.append(f"nccl: {result['nccl']['error']}")
    return found


def measure(
    device: torch.device | str,
    *,
    data_root: str | None = None,
    budget: float = 270.0,
    skip_training: bool = False,
    views: tuple[int, int] = (512, 50_000),
    loss_sizes: Sequence[int] = LOSS_SIZES,
    training: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Every measurement on ``device``; ``views`` is (batch, epoch images), ``training``
    extra keywords of ``measure_training`` (the CPU test makes them all tiny)."""
    started = time.perf_counter()
    device = torch.device(device)
    result: dict[str, Any] = {"machine": machine_info(device)}
    print(format_report(result), flush=True)
    result["views"] = measure_views(device, *views)
    result["loss"] = measure_loss(device, loss_sizes)
    try:
        result["nccl"] = measure_nccl(device)
    except Exception as error:  # reported, and counted as a failure
        result["nccl"] = {"backend": "nccl", "error": f"{type(error).__name__}: {error}"}
    if skip_training:
        result["training_note"] = "skipped (--skip-training)"
    else:
        deadline = started + budget - 45  # a row takes well under 45 s after the first
        result["training"] = measure_training(
            device, data_root, deadline=deadline, **(training or {})
        )
    result["goals"] = goals(result)
    result["failures"] = failures(result)
    result["seconds"] = time.perf_counter() - started
    return result


def main(argv: list[str] | None = None) -> int:
    parser = checks.ArgumentParser(
        prog="python -m dyntemp bench gpu",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"({DEFAULT_OUT})")
    parser.add_argument("--data-root", default=None, help="CIFAR-10 (default: DYNTEMP_DATA)")
    parser.add_argument("--budget", type=float, default=270.0, help="seconds (270)")
    parser.add_argument("--skip-training", action="store_true", help="views, loss, NCCL only")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench gpu: no CUDA device here, nothing measured (it needs a GPU)")
        return 0
    device = torch.device("cuda", torch.cuda.current_device())
    result = measure(
        device,
        data_root=args.data_root or os.environ.get("DYNTEMP_DATA"),
        budget=args.budget,
        skip_training=args.skip_training,
    )
    report(result, args.out)
    return 1 if result["failures"] else 0


def report(result: dict[str, Any], out: str | Path | None) -> None:
    """Print the table, what was skipped and what failed; write ``out/results.json``."""
    print(format_report(result))
    if "training_note" in result:
        print(f"training: {result['training_note']}")
    for failure in result["failures"]:
        print(f"FAILED {failure}")
    write_results(out, "gpu", provenance(result["machine"]["device"]), **result)
