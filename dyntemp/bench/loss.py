"""``python -m dyntemp bench loss``: forward+backward time and peak memory of the loss.

Side by side, measured alternately in one run, for 2N views of dimension D:

* ``dyntemp`` ``ntxent`` with DySTreSS (0.1, 0.2), and with a fixed tau = 0.2;
* the same DySTreSS loss written as plain autograd, the style of the paper's code
  (similarity matrix, boolean-mask gather of the negatives, cross-entropy);
* lightly's ``NTXentLoss`` (fixed tau = 0.2), when lightly is installed
  (``pip install lightly``; it is only a point of comparison).

Peak memory is the extra memory one forward+backward needs: CUDA's allocator statistics on
a GPU; on a CPU the peak resident size (Linux' VmHWM, reset before each call, with large
allocations served by mmap so that freed memory leaves at once).
"""

from __future__ import annotations

import ctypes
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from dyntemp import checks
from dyntemp.bench.common import write_results
from dyntemp.distributed import choose_device
from dyntemp.formula import Formula
from dyntemp.loss import ntxent, reference_ntxent
from dyntemp.provenance import provenance
from dyntemp.temperature import DySTreSS
from dyntemp.timing import sync

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def candidates(tau: float = 0.2) -> dict[str, LossFn]:
    """The losses to compare, by name."""
    rule = DySTreSS(0.1, 0.2)
    # the same rule from one formula: what the hand-written DySTreSS buys in speed
    same = Formula("0.1 + 0.05*(1 - cos(pi*s))")
    losses: dict[str, LossFn] = {
        "dyntemp ntxent, DySTreSS(0.1, 0.2)": lambda a, b: ntxent(a, b, rule),
        "dyntemp ntxent, the DySTreSS formula": lambda a, b: ntxent(a, b, same),
        f"dyntemp ntxent, fixed {tau}": lambda a, b: ntxent(a, b, tau),
        "plain autograd, DySTreSS(0.1, 0.2)": lambda a, b: reference_ntxent(a, b, rule),
    }
    try:
        from lightly.loss import NTXentLoss
    except ImportError:
        print("lightly is not installed (pip install lightly): its loss is left out")
    else:
        losses[f"lightly NTXentLoss, fixed {tau}"] = NTXentLoss(temperature=tau)
    return losses


def _step(loss_fn: LossFn, z1: torch.Tensor, z2: torch.Tensor) -> None:
    loss_fn(z1, z2).backward()
    z1.grad = z2.grad = None


def time_alternately(
    losses: dict[str, LossFn], z1: torch.Tensor, z2: torch.Tensor, repeats: int
) -> dict[str, float]:
    """Median seconds of one forward+backward, the candidates taking turns."""
    samples: dict[str, list[float]] = {name: [] for name in losses}
    for _ in range(3):  # warm-up
        for fn in losses.values():
            _step(fn, z1, z2)
    for _ in range(repeats):
        for name, fn in losses.items():
            sync(z1.device)
            start = time.perf_counter()
            _step(fn, z1, z2)
            sync(z1.device)
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in samples.items()}


def _ratio(value: float | None) -> str:
    """``0.47x``, or ``n/a`` where a figure could not be measured (peak memory off Linux)."""
    return "n/a" if value is None else f"{value:.2f}x"


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise OSError(f"{field} not in /proc/self/status")


