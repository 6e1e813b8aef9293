"""``python -m dyntemp bench train``: images per second of whole SimCLR training steps.

A step is everything between two optimiser updates: making both views of a batch, the
forward pass of both, the loss, the backward pass and the update. The ways below are
measured alternately in one run on the same network (``small``) and batch size (256):

* **dyntemp fp32**, **fp32 + channels_last**, **bf16** and **bf16 + channels_last**
  (``VARIANTS``, the candidates of ``--amp auto`` and ``--channels-last auto``): the
  trainer's own step (``dyntemp.step.train_step``) on the uint8 dataset in one tensor,
  ``ViewBatches`` drawing per-sample augmentation parameters and augmenting the whole batch
  at once on the device, and ``ntxent`` with DySTreSS (0.1, 0.2) and its exact backward;
  bf16 with autocast (the table says whether this CPU computes bf16 natively: elsewhere it
  is emulated, and slow);
* **reference**, the common way: torchvision's per-image PIL transforms in a ``DataLoader``
  with worker processes (2 by default), and lightly's ``NTXentLoss`` (temperature 0.2), or
  a plain autograd NT-Xent when lightly is not installed (``pip install lightly``).

Images per second counts images, each giving two views. The reference's workers run only
during its own rounds: each round starts them afresh and takes their first batches untimed.
The load average is printed: on a machine busy with other processes the threads of torch's
OpenMP pool wait for each other at every operation, which hurts the batched pipeline (many
short parallel operations) far more than single-threaded loader workers. ``--under-load``
measures the dyntemp rows again while a second torch process computes on every core, the
situation of a study sharing its machine, and a row of the trainer's answer to it: the same
bf16 steps with ``dyntemp.cpu_share.ThreadGuard``, which trains with one thread while other
processes keep a core busy (its first seconds under load, when it finds the load, are not
timed). ``OMP_WAIT_POLICY=PASSIVE`` in the environment (recorded with the results) changes
how the threads wait. ``--compile`` adds after each dyntemp row its twin with the model under
``torch.compile`` (the trainer's ``--compile``), which fuses the operations between the
convolutions: whether that pays is the processor's to say.

On a GPU it also reports the seconds of one CIFAR-10-sized epoch (50,000 images) of
ResNet-18 with dyntemp's step (bf16 or fp16 autocast, channels_last).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dyntemp import checks, data, models
from dyntemp.bench.common import per_image_pipeline, training_images, write_results
from dyntemp.config import TrainConfig
from dyntemp.cpu_share import ThreadGuard
from dyntemp.loss import reference_ntxent
from dyntemp.provenance import load_average, native_bf16_cpu, provenance
from dyntemp.timing import epoch_seconds, time_steps, trainer_steps


def _model(name: str, device: torch.device) -> models.SimCLRModel:
    torch.manual_seed(0)
    backbone = models.build(name)
    return models.SimCLRModel(backbone, models.Projector(backbone.feature_dim)).to(device)


def _sgd(model: torch.nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)


#: The dyntemp rows: (amp, channels_last) of the trainer, the candidates of ``--amp auto``.
VARIANTS = {
    "dyntemp fp32": ("off", "off"),
    "dyntemp fp32 + channels_last": ("off", "on"),
    "dyntemp bf16": ("bf16", "off"),
    "dyntemp bf16 + channels_last": ("bf16", "on"),
}
#: Appended to a row's name for its twin under ``torch.compile`` (``--compile``).
COMPILED = " + torch.compile"
#: The row whose thread guard is measured under load: the bf16 steps.
LOADED = "dyntemp bf16 + channels_last"


def matmul_gflops(dtype: torch.dtype, size: int = 2048, repeats: int = 5) -> float:
    """This machine's matrix-product throughput in ``dtype`` (GFLOP/s, the best of
    ``repeats`` products of two ``size``-square matrices): the peak its convolutions can
    approach, measured rather than read from a data sheet."""
    a = torch.randn(size, size).to(dtype)
    b = torch.randn(size, size).to(dtype)
    return 2 * size**3 / _best_seconds(lambda: a @ b, repeats) / 1e9


def convolution_gflops(
    dtype: torch.dtype, repeats: int = 5, *, images: int = 64, channels: int = 128
) -> float:
    """This machine's throughput (GFLOP/s, the best of ``repeats``) in one large 3x3
    convolution, ``channels`` to ``channels`` on ``images`` of 32x32, channels_last, in ``dtype``:
    oneDNN's convolution kernels, which the trainer's layers use, may outrun the BLAS behind
    the matrix product, and then the matrix product alone would understate the peak."""
    layout = torch.channels_last
    x = torch.randn(images, channels, 32, 32).to(dtype).contiguous(memory_format=layout)
    w = torch.randn(channels, channels, 3, 3).to(dtype).contiguous(memory_format=layout)
    flops = 2 * images * 32 * 32 * channels * channels * 9
    with torch.no_grad():
        seconds = _best_seconds(lambda: torch.nn.functional.conv2d(x, w, padding=1), repeats)
    return flops / seconds / 1e9


def _best_seconds(operation: Callable[[], object], repeats: int) -> float:
    """The fastest of ``repeats`` timed calls of ``operation``, after one untimed call (in
    which its kernels are chosen and its memory touched)."""
    operation()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        operation()
        best = min(best, time.perf_counter() - start)
    return best


def peak_gflops(dtype: torch.dtype) -> dict[str, float]:
    """The machine's peak in ``dtype`` as the larger of a matrix product's and a large
    convolution's measured throughput, with both (GFLOP/s)."""
    matmul, convolution = matmul_gflops(dtype), convolution_gflops(dtype)
    return {"peak": max(matmul, convolution), "matmul": matmul, "convolution": convolution}


