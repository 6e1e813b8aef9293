"""The package's metadata says one truth: Python version, licence, dependencies, lint."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_an_spdx_licence_string_has_the_setuptools_that_reads_it():
    assert PROJECT["project"]["license"] == "MIT"
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")
    (requirement,) = [r for r in PROJECT["build-system"]["requires"] if r.startswith("setuptools")]
    assert int(re.search(r">=(\d+)", requirement).group(1)) >= 77  # PEP 639 strings


def test_one_python_version_everywhere():
    assert PROJECT["project"]["requires-python"] == ">=3.11"
    assert PROJECT["tool"]["ruff"]["target-version"] == "py311"
    for page in ("README.md", "book/running.md"):
        said = set(re.findall(r"Python (3\.\d+)", (ROOT / page).read_text()))
        assert said <= {"3.11"}, (page, said)


def test_every_imported_third_party_package_is_declared():
    declared = " ".join(
        PROJECT["project"]["dependencies"]
        + [d for extra in PROJECT["project"]["optional-dependencies"].values() for d in extra]
    )
    requirements = (ROOT / "requirements.txt").read_text()
    for package in ("torch", "torchvision", "numpy", "sympy", "tqdm", "scikit-learn"):
        assert package in declared and package in requirements, package


def test_lint_checks_the_format_too():
    makefile = (ROOT / "Makefile").read_text()
    lint = makefile.split("\nlint:")[1].split("\n\n")[0]
    assert "ruff check" in lint and "ruff format --check" in lint
