"""Shared fixtures: deterministic seeds, the real CIFAR-10 (through DYNTEMP_DATA) and a tiny
generated one (``fake_root``). Shared plain functions are in ``helpers.py``."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from fake_cifar import write_fake_cifar10


@pytest.fixture(autouse=True, scope="session")
def _own_cache(tmp_path_factory) -> None:
    """The tests' caches (the precision probe's answers, fetched results) in a folder of
    their own, for every process they start too: never the user's."""
    os.environ["DYNTEMP_CACHE"] = str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def cifar10_root() -> Path:
    """The extracted real CIFAR-10 (``train/<class>/*.jpg``, ``test/<class>/*.jpg``).

    Outside CI a missing copy skips the test with the reason; in CI (``CI=true``) it fails,
    because there the data must be there and a skipped test is not a passing one.
    """
    root = os.environ.get("DYNTEMP_DATA")
    if root and (Path(root) / "train").is_dir():
        return Path(root)
    message = "the real CIFAR-10 is needed: set DYNTEMP_DATA to its extracted folder"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def fake_root(tmp_path_factory) -> Path:
    """A generated CIFAR-10 in torchvision's layout (``fake_cifar``): 200 training images,
    100 test images. Shared by every test: none writes into it."""
    return write_fake_cifar10(tmp_path_factory.mktemp("fake-cifar10"))