def training_flops(model_name: str, batch_size: int = 64, image_size: int = 32) -> float:
    """FLOPs of one training image: both views through the network and projector, forward
    and backward (torch's FLOP counter, which counts the convolutions and matrix products;
    the loss, normalisation and element-wise work are left out, as in any FLOP count).

    >>> round(training_flops("small") / 1e6)
    117
    """
    from torch.utils.flop_counter import FlopCounterMode

    model = _model(model_name, torch.device("cpu"))
    views = torch.randn(2 * batch_size, 3, image_size, image_size)
    with FlopCounterMode(display=False) as counter:
        model(views).sum().backward()
    return counter.get_total_flops() / batch_size


def peak_and_fraction(cpu: dict) -> dict:
    """Each row's achieved GFLOP/s and its fraction of the machine's peak (``peak_gflops``) in
    the row's arithmetic (bf16 rows against the bf16 peak, the others against float32)."""
    rows = {}
    for name, rate in cpu["median_images_per_s"].items():
        achieved = rate * cpu["flops_per_image"] / 1e9
        peak = cpu["peak_gflops"]["bf16" if "bf16" in name else "fp32"]
        rows[name] = {"gflops": achieved, "fraction_of_peak": achieved / peak}
    return rows


def dyntemp_steps(
    images: torch.Tensor,
    batch_size: int,
    model_name: str,
    device: torch.device,
    amp: str = "auto",
    channels_last: str = "auto",
    compile: bool = False,
) -> Iterator[torch.Tensor]:
    """Endless steps of the trainer itself (``timing.trainer_steps``); each ``next`` runs one.
    ``compile``: the model under ``torch.compile``, as the trainer's ``--compile``."""
    config = TrainConfig(
        out="unused",
        model=model_name,
        batch_size=batch_size,
        epochs=1000,
        lr=0.05,
        momentum=0.9,
        amp=amp,
        channels_last=channels_last,
        compile=compile,
    )
    return trainer_steps(config, images, device)


class _PairDataset(torch.utils.data.Dataset):
    """Two independently augmented views of each image, one PIL image at a time."""

    def __init__(self, images: np.ndarray, transform) -> None:
        self.images, self.transform = images, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        from PIL import Image

        image = Image.fromarray(self.images[index])
        return self.transform(image), self.transform(image)


