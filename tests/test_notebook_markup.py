"""Jupyter's door: every chapter reads right where MyST is absent.

Readers open the chapters in Jupyter and in Colab as well as in the book. Those render
CommonMark, raw HTML and MathJax, and know nothing of the book's build, so a chapter's
markdown holds:

- no MyST role, directive, target, substitution or equation label, which would show as raw
  text;
- no LaTeX macro that MathJax does not define by itself: none of the macros of _config.yml,
  none of the macros the book once defined there, and none that the book's own copy of
  MathJax lacks;
- links that lead somewhere without the book: to another host, to a file beside the
  chapter, or to a heading anchor of a chapter; a citation links to the address that
  book/references.bib gives for the paper;
- exercises numbered after their chapter ("Exercise 6.1" in chapter 6), each followed by its
  solution folded in an HTML <details> block, with the blank lines that let Jupyter, Colab
  and MyST read the markdown inside it.

Every figure has a caption and alt text in both worlds. The code cell that draws it carries
them in its metadata (``mystnb: figure: caption`` and ``image: alt``, and optionally a
``name``, fig-<chapter>-<words>), which the book renders as a numbered figure with its
caption and alt text; the cell after it is a markdown cell tagged ``remove-cell`` that
holds the same caption as an italic line, "*Figure 3.2: ...*", which Jupyter and Colab show
under the figure and the book leaves out, having its own. Figures are numbered after their
chapter, in order, as the book numbers them.

The tests read the notebooks as JSON and import nothing of the library.
"""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))

# The macros _config.yml defined before the chapters spelt their formulas out; a chapter that
# used one again would show a red error in Jupyter and Colab.
FORMER_MACROS = {"R", "E", "LL", "sg", "tmin", "tmax"}

CODE_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})(.*)$")
DIRECTIVE_FENCE = re.compile(r"^\s*(`{3,}|~{3,}|:{3,})\s*\{")
INLINE_CODE = re.compile(r"(`+)(?!`)(.+?)(?<!`)\1(?!`)", re.S)
CODE = "\x00code\x00"  # what an inline code span leaves behind
MYST = {
    "role": re.compile(r"\{[A-Za-z][\w:+.-]*\}" + CODE),
    "target": re.compile(r"^\s*\([^()\s]+\)=\s*$", re.M),
    "substitution": re.compile(r"\{\{\s*[A-Za-z_][\w.]*\s*\}\}"),
    "equation label": re.compile(r"\$\$\s*\([\w:.-]+\)\s*$", re.M),
}
MACRO = re.compile(r"(?<!\\)(?:\\\\)*\\([A-Za-z]+)")
LINK = re.compile(r"\[([^\]]*)\]\(([^)\s]*)\)")
CITATION_TEXT = re.compile(r"(?:.+, )?\d{4}")  # "Manna et al., 2025" or "2025"
EXERCISE = re.compile(r"\*\*Exercise (\d+)\.(\d+)\.\*\*")
SOLUTION = re.compile(
    r"<details>\n<summary>Solution to exercise (\d+)\.(\d+)</summary>\n(.*?)</details>", re.S
)


IMAGE_TYPES = ("image/png", "image/jpeg", "image/svg+xml")
FIGURE_NAME = re.compile(r"fig-(\d{2})-[a-z0-9]+(?:-[a-z0-9]+)*")
REMOVED = "remove-cell"


def _images(cell: dict) -> int:
    return sum(
        any(kind in output.get("data", {}) for kind in IMAGE_TYPES)
        for output in cell.get("outputs", [])
    )


