"""The GitHub Actions workflows are well-formed and do what the project relies on.

actionlint (with ShellCheck on the ``run:`` scripts) must report nothing on any workflow;
the book's workflow publishes the site on GitHub Pages on every push to main, and the test
workflow runs ``make test`` on the real CIFAR-10. Both tools come from requirements.txt; without
them the test is skipped, except in CI, where it fails.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = ROOT / ".github" / "workflows"
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]

# A workflow with one mistake of each kind that actionlint must see: a job that needs a job
# that does not exist, an input that the action does not have, a property that the github
# context does not have, and (through ShellCheck) an unquoted variable in a shell step.
BROKEN = """\
name: Broken
on: push
jobs:
  build:
    runs-on: ubuntu-latest
    needs: no-such-job
    steps:
      - uses: actions/checkout@v6
        with:
          fetch-dept: 1
      - run: echo "${{ github.no_such_property }}"
      - run: cd $HOME/build
"""


def _tool(name: str) -> str:
    """The command installed beside this Python (the project's .venv), else on PATH."""
    beside = Path(sys.executable).parent / name
    path = str(beside) if beside.is_file() else shutil.which(name)
    if path:
        return path
    message = f"{name} is not installed: pip install -r requirements.txt"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def _actionlint(*files: Path) -> subprocess.CompletedProcess:
    command = [_tool("actionlint"), "-no-color", "-shellcheck", _tool("shellcheck"), "-pyflakes="]
    return subprocess.run(
        [*command, *map(str, files)], capture_output=True, text=True, cwd=ROOT, timeout=120
    )


def _workflow(name: str) -> dict:
    workflow = yaml.safe_load((WORKFLOWS / name).read_text())
    workflow["on"] = workflow.pop(True, workflow.get("on"))  # YAML 1.1 reads `on` as true
    return workflow


def _steps(workflow: dict) -> list[dict]:
    return [step for job in workflow["jobs"].values() for step in job.get("steps", [])]


def _uses(workflow: dict) -> dict[str, str]:
    """Each action the workflow uses, and its version."""
    return dict(step["uses"].split("@") for step in _steps(workflow) if "uses" in step)


def _runs(workflow: dict) -> str:
    return "\n".join(step.get("run", "") for step in _steps(workflow))


def test_there_are_the_two_workflows() -> None:
    assert {"book.yml", "test.yml"} <= {path.name for path in WORKFLOWS.glob("*.y*ml")}


def test_actionlint_finds_nothing_in_the_workflows() -> None:
    result = _actionlint(*sorted(WORKFLOWS.glob("*.y*ml")))
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_actionlint_finds_every_mistake_of_a_broken_workflow(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yml"
    broken.write_text(BROKEN)
    result = _actionlint(broken)
    assert result.returncode == 1, result.stdout + result.stderr
    for rule in ("job-needs", "action", "expression", "shellcheck"):
        assert f"[{rule}]" in result.stdout, (rule, result.stdout)
    assert "SC2086" in result.stdout  # ShellCheck ran on the shell step


def test_the_book_is_published_on_pages_on_every_push_to_main() -> None:
    workflow = _workflow("book.yml")
    assert workflow["on"]["push"]["branches"] == ["main"]
    assert "workflow_dispatch" in workflow["on"]
    assert workflow["concurrency"]["group"] == "pages"
    assert set(_uses(workflow)) >= {
        "actions/checkout",
        "actions/setup-python",
        "actions/configure-pages",
        "actions/upload-pages-artifact",
        "actions/deploy-pages",
    }
    build, deploy = workflow["jobs"]["build"], workflow["jobs"]["deploy"]
    runs = _runs(workflow)
    assert "pip install -r requirements-book.txt" in runs
    assert "jupyter-book build . -n -W --keep-going" in runs  # as `make book` builds it
    assert "tests/test_book_site.py" in runs  # no broken link is published
    (upload,) = [s for s in build["steps"] if s.get("uses", "").startswith("actions/upload-pages")]
    assert upload["with"]["path"] == "_build/html"
    assert deploy["needs"] == "build"
    assert deploy["if"] == "github.ref == 'refs/heads/main'"
    assert deploy["permissions"] == {"pages": "write", "id-token": "write"}
    assert deploy["environment"]["name"] == "github-pages"
    assert workflow["permissions"] == {"contents": "read"}  # nothing more for the build


def test_the_book_workflow_installs_no_torch() -> None:
    """Rendering needs no torch: requirements-book.txt must stay free of it and of the library."""
    names = {
        re.split(r"[<>=!~\[; ]", line, maxsplit=1)[0].lower()
        for line in (ROOT / "requirements-book.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert names.isdisjoint({"torch", "torchvision", "dyntemp", "-e", "-r"}), names
    assert "-r requirements-book.txt" in (ROOT / "requirements.txt").read_text().splitlines()


def test_the_test_workflow_runs_make_test_on_the_real_cifar10() -> None:
    workflow = _workflow("test.yml")
    assert {"push", "pull_request"} <= set(workflow["on"])
    assert re.search(r"^make test$", _runs(workflow), re.MULTILINE)
    (job,) = workflow["jobs"].values()
    data = [s for s in job["steps"] if s.get("with", {}).get("path") == ".data/cifar10"]
    assert len(data) == 1 and re.fullmatch(r"[0-9a-f]{40}", data[0]["with"]["ref"])
    assert job["env"]["DYNTEMP_DATA"] == "${{ github.workspace }}/.data/cifar10"


@pytest.mark.parametrize("name", ["book.yml", "test.yml"])
def test_the_workflows_use_the_project_python(name: str) -> None:
    (setup,) = [s for s in _steps(_workflow(name)) if s.get("uses", "").startswith("actions/setup")]
    assert f">={setup['with']['python-version']}" == PROJECT["requires-python"]