def reference_loss() -> tuple[Callable[[torch.Tensor, torch.Tensor], torch.Tensor], str]:
    try:
        from lightly.loss import NTXentLoss
    except ImportError:
        return (
            lambda z1, z2: reference_ntxent(z1, z2, 0.2),
            "plain autograd NT-Xent (tau 0.2; lightly is not installed)",
        )
    return NTXentLoss(temperature=0.2), "lightly NTXentLoss (tau 0.2)"


def reference_rounds(
    images: torch.Tensor, batch_size: int, workers: int, model_name: str
) -> tuple[Callable[[int], float], str]:
    """A function timing ``count`` steps the common way, and the name of the loss used.

    Each round starts the loader's workers afresh, takes their first ``2 * workers``
    batches untimed (start-up and the prefetch queue), times ``count`` steps, and stops
    the workers, so they never compete with the other side's timed steps.
    """
    transform = per_image_pipeline(images.shape[-1], *data.dataset_stats("cifar10"))
    dataset = _PairDataset(images.permute(0, 2, 3, 1).contiguous().numpy(), transform)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=workers,
        prefetch_factor=2 if workers > 0 else None,
    )
    model = _model(model_name, torch.device("cpu"))
    optimizer = _sgd(model)
    loss_fn, loss_name = reference_loss()

    def step(view1: torch.Tensor, view2: torch.Tensor) -> None:
        z1, z2 = model(torch.cat([view1, view2])).chunk(2)
        loss = loss_fn(z1, z2)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def timed_round(count: int) -> float:
        batches = _forever(loader)
        for _ in range(2 * workers):
            next(batches)
        start = time.perf_counter()
        for _ in range(count):
            step(*next(batches))
        seconds = time.perf_counter() - start
        batches.close()  # the workers stop
        return seconds

    return timed_round, loss_name


#: The row of the trainer's own policy under load: bf16 steps with its thread guard.
GUARDED = "dyntemp bf16, thread guard"


def _guarded(steps: Iterator[None], guard: ThreadGuard) -> Iterator[None]:
    """The steps, with the guard checking the machine before each, as the trainer does."""
    while True:
        guard.check()
        yield next(steps)


def _forever(loader) -> Iterator:
    """The loader's batches, epoch after epoch."""
    while True:
        yield from loader