def figure_problems(notebook: dict, chapter: int) -> list[str]:
    """What keeps the figures of a notebook from a caption and alt text in the book and in
    Jupyter: every cell that draws an image needs both in its metadata, and the caption again
    in the markdown cell after it, as "*Figure <chapter>.<n>: <caption>*", tagged remove-cell."""
    problems: list[str] = []
    cells = notebook["cells"]
    names: set[str] = set()
    number = 0
    for index, cell in enumerate(cells):
        options = cell.get("metadata", {}).get("mystnb", {})
        images = _images(cell) if cell["cell_type"] == "code" else 0
        where = f"cell {index}"
        if not images:
            if "figure" in options:
                problems.append(f"{where}: a caption but no figure")
            following = "".join(cell["source"]) if cell["cell_type"] == "markdown" else ""
            tags = cell.get("metadata", {}).get("tags", [])
            if REMOVED in tags and following.startswith("*Figure"):
                before = cells[index - 1] if index else {"cell_type": "markdown"}
                if before["cell_type"] != "code" or not _images(before):
                    problems.append(f"{where}: a figure's caption line after no figure")
            continue
        number += 1
        if images > 1:
            problems.append(f"{where}: {images} figures in one cell share one caption")
        displays = [o for o in cell.get("outputs", []) if o["output_type"] != "stream"]
        if len(displays) > images:  # the book would caption (and name) each of them
            problems.append(f"{where}: another display beside the figure shares its caption")
        figure = options.get("figure", {})
        caption = str(figure.get("caption", "")).strip()
        alt = str(options.get("image", {}).get("alt", "")).strip()
        name = str(figure.get("name", ""))
        if not caption:
            problems.append(f"{where}: a figure without a caption (mystnb: figure: caption)")
        if not alt:
            problems.append(f"{where}: a figure without alt text (mystnb: image: alt)")
        if "$" in caption + alt:
            problems.append(
                f"{where}: a formula in the caption or alt text, which the alt "
                "text and the test of the built page read as plain text"
            )
        match = FIGURE_NAME.fullmatch(name)
        if not name:  # a name is optional: the book numbers the figure without one
            pass
        elif match is None or int(match.group(1)) != chapter:
            problems.append(f"{where}: figure name {name!r} is not fig-{chapter:02d}-<words>")
        elif name in names:
            problems.append(f"{where}: figure name {name!r} used twice")
        names.add(name)
        wanted = f"*Figure {chapter}.{number}: {caption}*"
        following = cells[index + 1] if index + 1 < len(cells) else None
        if (
            following is None
            or following["cell_type"] != "markdown"
            or REMOVED not in following.get("metadata", {}).get("tags", [])
            or "".join(following["source"]).strip() != wanted
        ):
            problems.append(
                f"{where}: the next cell is not the caption for Jupyter, a markdown "
                f"cell tagged {REMOVED} that reads {wanted[:60]!r}"
            )
    return problems


def _markdown(path: Path) -> list[str]:
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    return ["".join(cell["source"]) for cell in cells if cell["cell_type"] == "markdown"]


def _prose(markdown: str) -> tuple[str, list[str]]:
    """The markdown less its code blocks, and its directive fences (```{name}, :::{name})."""
    kept, directives = [], []
    fence: str | None = None  # the fence of the code block we are in
    opened: list[str] = []  # the fences of the directives we are in
    for line in markdown.split("\n"):
        if fence is not None:
            if line.strip() == fence:
                fence = None
            continue
        if match := DIRECTIVE_FENCE.match(line):
            directives.append(line.strip())
            opened.append(match.group(1))
            continue
        if opened and line.strip() == opened[-1]:
            opened.pop()
            continue
        if match := CODE_FENCE.match(line):
            fence = match.group(1)
            continue
        kept.append(line)
    return "\n".join(kept), directives


def myst_markup(markdown: str) -> list[str]:
    """Every piece of MyST syntax in a markdown cell, as "kind: text"."""
    prose, directives = _prose(markdown)
    found = [f"directive: {line}" for line in directives]
    prose = INLINE_CODE.sub(CODE, prose)
    for kind, pattern in MYST.items():
        found += [
            f"{kind}: {m.group(0).strip().replace(CODE, '`...`')}" for m in pattern.finditer(prose)
        ]
    return found


def macros(markdown: str) -> set[str]:
    """The names of the LaTeX macros a markdown cell uses, outside code."""
    prose = INLINE_CODE.sub(CODE, _prose(markdown)[0])
    return {m.group(1) for m in MACRO.finditer(prose)}


def heading_anchors(markdowns: list[str]) -> set[str]:
    """The anchors of the headings down to level 3, as MyST (myst_heading_anchors) and GitHub
    derive them from the heading's text."""
    found: set[str] = set()
    for markdown in markdowns:
        for title in re.findall(r"^#{1,3} +(.+?) *$", _prose(markdown)[0], re.M):
            title = re.sub(r"\$[^$]*\$", "", title).replace("`", "")  # a formula gives no text
            slug = re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")
            anchor, n = slug, 0
            while anchor in found:
                n += 1
                anchor = f"{slug}-{n}"
            found.add(anchor)
    return found


@cache
def _config() -> dict:
    return yaml.safe_load((ROOT / "_config.yml").read_text())


def custom_macros() -> set[str]:
    """The macros the book's own MathJax configuration defines."""
    tex = _config()["sphinx"]["config"].get("mathjax3_config", {}).get("tex", {})
    return set(tex.get("macros", {}))


