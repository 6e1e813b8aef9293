"""The public entries carry runnable examples; ``make test-unit`` runs every module's.

The examples themselves run under ``pytest --doctest-modules dyntemp`` (the ``test-unit``
target), with the options of ``[tool.pytest.ini_options]``.
"""

from __future__ import annotations

import doctest
import subprocess
from pathlib import Path

import pytest

from dyntemp import formula, loss, run_metrics, temperature, train

ROOT = Path(__file__).resolve().parents[1]

#: The entries a reader meets first: each shows its use in an example.
PUBLIC = {
    "dyntemp.loss.ntxent": loss.ntxent,
    "dyntemp.temperature.from_name": temperature.from_name,
    "dyntemp.formula.Formula": formula.Formula,
    "dyntemp.train.train": train.train,
    "dyntemp.run_metrics.evaluate_run": run_metrics.evaluate_run,
}


@pytest.mark.parametrize("name", PUBLIC)
def test_the_public_entry_has_an_example(name):
    tests = doctest.DocTestFinder(recurse=False).find(PUBLIC[name], name)
    assert sum(len(test.examples) for test in tests) > 0, f"{name} has no >>> example"


def test_make_test_unit_runs_the_examples_of_every_module():
    printed = subprocess.run(
        ["make", "-n", "test-unit"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    (command,) = [line for line in printed.splitlines() if "-m pytest" in line]
    arguments = command.split()
    assert "--doctest-modules" in arguments and "dyntemp" in arguments, command