def compare_on_cpu(args: argparse.Namespace) -> dict:
    """Rounds of each dyntemp variant and of the reference, alternately; images/s of each."""
    device = torch.device("cpu")
    images, source = training_images(args.data_root, args.images)
    ours = {}
    for name, (amp, layout) in VARIANTS.items():
        ours[name] = dyntemp_steps(images, args.batch_size, args.model, device, amp, layout)
        if args.compile:
            ours[name + COMPILED] = dyntemp_steps(
                images, args.batch_size, args.model, device, amp, layout, compile=True
            )
    theirs, loss_name = reference_rounds(images, args.batch_size, args.workers, args.model)
    for steps in ours.values():
        time_steps(steps, 3, device)  # warm-up: first calls (and torch.compile's compiling)
    theirs(3)
    rates: dict[str, list[float]] = {name: [] for name in [*ours, "reference"]}
    for round_index in range(args.rounds):
        for name, steps in ours.items():
            seconds = time_steps(steps, args.steps, device)
            rates[name].append(args.steps * args.batch_size / seconds)
        rates["reference"].append(args.steps * args.batch_size / theirs(args.steps))
        said = ", ".join(f"{name} {values[-1]:.0f}" for name, values in rates.items())
        print(f"round {round_index + 1} (images/s): {said}", flush=True)
    loaded: dict[str, list[float]] = {}
    if args.under_load:
        guard = ThreadGuard()
        rows = {**ours, GUARDED: _guarded(ours[LOADED], guard)}
        with _competing_process():
            time_steps(rows[GUARDED], args.steps, device)  # untimed: the guard finds the load
            for round_index in range(args.rounds):
                for name, steps in rows.items():
                    if name == GUARDED:
                        guard.apply()  # its choice for the load it measured
                    else:
                        torch.set_num_threads(guard.threads)  # the threads it started with
                    seconds = time_steps(steps, args.steps, device)
                    loaded.setdefault(name, []).append(args.steps * args.batch_size / seconds)
                said = ", ".join(f"{name} {values[-1]:.0f}" for name, values in loaded.items())
                print(f"under load, round {round_index + 1} (images/s): {said}", flush=True)
        guard.restore()
    median = {name: statistics.median(values) for name, values in rates.items()}
    measured = {"fp32": peak_gflops(torch.float32), "bf16": peak_gflops(torch.bfloat16)}
    peak = {name: values["peak"] for name, values in measured.items()}
    for name, values in measured.items():
        print(f"{name} peak {values['peak']:.0f} GFLOP/s (matrix product "
              f"{values['matmul']:.0f}, 3x3 convolution {values['convolution']:.0f})")  # fmt: skip
    return {
        "peak_gflops": peak,
        "peak_measurements": measured,
        "flops_per_image": training_flops(args.model, image_size=images.shape[-1]),
        "model": args.model,
        "batch_size": args.batch_size,
        "images": source,
        "reference": f"torchvision PIL transforms, DataLoader with {args.workers} workers, "
        f"{loss_name}",
        "torch_threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "(default)"),
        "native_bf16": native_bf16_cpu(),
        "images_per_s": rates,
        "median_images_per_s": median,
        "speedup": {name: median[name] / median["reference"] for name in ours},
        "under_load_images_per_s": loaded,
        "median_under_load_images_per_s": {
            name: statistics.median(values) for name, values in loaded.items()
        },
    }


_BUSY_LOOP = (
    "import torch, sys\na = torch.randn(256, 256)\nwhile True:\n    a = torch.tanh(a @ a.T / 256)\n"
)


@contextlib.contextmanager
def _competing_process() -> Iterator[None]:
    """A second torch process computing on every core for as long as the block runs."""
    process = subprocess.Popen([sys.executable, "-c", _BUSY_LOOP])
    try:
        time.sleep(2.0)  # its start-up (imports) is not load yet
        yield
    finally:
        process.kill()
        process.wait()


def cuda_epoch(args: argparse.Namespace, device: torch.device) -> dict:
    """Seconds of one CIFAR-10-sized epoch (50,000 images) of ResNet-18, the trainer's step
    (amp auto: bf16, or fp16 with its GradScaler; channels_last; cuDNN autotuning), timed
    by ``timing.epoch_seconds`` after 20 untimed steps."""
    images, source = training_images(args.data_root, 50_000)
    images = images.to(device)
    results = {"images": source, "model": "resnet18"}
    for batch_size in args.gpu_batch_sizes:
        config = TrainConfig(out="unused", model="resnet18", batch_size=batch_size, epochs=1000)
        epoch = epoch_seconds(config, images, device, warmup=20)
        results[f"epoch_seconds_batch_{batch_size}"] = epoch["seconds"]
        print(
            f"ResNet-18, batch {batch_size}: {epoch['seconds']:.2f} s per epoch of "
            f"{epoch['steps'] * batch_size} images ({epoch['images_per_s']:.0f} images/s)"
        )
    return results


#: Where a step's time goes outside the views: torch operators by what they do (first match
#: wins). The views (``ViewBatches``: crops, colour, normalisation) are one category of their
#: own, everything they call, so that their element-wise operators are not counted as others.
PROFILE_CATEGORIES = {
    "convolution, backward": ("convolution_backward",),
    "convolution, forward": ("convolution", "mkldnn_convolution"),
    "batch norm, backward": ("batch_norm_backward",),
    "batch norm, forward": ("batch_norm",),
    "ReLU": ("threshold", "relu", "clamp_min"),
    "pooling": ("pool",),
    "linear layers": ("addmm", "aten::mm", "aten::bmm"),
    "optimiser": ("_foreach", "sgd", "Optimizer"),
    "copies and conversions": ("copy_", "_to_copy", "contiguous", "clone", "fill_", "zero_"),
}
VIEWS_CATEGORY = "views (all they call)"
#: The phases' own time between their operators: the trainer's Python.
PYTHON_CATEGORY = "Python between operators"


