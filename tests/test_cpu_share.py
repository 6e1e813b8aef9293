"""The thread guard: one thread while other processes keep the cores busy, all when quiet."""

from pathlib import Path

import pytest
import torch

from dyntemp import cpu_share
from dyntemp.cpu_share import ThreadGuard, busy_cpu_seconds


class Machine:
    """A scripted clock and CPU: others' and this process's CPU use per second."""

    def __init__(self) -> None:
        self.now, self.machine, self.own = 0.0, 0.0, 0.0

    def advance(self, seconds: float, others: float, own: float) -> None:
        self.now += seconds
        self.machine += seconds * (others + own)
        self.own += seconds * own

    def guard(self, threads: int = 2) -> ThreadGuard:
        return ThreadGuard(
            threads,
            machine_busy=lambda: self.machine,
            own_busy=lambda: self.own,
            clock=lambda: self.now,
        )


@pytest.fixture(autouse=True)
def keep_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_one_thread_while_others_are_busy_and_all_again_after():
    machine = Machine()
    guard = machine.guard(threads=2)
    machine.advance(5, others=0.0, own=2.0)
    assert guard.check() == 2
    machine.advance(5, others=1.0, own=1.0)  # another process takes a core
    assert guard.check() == 1 and torch.get_num_threads() == 1
    assert guard.others_cores == pytest.approx(1.0)
    machine.advance(5, others=0.9, own=1.0)
    assert guard.check() == 1
    machine.advance(5, others=0.05, own=1.0)  # it has stopped
    assert guard.check() == 2 and torch.get_num_threads() == 2


def test_short_windows_are_not_measured():
    machine = Machine()
    guard = machine.guard(threads=2)
    machine.advance(cpu_share.MIN_WINDOW_S / 4, others=2.0, own=0.0)
    assert guard.check() == torch.get_num_threads() == 2
    machine.advance(cpu_share.MIN_WINDOW_S, others=2.0, own=0.0)
    assert guard.check() == 1


def test_inactive_with_one_thread_or_without_proc_stat(tmp_path: Path):
    machine = Machine()
    single = machine.guard(threads=1)
    machine.advance(5, others=2.0, own=1.0)
    assert not single.active
    torch.set_num_threads(2)
    assert single.check() == 2  # leaves torch alone
    blind = ThreadGuard(2, machine_busy=lambda: None)
    assert not blind.active
    assert busy_cpu_seconds(tmp_path / "missing") is None
    (tmp_path / "stat").write_text("intr 1 2 3\n")
    assert busy_cpu_seconds(tmp_path / "stat") is None


def test_busy_seconds_from_proc_stat(tmp_path: Path):
    ticks = cpu_share.os.sysconf("SC_CLK_TCK")
    stat = tmp_path / "stat"
    # user nice system idle iowait irq softirq steal: busy = user+nice+system+irq+softirq
    stat.write_text(f"cpu  {ticks} {ticks} {ticks} {50 * ticks} {ticks} {ticks} {ticks} 9\n")
    assert busy_cpu_seconds(stat) == pytest.approx(5.0)


def test_restore():
    machine = Machine()
    guard = machine.guard(threads=2)
    machine.advance(5, others=2.0, own=0.0)
    assert guard.check() == 1
    guard.restore()
    assert torch.get_num_threads() == 2
