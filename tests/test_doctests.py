"""The examples in the docstrings of the loss, MoCo, the run folders and the step timer run."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = ["dyntemp.loss", "dyntemp.moco", "dyntemp.runs", "dyntemp.timing"]


@pytest.mark.parametrize("name", MODULES)
def test_the_examples_run(name):
    module = importlib.import_module(name)
    outcome = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert outcome.attempted > 0 and outcome.failed == 0, outcome