def profile_steps(steps: Iterator[torch.Tensor], count: int) -> dict[str, dict[str, float]]:
    """Milliseconds per step from torch's profiler over ``count`` of the trainer's steps: by
    phase (``step.PHASES``: the views, forward, loss, backward, optimiser; each with all it
    calls) and by operator: each operator's own time counted once, in the views' category
    when the views called it, else in its kind's (``PROFILE_CATEGORIES``, the rest "other");
    the phases' own time between operators is the views' or ``PYTHON_CATEGORY``."""
    from torch.profiler import ProfilerActivity, profile

    from dyntemp.step import PHASES

    next(steps)  # first calls out of the profile
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        for _ in range(count):
            next(steps)
    labels = {label: phase for phase, label in PHASES.items()}
    phases = {phase: 0.0 for phase in PHASES}
    operators: dict[str, float] = {
        name: 0.0 for name in [VIEWS_CATEGORY, *PROFILE_CATEGORIES, PYTHON_CATEGORY, "other"]
    }
    for event in profiler.events():
        if event.name in labels:  # a phase: its whole time, and its own (Python's) time
            phases[labels[event.name]] += event.cpu_time_total / 1000 / count
            own = VIEWS_CATEGORY if labels[event.name] == "views" else PYTHON_CATEGORY
            operators[own] += event.self_cpu_time_total / 1000 / count
            continue
        if _phase_of(event, labels) == "views":
            category = VIEWS_CATEGORY
        else:
            category = next(
                (c for c, keys in PROFILE_CATEGORIES.items() if any(k in event.name for k in keys)),
                "other",
            )
        operators[category] += event.self_cpu_time_total / 1000 / count
    return {"phases": phases, "operators": operators}


def _phase_of(event: Any, labels: dict[str, str]) -> str | None:
    """The trainer's phase (``step.PHASES``) that ``event`` ran in, from its parents."""
    parent = event.cpu_parent
    while parent is not None:
        if parent.name in labels:
            return labels[parent.name]
        parent = parent.cpu_parent
    return None


def format_profile(profile: dict[str, dict[str, float]], title: str) -> str:
    total = sum(profile["operators"].values())
    lines = [f"{title}: {total:.1f} ms a step"]
    for part in ("phases", "operators"):
        lines.append(f"  by {part[:-1]}:")
        for name, ms in sorted(profile[part].items(), key=lambda item: -item[1]):
            lines.append(f"    {name:<26}{ms:>8.1f} ms{ms / total:>7.0%}")
    return "\n".join(lines)


