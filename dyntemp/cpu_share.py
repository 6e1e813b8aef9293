"""Training that keeps its speed when other processes share the CPU.

torch's intra-op threads spin-wait for each other at every operation. On a 2-core machine
where another busy process holds a core, two threads of a training step run at about 13 % of
their quiet speed, one thread at about 83 % (``python -m dyntemp bench train --under-load``).
``ThreadGuard`` watches how much CPU time the rest of the machine takes between two checks
(all cores' busy time, from ``/proc/stat``, less this process's own) and trains with one
thread while others keep at least half a core busy, with all its threads again once they
stop. Where ``/proc/stat`` does not exist (macOS, Windows) it does nothing.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import torch

__all__ = ["ThreadGuard", "busy_cpu_seconds"]

#: Cores' worth of other processes' CPU use from which training drops to one thread.
BUSY_CORES = 0.5
#: Seconds between two measurements (shorter windows are noise).
MIN_WINDOW_S = 2.0

_STAT = Path("/proc/stat")


def busy_cpu_seconds(stat: Path = _STAT) -> float | None:
    """CPU seconds all cores have spent busy since boot, or None where the system does not
    say (no ``/proc/stat``)."""
    try:
        first = stat.read_text().split("\n", 1)[0].split()
    except OSError:
        return None
    if not first or first[0] != "cpu" or len(first) < 8:
        return None
    user, nice, system, _idle, _iowait, irq, softirq = (int(x) for x in first[1:8])
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


class ThreadGuard:
    """Chooses torch's thread count from what other processes take of the CPU.

    ``check()`` is cheap: call it every few steps; it measures once ``MIN_WINDOW_S`` have
    passed and returns the threads in use. ``threads`` is the most it uses (default: torch's
    count when the guard is made, so ``OMP_NUM_THREADS`` still rules); ``restore()`` puts
    that count back."""

    def __init__(
        self,
        threads: int | None = None,
        *,
        busy_cores: float = BUSY_CORES,
        machine_busy: Callable[[], float | None] = busy_cpu_seconds,
        own_busy: Callable[[], float] = time.process_time,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.threads = threads or torch.get_num_threads()
        self.busy_cores = busy_cores
        self._machine_busy, self._own_busy, self._clock = machine_busy, own_busy, clock
        self.active = self.threads > 1 and machine_busy() is not None
        self.others_cores = 0.0  # what the last window measured
        self._start = self._reading()

    def _reading(self) -> tuple[float, float, float]:
        return self._clock(), self._machine_busy() or 0.0, self._own_busy()

    def check(self) -> int:
        """Measure (when a window has passed), set torch's threads, return them."""
        if not self.active:
            return torch.get_num_threads()
        now = self._reading()
        elapsed = now[0] - self._start[0]
        if elapsed < MIN_WINDOW_S:
            return torch.get_num_threads()
        others = (now[1] - self._start[1]) - (now[2] - self._start[2])
        self.others_cores = max(0.0, others / elapsed)
        self._start = now
        return self.apply()

    def apply(self) -> int:
        """Set torch's threads from the last measurement; return them."""
        wanted = 1 if self.others_cores >= self.busy_cores else self.threads
        if wanted != torch.get_num_threads():
            torch.set_num_threads(wanted)
        return wanted

    def restore(self) -> None:
        """torch's thread count as it was when the guard was made."""
        torch.set_num_threads(self.threads)
