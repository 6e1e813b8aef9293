"""Colab's door: the package as a reader installs it, every chapter run from an empty folder.

A reader on Colab has no checkout: the first cell installs dyntemp from the repository and
the chapter runs in a folder of its own. This test does the same without the network: it
builds the wheel, installs it into a fresh virtual environment (the dependencies come from
the environment running the tests), copies each chapter alone into an empty folder and
executes it there at the default scale. No cell may fail, and the experiment chapters must
show the stored study (chapter 6 prints its stored means), read from the package's copy.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = sorted((ROOT / "notebooks").glob("*.ipynb"))

pytestmark = [pytest.mark.slow, pytest.mark.data]


@pytest.fixture(scope="module")
def reader_python(tmp_path_factory, cifar10_root) -> Path:
    """The python of a fresh environment holding the built wheel of dyntemp."""
    work = tmp_path_factory.mktemp("colab")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
         "--wheel-dir", str(work / "dist"), str(ROOT)],
        check=True, capture_output=True,
    )  # fmt: skip
    (wheel,) = (work / "dist").glob("dyntemp-*.whl")
    venv.create(work / "env", with_pip=False)
    python = work / "env" / ("Scripts" if os.name == "nt" else "bin") / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    # The dependencies: this environment's packages, after the reader's own (no network).
    Path(purelib, "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
         "--target", purelib, str(wheel)],
        check=True, capture_output=True,
    )  # fmt: skip
    return python


def test_the_installed_package_is_not_the_checkout(reader_python, tmp_path):
    code = (
        "import dyntemp, dyntemp.stored as s; "
        "print(dyntemp.__file__); print(s.checkout()); print(s.read_root())"
    )
    printed = subprocess.run(
        [str(reader_python), "-c", code], cwd=tmp_path, env=_env(), check=True,
        capture_output=True, text=True,
    ).stdout.splitlines()  # fmt: skip
    assert not printed[0].startswith(str(ROOT / "dyntemp"))
    assert printed[1] == "None"
    assert printed[2].endswith("_results")
    assert (Path(printed[2]) / "cpu" / "fixed-0.2" / "seed0" / "results.json").exists()


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda p: p.name)
def test_every_chapter_runs_from_an_empty_folder(reader_python, tmp_path, chapter):
    copy = tmp_path / chapter.name
    shutil.copy(chapter, copy)
    done = subprocess.run(
        [str(reader_python), "-c", "from nbclient.cli import main; main()", "--inplace",
         "--timeout=1800", copy.name],
        cwd=tmp_path, env=_env(), capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    cells = json.loads(copy.read_text())["cells"]
    errors = [o for c in cells if c["cell_type"] == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]  # fmt: skip
    assert not errors, errors[0]
    if chapter.name.startswith("06"):
        text = "".join(
            "".join(o.get("text", "")) + "".join(o.get("data", {}).get("text/plain", ""))
            for c in cells if c["cell_type"] == "code" for o in c.get("outputs", [])
        )  # fmt: skip
        assert "56.07" in text, "chapter 6 does not show the stored mean of fixed 0.2"
    assert not (tmp_path / "results").exists() or chapter.name < "06"  # reads, never trains


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DYNTEMP_SCALE", "PYTHONPATH")}
    env.pop("DYNTEMP_RESULTS", None)
    env["MPLBACKEND"] = "Agg"
    return env