def format_table(cpu: dict) -> str:
    """The CPU rows: median images/s quiet (and under load), the ratio to the reference, and
    the GFLOP/s achieved with its fraction of the machine's peak (matrix product or convolution)."""
    bf16 = "native" if cpu["native_bf16"] else "emulated: this CPU has no AVX512-BF16 or AMX"
    quiet, loaded = cpu["median_images_per_s"], cpu["median_under_load_images_per_s"]
    compute = peak_and_fraction(cpu)
    width = max(len(name) + 2 for name in [*quiet, *loaded])  # every row's name fits
    lines = [
        f"{cpu['model']}, batch {cpu['batch_size']}, {cpu['torch_threads']} threads, "
        f"OMP_WAIT_POLICY {cpu['omp_wait_policy']}, bf16 {bf16}",
        f"peak (the faster of a matrix product and a convolution): fp32 "
        f"{cpu['peak_gflops']['fp32']:.0f}, bf16 "
        f"{cpu['peak_gflops']['bf16']:.0f} GFLOP/s; a training image is "
        f"{cpu['flops_per_image'] / 1e6:.0f} MFLOP",
        f"{'':<{width}}{'images/s':>10}{'x reference':>13}{'GFLOP/s':>9}{'of peak':>9}"
        f"{'under load':>12}",
    ]
    for name, rate in quiet.items():
        ratio = f"{cpu['speedup'][name]:.2f}x" if name in cpu["speedup"] else ""
        load = f"{loaded[name]:.0f}" if name in loaded else ""
        flops, share = compute[name]["gflops"], compute[name]["fraction_of_peak"]
        lines.append(f"{name:<{width}}{rate:>10.0f}{ratio:>13}{flops:>9.0f}{share:>9.0%}{load:>12}")
    for name, rate in loaded.items():
        if name not in quiet:  # measured under load only
            lines.append(f"{name:<{width}}{'':>10}{'':>13}{'':>9}{'':>9}{rate:>12.0f}")
    lines.append(f"reference: {cpu['reference']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = checks.ArgumentParser(prog="python -m dyntemp bench train", description=__doc__)
    parser.add_argument("--model", default="small", choices=models.MODELS)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=8, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=4, help="rounds of each, alternately")
    parser.add_argument("--workers", type=int, default=2, help="the reference's loader workers")
    parser.add_argument("--images", type=int, default=10_000, help="dataset size for the CPU")
    parser.add_argument("--data-root", default=None, help="real CIFAR-10 (default: random)")
    parser.add_argument("--gpu-batch-sizes", type=int, nargs="+", default=[128, 512])
    parser.add_argument("--no-gpu", action="store_true", help="skip the GPU epoch timing")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    parser.add_argument(
        "--under-load", action="store_true", help="also time the dyntemp rows beside a busy process"
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="instead of timing, profile the trainer's step under each arithmetic by category",
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="also time each dyntemp row with the model under torch.compile (the trainer's "
        "--compile; needs a C++ compiler on the CPU)",
    )
    parser.add_argument("--out", type=Path, help="write OUT/results.json with the provenance")
    args = parser.parse_args(argv)
    if args.compile and args.profile:
        raise ValueError("--profile breaks eager steps down by operator; drop --compile")
    for name in ("batch_size", "steps", "rounds", "images"):
        if getattr(args, name) <= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be positive")
    if min(args.gpu_batch_sizes) <= 0:
        raise ValueError("--gpu-batch-sizes must be positive")
    if args.batch_size > args.images:
        raise ValueError(f"--batch-size {args.batch_size} exceeds --images {args.images}")
    if args.threads is not None:
        if args.threads <= 0:
            raise ValueError("--threads must be positive")
        torch.set_num_threads(args.threads)
    info = provenance(torch.device("cpu"))
    info["load_average"] = load_average()
    loads = " ".join(f"{x:.1f}" for x in info["load_average"] or ()) or "unknown"
    kind = info["machine"].get("cpu_kind") or "kind unknown"
    print(
        f"machine: {info['machine']['device']} ({kind}), {info['machine']['cpu_cores']} cores, "
        f"torch {info['torch']}, {torch.get_num_threads()} threads, load average {loads}"
    )
    if args.profile:
        images, _ = training_images(args.data_root, args.images)
        profiles = {}
        for name, (amp, layout) in VARIANTS.items():
            steps = dyntemp_steps(images, args.batch_size, args.model, torch.device("cpu"), amp,
                                  layout)  # fmt: skip
            profiles[name] = profile_steps(steps, args.steps)
            print(format_profile(profiles[name], name))
        settings = {"model": args.model, "batch_size": args.batch_size, "steps": args.steps}
        write_results(args.out, "train-profile", info, settings=settings, profiles=profiles)
        return 0
    cpu = compare_on_cpu(args)
    print(format_table(cpu))
    sections: dict = {"cpu": cpu}
    if torch.cuda.is_available() and not args.no_gpu:
        device = torch.device("cuda")
        sections["gpu"] = cuda_epoch(args, device)
        sections["gpu_provenance"] = provenance(device)
    write_results(args.out, "train", info, **sections)
    return 0
