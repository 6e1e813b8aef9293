"""``python -m dyntemp bench augment``: SimCLR views per second, batched against per image.

Side by side, measured alternately in one run, at 32x32 with batches of 512:

* dyntemp's ``SimCLRAugment`` on a uint8 batch, on the CPU with torch's threads (and on
  the GPU when there is one);
* torchvision's per-image PIL pipeline with the same settings, as the paper's code and
  lightly run it in DataLoader workers: ``Image.fromarray`` (what torchvision's CIFAR10
  dataset does), ``RandomResizedCrop(32, scale=(0.08, 1))``, ``RandomHorizontalFlip()``,
  ``RandomApply([ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8)``, ``RandomGrayscale(0.2)``,
  ``ToTensor()``, ``Normalize``, and stacking the batch. It is timed on one core and
  multiplied by the number of cores: the most a DataLoader with one worker per core could
  reach (workers add the transfer of each batch between processes), so the ratio leans
  the per-image pipeline's way.

Rates are medians over the rounds; the images are the first CIFAR-10 training images when
``load_dataset("cifar10")`` finds them (``DYNTEMP_DATA``), else random smooth images. The
load average is printed: on a machine busy with other processes, the threads of torch's
OpenMP pool wait for each other at every operation and the batched figure collapses;
``--threads 1`` (or ``OMP_WAIT_POLICY=PASSIVE`` in the environment) shows it without that.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from dyntemp import checks
from dyntemp.augment import SimCLRAugment
from dyntemp.bench.common import host_syncs, per_image_pipeline, write_results
from dyntemp.data import load_dataset
from dyntemp.provenance import load_average, provenance, usable_cores
from dyntemp.timing import sync

CPU_GOAL = 4.0  # x the per-image pipeline over all cores
GPU_GOAL = 200_000  # views/s at 32x32


def test_images(n: int, size: int) -> tuple[torch.Tensor, str]:
    """The first n CIFAR-10 training images, or random smooth ones where there are none."""
    if size == 32:
        try:
            dataset = load_dataset("cifar10", subset=n if n >= 10 else None)
            return dataset.images[:n].contiguous(), "CIFAR-10 training images"
        except (FileNotFoundError, ValueError):
            pass
    g = torch.Generator().manual_seed(0)
    base = torch.rand(n, 3, 4, 4, generator=g)
    smooth = torch.nn.functional.interpolate(base, size=(size, size), mode="bilinear")
    images = (smooth.clamp(0, 1) * 255).round().to(torch.uint8)
    return images, "random smooth images (no CIFAR-10 found)"


def time_batched(aug: SimCLRAugment, images: torch.Tensor, batch: int, seed: int) -> float:
    """Views per second of one pass over ``images`` in batches."""
    device = images.device
    g = torch.Generator(device=device).manual_seed(seed)
    sync(device)
    start = time.perf_counter()
    for i in range(0, len(images) - batch + 1, batch):
        aug(images[i : i + batch], g)
    sync(device)
    return (len(images) // batch) * batch / (time.perf_counter() - start)


def time_per_image(pipeline: Callable, arrays: np.ndarray) -> float:
    """Views per second of the per-image pipeline on one core (one batch, stacked)."""
    from PIL import Image

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one worker process = one core
    try:
        start = time.perf_counter()
        torch.stack([pipeline(Image.fromarray(a)) for a in arrays])
        return len(arrays) / (time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)


def check_no_sync(aug: SimCLRAugment, images: torch.Tensor) -> str:
    """Whether a GPU call synchronises with the host (CUDA's sync debug mode)."""
    g = torch.Generator(device=images.device).manual_seed(0)
    return host_syncs(lambda: aug(images, g))


def measure(batch: int, size: int, rounds: int, batches: int) -> dict:
    """Views per second, batched against per image, the median of ``rounds`` alternating
    rounds over ``batches`` batches of ``batch`` images of ``size``; on a GPU also there."""
    cores = usable_cores()
    images, source = test_images(batch * batches, size)
    aug = SimCLRAugment(size=size)
    pipeline = per_image_pipeline(size)
    arrays = images[:batch].permute(0, 2, 3, 1).numpy()
    time_batched(aug, images, batch, seed=0)  # warm-up
    time_per_image(pipeline, arrays[:64])
    ours, theirs = [], []
    for r in range(rounds):  # alternately, so that both see the same machine load
        ours.append(time_batched(aug, images, batch, seed=r))
        theirs.append(time_per_image(pipeline, arrays) * cores)
    result = {
        "batch": batch,
        "size": size,
        "rounds": rounds,
        "images": source,
        "cores": cores,
        "torch_threads": torch.get_num_threads(),
        "load_average": (load_average() or (float("nan"),))[0],
        "cpu_views_per_s": statistics.median(ours),
        "per_image_views_per_s_all_cores": statistics.median(theirs),
        "per_image_views_per_s_one_core": statistics.median(theirs) / cores,
    }
    result["ratio"] = result["cpu_views_per_s"] / result["per_image_views_per_s_all_cores"]
    if torch.cuda.is_available():
        device = torch.device("cuda")
        on_gpu = images.to(device)
        time_batched(aug, on_gpu, batch, seed=0)  # warm-up
        gpu = [time_batched(aug, on_gpu, batch, seed=r) for r in range(rounds)]
        result["gpu"] = torch.cuda.get_device_name(device)
        result["gpu_views_per_s"] = statistics.median(gpu)
        whole = [time_batched(aug, on_gpu, len(on_gpu), seed=r) for r in range(rounds)]
        result["gpu_whole_batch"] = len(on_gpu)
        result["gpu_views_per_s_whole_batch"] = statistics.median(whole)
        result["gpu_host_syncs"] = check_no_sync(aug, on_gpu[:batch])
    return result


def _threads(n: int) -> str:
    return f"{n} thread" + ("s" if n != 1 else "")


def format_table(r: dict) -> str:
    rows = [
        (
            f"dyntemp, batches of {r['batch']}",
            f"CPU, {_threads(r['torch_threads'])}",
            r["cpu_views_per_s"],
            r["ratio"],
        ),
        (
            "torchvision per image (PIL)",
            f"CPU, 1 core x {r['cores']}",
            r["per_image_views_per_s_all_cores"],
            1.0,
        ),
    ]
    if "gpu_views_per_s" in r:
        per_image = r["per_image_views_per_s_all_cores"]
        rows[:0] = [
            (
                f"dyntemp, batches of {r['batch']}",
                r["gpu"],
                r["gpu_views_per_s"],
                r["gpu_views_per_s"] / per_image,
            ),
            (
                f"dyntemp, batches of {r['gpu_whole_batch']}",
                r["gpu"],
                r["gpu_views_per_s_whole_batch"],
                r["gpu_views_per_s_whole_batch"] / per_image,
            ),
        ]
    lines = [f"{'pipeline':<32} {'device':<28} {'views/s':>10} {'x per image':>11}"]
    for name, device, rate, ratio in rows:
        lines.append(f"{name:<32} {device[:28]:<28} {rate:>10,.0f} {ratio:>11.1f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = checks.ArgumentParser(
        prog="python -m dyntemp bench augment",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--batch", type=int, default=512, help="images per batch (512)")
    parser.add_argument("--size", type=int, default=32, help="image and view side (32)")
    parser.add_argument("--rounds", type=int, default=7, help="alternating timed rounds (7)")
    parser.add_argument("--batches", type=int, default=8, help="batched calls per round (8)")
    parser.add_argument("--threads", type=int, help="torch threads for the batched pipeline")
    parser.add_argument("--out", type=Path, help="write OUT/results.json with the provenance")
    args = parser.parse_args(argv)
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError("--threads must be positive")
        torch.set_num_threads(args.threads)
    if min(args.batch, args.size, args.rounds, args.batches) < 1:
        raise ValueError("--batch, --size, --rounds and --batches must be positive")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    info = provenance(device)
    print(
        f"machine: {info['machine']['cpu']}, {info['machine']['cpu_cores']} cores, "
        f"torch {info['torch']}, {_threads(torch.get_num_threads())}"
        + (f", {info['machine']['gpu']}" if "gpu" in info["machine"] else "")
    )
    result = measure(args.batch, args.size, args.rounds, args.batches)
    print(
        f"{args.size}x{args.size} views, batches of {args.batch}, {result['images']}, "
        f"median of {args.rounds} alternating rounds, load average {result['load_average']:.1f}"
    )
    print(format_table(result))
    met = result["ratio"] >= CPU_GOAL
    print(
        f"goal on the CPU: >= {CPU_GOAL:.0f}x the per-image pipeline over all cores: "
        f"{result['ratio']:.1f}x, {'met' if met else 'NOT met'}"
    )
    if "gpu_views_per_s" in result:
        gpu_met = result["gpu_views_per_s"] >= GPU_GOAL
        print(
            f"goal on the GPU: >= {GPU_GOAL:,} views/s: {result['gpu_views_per_s']:,.0f}, "
            f"{'met' if gpu_met else 'NOT met'}; host synchronisations: "
            f"{result['gpu_host_syncs']}"
        )
    write_results(args.out, "augment", info, result=result)
    return 0
