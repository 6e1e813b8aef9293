"""The book's configuration agrees with its chapters.

The repository URL is written once in _config.yml; every chapter's first code cell installs
the library from that URL, the chapter asks Colab for a GPU, and it appears in _toc.yml.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def _config() -> dict:
    return yaml.safe_load((ROOT / "_config.yml").read_text())


def _toc_files() -> set[str]:
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = {toc["root"]}

    def walk(entries: list[dict]) -> None:
        for entry in entries:
            if "file" in entry:
                files.add(entry["file"])
            for key in ("parts", "chapters", "sections"):
                walk(entry.get(key, []))

    walk([toc])
    return {str(Path(name).with_suffix("")) for name in files}


def _notebook(path: Path) -> dict:
    return json.loads(path.read_text())


def test_repository_and_launch_settings() -> None:
    config = _config()
    assert re.fullmatch(r"https://github\.com/[\w.-]+/[\w.-]+", config["repository"]["url"])
    assert config["repository"]["branch"] == "main"
    assert config["launch_buttons"]["colab_url"] == "https://colab.research.google.com"


def test_the_checked_notebooks_are_the_chapters_of_the_table_of_contents() -> None:
    """The tests below run on every notebook found; those must be the book's chapters, so a
    missing or misplaced folder (no notebook found) or a chapter without its file fails."""
    chapters = {name for name in _toc_files() if name.startswith("notebooks/")}
    assert chapters, "_toc.yml lists no chapter under notebooks/"
    assert {p.relative_to(ROOT).with_suffix("").as_posix() for p in NOTEBOOKS} == chapters


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_first_code_cell_installs_from_the_book_repository(path: Path) -> None:
    """The title comes first; the first code cell installs the library where it is missing."""
    first = next(cell for cell in _notebook(path)["cells"] if cell["cell_type"] == "code")
    source = "".join(first["source"])
    urls = re.findall(r"git\+(https://[^\s\"'@#]+)", source)
    assert urls, f"{path.name}: the first cell does not install from git+<repository url>"
    repository = _config()["repository"]["url"]
    assert {url.removesuffix(".git") for url in urls} == {repository}
    assert "import dyntemp" in source and "except ImportError" in source, (
        f"{path.name}: the first cell must install only when `import dyntemp` fails"
    )
    # one quiet line, with the extra that holds what the chapters import (and SymPy's pin)
    assert f'%pip install --quiet "dyntemp[book] @ git+{repository}"' in source, path.name


def test_the_book_extra_pins_sympy_as_the_tests_do() -> None:
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pinned = re.search(r"^sympy==([\d.]+)$", (ROOT / "requirements.txt").read_text(), re.M)
    assert f"sympy=={pinned.group(1)}" in project["optional-dependencies"]["book"]
    for package in ("matplotlib", "seaborn", "scikit-learn"):
        assert any(d.startswith(package) for d in project["optional-dependencies"]["book"])


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_asks_colab_for_a_gpu(path: Path) -> None:
    metadata = _notebook(path)["metadata"]
    assert metadata.get("accelerator") == "GPU"
    assert isinstance(metadata.get("colab"), dict)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_in_the_table_of_contents(path: Path) -> None:
    assert path.relative_to(ROOT).with_suffix("").as_posix() in _toc_files()


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_stored_executed(path: Path) -> None:
    """A chapter stored without outputs would render empty and be compared with nothing."""
    code = [cell for cell in _notebook(path)["cells"] if cell["cell_type"] == "code"]
    assert code and all(cell.get("execution_count") for cell in code), (
        f"{path.name}: run it top to bottom and save it with its outputs"
    )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_repository_link_is_the_book_repository(path: Path) -> None:
    """Links into the repository (installs, run folders) all name the one in _config.yml."""
    repository = _config()["repository"]["url"]
    text = "".join("".join(cell["source"]) for cell in _notebook(path)["cells"])
    for url in re.findall(r"https://github\.com/[\w.-]+/[\w.-]+", text):
        assert url.removesuffix(".git") == repository, f"{path.name}: {url}"