@cache
def mathjax_names() -> frozenset[str]:
    """Every name the book's copy of MathJax defines, with some harmless extras: the keys of
    the macro tables in its bundle."""
    config = _config()["sphinx"]["config"]
    for folder in config["html_static_path"]:
        bundle = ROOT / folder / config["mathjax_path"]
        if bundle.is_file():
            text = bundle.read_text(encoding="utf-8")
            return frozenset(re.findall(r'[{,]"?(?:\\\\)?([A-Za-z]+)"?:', text))
    raise FileNotFoundError(config["mathjax_path"])


@cache
def bibliography_urls() -> frozenset[str]:
    """The address of every entry of book/references.bib: its DOI, its url, or a \\url{}."""
    text = (ROOT / "book" / "references.bib").read_text(encoding="utf-8")
    urls = {f"https://doi.org/{doi}" for doi in re.findall(r"\bdoi\s*=\s*\{([^}]+)\}", text)}
    urls |= set(re.findall(r"\burl\s*=\s*\{([^}]+)\}", text))
    urls |= set(re.findall(r"\\url\{([^}]+)\}", text))
    return frozenset(urls)


def broken_links(path: Path) -> list[str]:
    """The links of a chapter that lead nowhere without the book."""
    markdowns = _markdown(path)
    problems = []
    for markdown in markdowns:
        prose = INLINE_CODE.sub(CODE, _prose(markdown)[0])
        for text, url in LINK.findall(prose):
            if re.match(r"[a-z][a-z0-9+.-]*:", url):  # another host
                if CITATION_TEXT.fullmatch(text) and url not in bibliography_urls():
                    problems.append(f"[{text}]({url}): a citation not in book/references.bib")
                continue
            target, _, fragment = url.partition("#")
            file = (path.parent / target).resolve() if target else path
            if not file.is_file():
                problems.append(f"[{text}]({url}): no such file")
            elif fragment and file.suffix == ".ipynb":
                if fragment not in heading_anchors(_markdown(file)):
                    problems.append(f"[{text}]({url}): no heading with that anchor")
    return problems


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_no_myst_markup(path: Path) -> None:
    found = [item for markdown in _markdown(path) for item in myst_markup(markdown)]
    assert not found, f"{path.name}: MyST shows as raw text in Jupyter and Colab: {found}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_no_macro_that_mathjax_lacks(path: Path) -> None:
    used = set().union(*(macros(markdown) for markdown in _markdown(path)))
    custom = used & (custom_macros() | FORMER_MACROS)
    assert not custom, f"{path.name}: macros of the book, unknown to Jupyter: {sorted(custom)}"
    unknown = used - mathjax_names()
    assert not unknown, f"{path.name}: macros MathJax does not define: {sorted(unknown)}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_links_lead_somewhere_without_the_book(path: Path) -> None:
    problems = broken_links(path)
    assert not problems, f"{path.name}: " + "; ".join(problems)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_exercises_are_numbered_after_their_chapter_and_solutions_fold(path: Path) -> None:
    chapter = int(path.name[:2])
    text = "\n\n".join(_markdown(path))
    exercises = [(int(a), int(b)) for a, b in EXERCISE.findall(text)]
    assert exercises, f"{path.name}: no exercises"
    assert exercises == [(chapter, k) for k in range(1, len(exercises) + 1)], exercises
    solutions = SOLUTION.findall(text)
    assert [(int(a), int(b)) for a, b, _ in solutions] == exercises, "one solution each"
    assert text.count("<details>") == text.count("</details>") == len(solutions)
    for a, b, body in solutions:
        # blank lines around the body, or Jupyter, Colab and MyST leave its markdown unread
        assert body.startswith("\n") and not body.startswith("\n\n"), f"solution {a}.{b}"
        assert body.endswith("\n\n") and body.strip(), f"solution {a}.{b}"
    for markdown in _markdown(path):  # a solution stays inside its cell
        assert markdown.count("<details>") == markdown.count("</details>")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_figure_has_a_caption_and_alt_text_in_both_worlds(path: Path) -> None:
    notebook = json.loads(path.read_text(encoding="utf-8"))
    problems = figure_problems(notebook, int(path.name[:2]))
    assert not problems, f"{path.name}: " + "; ".join(problems)


def _figure_cell(metadata: dict) -> dict:
    image = {
        "output_type": "display_data",
        "data": {"image/png": "iVBORw0KGgo=", "text/plain": "<Figure>"},
    }
    return {"cell_type": "code", "metadata": metadata, "outputs": [image], "source": ["plt.show()"]}


