"""The "Results at a glance" page is generated from the checked SymPy objects and is current.

Every row links to a labelled section of a chapter; ``python book/glance.py`` regenerates
the page, and this test fails when the committed page differs from what it would write.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _glance():
    spec = importlib.util.spec_from_file_location("glance", ROOT / "book" / "glance.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_the_page_is_what_the_generator_writes() -> None:
    glance = _glance()
    assert glance.PAGE.read_text() == glance.page(), "run python book/glance.py"


def test_every_row_links_to_a_labelled_section_of_its_chapter() -> None:
    for label, chapter in _glance().labels():
        cells = json.loads((ROOT / f"{chapter}.ipynb").read_text())["cells"]
        markdown = ["".join(cell["source"]) for cell in cells if cell["cell_type"] == "markdown"]
        assert any(text.startswith(f"({label})=\n") for text in markdown), (label, chapter)
