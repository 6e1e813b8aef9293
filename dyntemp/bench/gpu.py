"""``python -m dyntemp bench gpu``: the GPU path, measured in one command.

Meant to take at most about five minutes on one GPU. It prints a short table and writes
``results/bench-gpu/results.json`` with the provenance. It measures:

* **views**: ``SimCLRAugment`` views per second at 32x32, in batches of 512, and for one
  whole epoch of two views of 50,000 images through ``ViewBatches`` (goal >= 1,000,000
  views/s on an H100-class GPU, >= 200,000 at the least), and whether a step makes the host
  wait for the GPU (CUDA's sync debug mode);
* **loss**: ``ntxent`` forward+backward at 2N = 1024, 4096, 16384 views of D = 128, with
  DySTreSS (0.1, 0.2) and a fixed tau = 0.2: median time and peak memory
  (``torch.cuda.max_memory_allocated`` above what was allocated before), beside the plain
  autograd ``reference_ntxent`` and lightly's ``NTXentLoss`` when it is installed;
* **training**: ResNet-18 SimCLR on the real CIFAR-10 (``DYNTEMP_DATA``) with the real
  trainer, two epochs per setting: amp auto (bf16 on compute capability >= 8, else fp16),
  fp16 with the GradScaler and DySTreSS down to tau = 0.05, channels_last off, and
  ``torch.compile``. The second epoch is the one timed (the first includes cuDNN's
  autotuning and compilation): its training seconds (images / images_per_s, without the
  final kNN) and images/s, and whether every epoch's loss is finite (goal < 2 s per epoch
  on an H100-class GPU);
* **NCCL**: a one-process ``nccl`` group and a few ``ntxent(..., gather=True)`` steps,
  which must equal the loss and gradients without gathering;
* the machine: GPU name, compute capability, memory, torch, CUDA and cuDNN versions.

Without CUDA it says so in one line and exits 0. The measurement functions take a device,
so a test runs them on the CPU at tiny sizes.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import socket
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from dyntemp.augment import SimCLRAugment, ViewBatches
from dyntemp.bench.common import host_syncs, sync, write_results
from dyntemp.loss import ntxent, reference_ntxent
from dyntemp.provenance import provenance
from dyntemp.temperature import DySTreSS

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


def _images(count: int, size: int = 32) -> tuple[torch.Tensor, str]:
    from dyntemp.bench.augment import test_images

    return test_images(count, size)


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
    images, source = _images(max(epoch_images, 8 * batch), size)
    images = images.to(device)
    augment = SimCLRAugment(size=size)
    generator = torch.Generator(device=device).manual_seed(0)
    augment(images[:batch], generator)  # first calls: kernels, the normalisation constants

    def batches() -> float:
        sync(device)
        start = time.perf_counter()
        for i in range(8):
            augment(images[i * batch : (i + 1) * batch], generator)
        sync(device)
        return 8 * batch / (time.perf_counter() - start)

    rates = [batches() for _ in range(rounds)]
    epoch = ViewBatches(images[:epoch_images], batch, augment, seed=0, epoch=0)
    sync(device)
    start = time.perf_counter()
    for _ in epoch:
        pass
    sync(device)
    seconds = time.perf_counter() - start
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
    from dyntemp.bench.loss import peak_memory, time_alternately

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


def _epochs(folder: Path) -> list[dict[str, Any]]:
    from dyntemp.runs import METRICS_FILE

    text = (folder / METRICS_FILE).read_text()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def measure_training(
    device: torch.device | str,
    data_root: str | None,
    rows: Sequence[TrainingRow] = TRAINING_ROWS,
    *,
    model: str = "resnet18",
    epochs: int = 2,
    batch_size: int = 512,
    subset: int | None = None,
    test_subset: int | None = 1000,
    deadline: float = math.inf,
) -> list[dict[str, Any]]:
    """Train each row for ``epochs`` with ``dyntemp.train.train`` in a temporary folder.

    Per row: every epoch's seconds, images/s and loss from the run's ``metrics.jsonl``; the
    last epoch is the timed one (``train_seconds`` = its images / its images/s, without
    the kNN evaluation at the end). A row that fails records its error and the others go
    on; rows that would start after ``deadline`` (``time.perf_counter()``) are skipped.
    """
    from dyntemp.train import TrainConfig, train

    device = torch.device(device)
    results = []
    with tempfile.TemporaryDirectory(prefix="dyntemp-bench-gpu-") as scratch:
        for index, row in enumerate(rows):
            entry: dict[str, Any] = {"name": row.name, **row.fields}
            if time.perf_counter() > deadline:
                entry["skipped"] = "the time budget was spent"
                results.append(entry)
                continue
            folder = Path(scratch) / f"row-{index}"
            config = TrainConfig(
                out=str(folder),
                model=model,
                epochs=epochs,
                batch_size=batch_size,
                eval_every=0,
                progress=False,
                device=str(device),
                data_root=data_root,
                subset=subset,
                test_subset=test_subset,
                **row.fields,
            )
            started = time.perf_counter()
            try:
                outcome = train(config)
                history = _epochs(folder)
            except Exception as error:  # a failing setting is a result too
                entry["error"] = f"{type(error).__name__}: {error}"
                results.append(entry)
                continue
            last = history[-1]
            images = last["step"] // last["epoch"] * batch_size  # one epoch's images
            entry.update(
                amp_dtype=outcome["provenance"]["amp"],
                epochs=[
                    {k: e.get(k) for k in ("epoch", "seconds", "images_per_s", "loss")}
                    for e in history
                ],
                train_seconds=images / last["images_per_s"],
                images_per_s=last["images_per_s"],
                losses_finite=all(math.isfinite(e["loss"]) for e in history),
                knn_top1=outcome.get("knn_top1"),
                wall_seconds=time.perf_counter() - started,
            )
            results.append(entry)
    return results


# ----------------------------------------------------------------------------- NCCL


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _one_process_group(backend: str, device: torch.device) -> Iterator[None]:
    """A process group of this process alone, left and its environment restored after."""
    import torch.distributed as dist

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
    """A few ``ntxent(..., gather=True)`` steps in a one-process group (``nccl`` on a GPU,
    ``gloo`` on the CPU): the loss and gradients must be those without gathering."""
    device = torch.device(device)
    backend = backend or ("nccl" if device.type == "cuda" else "gloo")
    rule = DySTreSS(0.1, 0.2)
    g = torch.Generator().manual_seed(1)
    z1 = torch.randn(batch, dim, generator=g).to(device).requires_grad_()
    z2 = torch.randn(batch, dim, generator=g).to(device).requires_grad_()
    alone = ntxent(z1, z2, rule)
    expected = torch.autograd.grad(alone, (z1, z2))
    difference = 0.0
    times = []
    with _one_process_group(backend, device):
        for _ in range(steps):
            sync(device)
            start = time.perf_counter()
            loss = ntxent(z1, z2, rule, gather=True)
            grads = torch.autograd.grad(loss, (z1, z2))
            sync(device)
            times.append(time.perf_counter() - start)
            difference = max(
                [difference, abs(float(loss.detach()) - float(alone.detach()))]
                + [float((a - b).abs().max()) for a, b in zip(grads, expected, strict=True)]
            )
    return {
        "backend": backend,
        "steps": steps,
        "views": 2 * batch,
        "ms_per_step": 1000 * statistics.median(times),
        "max_difference": difference,
        "matches_one_process": difference <= 1e-5,
    }


# ----------------------------------------------------------------------------- the report


def _number(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def format_report(result: dict[str, Any]) -> str:
    lines = []
    m = result["machine"]
    lines.append(
        f"{m.get('gpu', m['device'])}, capability {m.get('capability', '-')}, "
        f"{m.get('memory_gib', '-')} GiB; torch {m['torch']}, CUDA {m['cuda']}, "
        f"cuDNN {m['cudnn']}"
    )
    v = result.get("views")
    if v:
        lines.append(
            f"views {v['size']}x{v['size']} ({v['images']}): {v['views_per_s']:,.0f}/s in "
            f"batches of {v['batch']}; {v['epoch_views_per_s']:,.0f}/s over an epoch of "
            f"{v['epoch_views']:,} views ({v['epoch_seconds']:.2f} s); host syncs: "
            f"{v['host_syncs']}"
        )
    if result.get("loss"):
        lines.append(f"{'2N':>6}  {'loss':<36} {'fwd+bwd ms':>10} {'peak MiB':>9}  host syncs")
        for r in result["loss"]:
            syncs = r["host_syncs"] or "-"
            lines.append(
                f"{r['views']:>6}  {r['loss']:<36} {r['ms']:>10.2f} "
                f"{_number(r['peak_mib'], '.1f'):>9}  {syncs[:40]}"
            )
    if result.get("training"):
        lines.append(f"{'training':<40} {'amp':>8} {'s/epoch':>8} {'images/s':>9}  losses")
        for r in result["training"]:
            if "error" in r or "skipped" in r:
                lines.append(f"{r['name']:<40} {r.get('error') or r['skipped']}")
                continue
            lines.append(
                f"{r['name']:<40} {r['amp_dtype']:>8} {r['train_seconds']:>8.2f} "
                f"{r['images_per_s']:>9,.0f}  {'finite' if r['losses_finite'] else 'NOT finite'}"
            )
    n = result.get("nccl")
    if n:
        if "error" in n:
            lines.append(f"{n.get('backend', 'nccl')}: {n['error']}")
        else:
            lines.append(
                f"{n['backend']}, one process, gather=True: {n['ms_per_step']:.2f} ms per step "
                f"of {n['views']} views; equal to no gathering: {n['matches_one_process']} "
                f"(max difference {n['max_difference']:.1e})"
            )
    for goal in result.get("goals", []):
        lines.append(f"goal: {goal}")
    return "\n".join(lines)


def goals(result: dict[str, Any]) -> list[str]:
    """The issue's goals, each with its figure and whether it was met."""
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
    """What went wrong: errors, non-finite losses, host syncs, a gather that differs."""
    found = []
    for r in result.get("training", []):
        if "error" in r:
            found.append(f"training '{r['name']}': {r['error']}")
        elif "losses_finite" in r and not r["losses_finite"]:
            found.append(f"training '{r['name']}': a loss is not finite")
    syncs = [result.get("views", {}).get("host_syncs")]
    syncs += [r["host_syncs"] for r in result.get("loss", [])]
    found += [f"host sync: {s}" for s in syncs if s not in (None, "none")]
    n = result.get("nccl", {})
    if "error" in n:
        found.append(f"nccl: {n['error']}")
    elif n and not n["matches_one_process"]:
        found.append("nccl: gather=True differs from one process")
    return found


def _has_cifar10(root: str | None) -> bool:
    return root is not None and any(
        (Path(root) / name).is_dir() for name in ("train", "cifar-10-batches-py")
    )


def run(
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
    elif not _has_cifar10(data_root):
        result["training_note"] = "skipped: no CIFAR-10 (set DYNTEMP_DATA or --data-root)"
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
    parser = argparse.ArgumentParser(
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
    result = run(
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