def _caption_cell(text: str) -> dict:
    return {"cell_type": "markdown", "metadata": {"tags": [REMOVED]}, "source": [text]}


def test_the_figure_check_finds_a_figure_without_its_caption() -> None:
    captioned = {
        "mystnb": {
            "figure": {"caption": "Two curves.", "name": "fig-03-curves"},
            "image": {"alt": "Two rising curves."},
        }
    }
    good = {"cells": [_figure_cell(captioned), _caption_cell("*Figure 3.1: Two curves.*")]}
    assert figure_problems(good, 3) == []
    assert figure_problems({"cells": [_figure_cell({})]}, 3) == [
        "cell 0: a figure without a caption (mystnb: figure: caption)",
        "cell 0: a figure without alt text (mystnb: image: alt)",
        "cell 0: the next cell is not the caption for Jupyter, a markdown cell tagged "
        "remove-cell that reads '*Figure 3.1: *'",
    ]
    no_line = {"cells": [_figure_cell(captioned)]}
    assert [p[:40] for p in figure_problems(no_line, 3)] == [
        "cell 0: the next cell is not the caption"
    ]
    formula = {"output_type": "display_data", "data": {"text/latex": "$x$"}}
    two = {**_figure_cell(captioned), "outputs": [*_figure_cell(captioned)["outputs"], formula]}
    assert figure_problems({"cells": [two, good["cells"][1]]}, 3) == [
        "cell 0: another display beside the figure shares its caption"
    ]
    shown = {"cells": [_figure_cell(captioned), _caption_cell("*Figure 3.2: Two curves.*")]}
    assert len(figure_problems(shown, 3)) == 1  # numbered off its place
    assert len(figure_problems(good, 4)) == 2  # named and numbered off its chapter
    orphan = {
        "cells": [
            {**_figure_cell(captioned), "outputs": []},
            _caption_cell("*Figure 3.1: Two curves.*"),
        ]
    }
    assert figure_problems(orphan, 3) == [
        "cell 0: a caption but no figure",
        "cell 1: a figure's caption line after no figure",
    ]


OLD_MARKUP = r"""(sec-06-intro)=
## Training

DySTreSS {cite:p}`manna2025dystress` at $(\tmin, \tmax) = (0.1, 0.2)$ and
$\E\,\LL$; {doc}`07_embedding_geometry` measures it, as {ref}`sec-06-intro` says, and
{{ substituted }} reads $$x$$ (eq-one)

```{exercise}
:label: ex-05-floor

Show it.
```

````{solution} ex-05-floor
:class: dropdown

```python
print("{cite:p}`not-a-role` in code")
```
````
"""


def test_the_checks_find_the_markup_of_the_book_alone() -> None:
    """What the chapters were written in before: every piece of it is found."""
    found = myst_markup(OLD_MARKUP)
    assert found == [
        "directive: ```{exercise}",
        "directive: ````{solution} ex-05-floor",
        "role: {cite:p}`...`",
        "role: {doc}`...`",
        "role: {ref}`...`",
        "target: (sec-06-intro)=",
        "substitution: {{ substituted }}",
        "equation label: $$ (eq-one)",
    ], found
    old = macros(OLD_MARKUP)
    assert old & FORMER_MACROS == {"tmin", "tmax", "E", "LL"}
    assert {"tmin", "tmax"} <= old - mathjax_names()
    assert myst_markup("The label `(sec-one)=` and the role `{doc}` in code are text.") == []


def test_the_checks_pass_the_markup_of_both_worlds() -> None:
    good = (
        "DySTreSS ([Manna et al., 2025](https://doi.org/10.1109/TAI.2024.3524979)) at\n"
        "$(\\tau_{\\min}, \\tau_{\\max})$; [chapter 7](07_embedding_geometry.ipynb) measures\n"
        "it.\n\n"
        "**Exercise 6.1.** Show it.\n\n<details>\n<summary>Solution to exercise 6.1</summary>\n\n"
        "$$\n\\mathbb{E}\\,\\mathcal{L} \\ge 0\n$$\n\n</details>"
    )
    assert myst_markup(good) == []
    assert macros(good) <= mathjax_names() and not macros(good) & FORMER_MACROS
    assert "https://doi.org/10.1109/TAI.2024.3524979" in bibliography_urls()
    assert "your-own-rule" in heading_anchors(
        _markdown(ROOT / "notebooks" / "03_dynamic_temperature.ipynb")
    )
