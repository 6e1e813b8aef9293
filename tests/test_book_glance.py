"""The "Results at a glance" page is generated from the checked SymPy objects and is current.

Every row links to a section of a chapter by its heading's anchor; ``python book/glance.py``
regenerates the page, and this test fails when the committed page differs from what it would
write.
"""

from __future__ import annotations

import importlib.util
import json
import re
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


def _anchors(markdown: list[str]) -> set[str]:
    """The anchors of the headings down to level 3, as MyST derives them (_config.yml's
    myst_heading_anchors; GitHub's rule)."""
    found: set[str] = set()
    for text in markdown:
        for title in re.findall(r"^#{1,3} +(.+?) *$", re.sub(r"(?ms)^```.*?^```", "", text), re.M):
            title = re.sub(r"\$[^$]*\$", "", title).replace("`", "")  # formulas give no text
            slug = re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")
            anchor, n = slug, 0
            while anchor in found:
                n += 1
                anchor = f"{slug}-{n}"
            found.add(anchor)
    return found


def test_every_row_links_to_a_section_of_its_chapter() -> None:
    for anchor, chapter in _glance().anchors():
        cells = json.loads((ROOT / f"{chapter}.ipynb").read_text())["cells"]
        markdown = ["".join(cell["source"]) for cell in cells if cell["cell_type"] == "markdown"]
        assert anchor in _anchors(markdown), (anchor, chapter)