def use_mmap_for_large_allocations() -> bool:
    """Make glibc return freed large blocks at once, so the peak RSS is the true peak."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(-3, 64 * 1024))  # M_MMAP_THRESHOLD
    except OSError:
        return False


def peak_memory(fn: LossFn, z1: torch.Tensor, z2: torch.Tensor) -> float | None:
    """Extra bytes at the peak of one forward+backward, or None where it can't be read."""
    if z1.device.type == "cuda":
        torch.cuda.synchronize(z1.device)
        base = torch.cuda.memory_allocated(z1.device)
        torch.cuda.reset_peak_memory_stats(z1.device)
        _step(fn, z1, z2)
        torch.cuda.synchronize(z1.device)
        return float(torch.cuda.max_memory_allocated(z1.device) - base)
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand free heap memory back first
        base = _status_kib("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        _step(fn, z1, z2)
        return float(_status_kib("VmHWM") - base) * 1024
    except OSError:
        return None


def measure(sizes: list[int], dim: int, repeats: int, device: torch.device) -> list[dict]:
    """One row per loss and number of views in ``sizes``: forward+backward milliseconds
    (``repeats`` alternating calls) and peak memory, each also against lightly's."""
    losses = candidates()
    reference = next((name for name in losses if name.startswith("lightly")), None)
    rows = []
    for size in sizes:
        g = torch.Generator(device="cpu").manual_seed(size)
        z1 = torch.randn(size // 2, dim, generator=g).to(device).requires_grad_()
        z2 = torch.randn(size // 2, dim, generator=g).to(device).requires_grad_()
        times = time_alternately(losses, z1, z2, repeats)
        for name, seconds in times.items():
            rows.append({"views": size, "dim": dim, "loss": name, "ms": 1000 * seconds})
    mmap = use_mmap_for_large_allocations() if device.type == "cpu" else True
    for row in rows:
        g = torch.Generator(device="cpu").manual_seed(row["views"])
        z1 = torch.randn(row["views"] // 2, dim, generator=g).to(device).requires_grad_()
        z2 = torch.randn(row["views"] // 2, dim, generator=g).to(device).requires_grad_()
        _step(losses[row["loss"]], z1, z2)  # first call's one-off allocations
        peak = peak_memory(losses[row["loss"]], z1, z2) if mmap else None
        row["peak_mib"] = None if peak is None else peak / 2**20
    for row in rows:
        ref = [r for r in rows if r["views"] == row["views"] and r["loss"] == reference]
        row["time_vs_lightly"] = row["ms"] / ref[0]["ms"] if ref else None
        peak, ref_peak = row["peak_mib"], ref[0]["peak_mib"] if ref else None
        row["memory_vs_lightly"] = peak / ref_peak if peak is not None and ref_peak else None
    return rows


def format_table(rows: list[dict]) -> str:
    def num(x: float | None, fmt: str) -> str:
        return "n/a" if x is None else format(x, fmt)

    lines = [
        f"{'2N':>5}  {'loss':<38} {'fwd+bwd ms':>10} {'x lightly':>9} "
        f"{'peak MiB':>9} {'x lightly':>9}"
    ]
    for r in rows:
        lines.append(
            f"{r['views']:>5}  {r['loss']:<38} {r['ms']:>10.2f} "
            f"{num(r['time_vs_lightly'], '.2f'):>9} {num(r['peak_mib'], '.1f'):>9} "
            f"{num(r['memory_vs_lightly'], '.2f'):>9}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = checks.ArgumentParser(prog="python -m dyntemp bench loss", description=__doc__)
    parser.add_argument(
        "--sizes",
        type=int,
        nargs="+",
        default=[256, 1024, 4096],
        help="numbers of views 2N (default: 256 1024 4096)",
    )
    parser.add_argument("--dim", type=int, default=128, help="embedding dimension D")
    parser.add_argument("--repeats", type=int, default=20, help="timed calls per loss and size")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, help="write OUT/results.json with the provenance")
    args = parser.parse_args(argv)
    if any(size < 4 or size % 2 for size in args.sizes):
        raise ValueError("--sizes must be even numbers of views, at least 4")
    if args.dim < 1 or args.repeats < 1:
        raise ValueError("--dim and --repeats must be positive")
    device = choose_device(args.device)
    info = provenance(device)
    print(
        f"machine: {info['machine']['device']}, {info['machine']['cpu_cores']} cores, "
        f"torch {info['torch']}, {torch.get_num_threads()} threads"
    )
    rows = measure(args.sizes, args.dim, args.repeats, device)
    print(format_table(rows))
    goal = [r for r in rows if r["views"] == 1024 and r["loss"].startswith("dyntemp ntxent, DyS")]
    if goal and goal[0]["time_vs_lightly"] is not None:
        r = goal[0]
        met = r["time_vs_lightly"] <= 0.5 and (r["memory_vs_lightly"] or 0) <= 1.0
        print(
            f"goal at 2N = 1024 (time <= 0.5x lightly, memory <= 1x): "
            f"time {r['time_vs_lightly']:.2f}x, memory {_ratio(r['memory_vs_lightly'])} "
            f"-> {'met' if met else 'NOT met'}"
        )
    write_results(args.out, "loss", info, rows=rows)
    return 0
