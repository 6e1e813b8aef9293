"""Every link inside the built book leads somewhere, and every image of it is there.

Each page of ``_build/html`` is read with the standard library's HTML parser. A reference to
a file of the site (``<a href>``, ``<link href>``, ``<img src>``, ``<script src>``, and the
redirect of the site's front door ``index.html``) must name a file that exists, inside the
site; a link with a fragment (``page.html#name``, or ``#name`` within the page) must name an
element of that page with that id (Sphinx writes a section's label as the id of its
``<section>``, other targets as a ``<span id>``). Links to other hosts (``http:``,
``https:``, ``mailto:``, ``data:``) are not followed; a bare ``#`` is the top of the page.
Sphinx's own pages (``genindex.html``, ``search.html``) are pages like any other; the
theme's HTML fragments under ``_static`` and the copies of the sources under ``_sources``
are files that links may name, not pages.

Run ``make book`` first (``make test`` does). Without a built book the test is skipped,
except in CI, where it fails.
"""

from __future__ import annotations

import os
import re
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SITE = ROOT / "_build" / "html"
NOT_PAGES = ("_static", "_sources")  # HTML there is an asset or a source, not a page
# The attributes that name another file, by element.
REFERENCES = {"a": "href", "area": "href", "link": "href", "img": "src", "script": "src"}
REFRESH = re.compile(r"^\s*\d+\s*;\s*url\s*=\s*(.+?)\s*$", re.IGNORECASE)


class _Page(HTMLParser):
    """The ids a page defines and the references it makes, with their line numbers."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.ids: set[str] = set()
        self.references: list[tuple[str, str, int]] = []  # (element, url, line)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {name: value for name, value in attrs if value is not None}
        if "id" in values:
            self.ids.add(values["id"])
        if tag == "a" and "name" in values:
            self.ids.add(values["name"])
        line = self.getpos()[0]
        if tag in REFERENCES and REFERENCES[tag] in values:
            self.references.append((tag, values[REFERENCES[tag]].strip(), line))
        if tag == "meta" and values.get("http-equiv", "").lower() == "refresh":
            if match := REFRESH.match(values.get("content", "")):
                self.references.append(("meta refresh", match.group(1).strip("'\""), line))


def _parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    page.close()
    return page


def pages(site: Path) -> list[Path]:
    """Every page of the site: its HTML files outside _static and _sources."""
    return [
        path
        for path in sorted(site.rglob("*.html"))
        if path.relative_to(site).parts[0] not in NOT_PAGES
    ]


def broken_references(site: Path) -> list[str]:
    """One line per reference that leads nowhere: ``page:line: <element> url: what is wrong``."""
    site = site.resolve()
    parsed: dict[Path, _Page] = {}

    def read(path: Path) -> _Page:
        if path not in parsed:
            parsed[path] = _parse(path)
        return parsed[path]

    problems = []
    for page in pages(site):
        for element, url, line in read(page).references:
            parts = urlsplit(url)
            if parts.scheme or parts.netloc:  # another host, mailto:, data:, javascript:
                continue
            where = f"{page.relative_to(site).as_posix()}:{line}: <{element}> {url}"
            target = page
            if parts.path:
                target = (page.parent / unquote(parts.path)).resolve()
                if not target.is_relative_to(site):
                    problems.append(f"{where}: leads out of the site")
                    continue
                if target.is_dir():
                    target = target / "index.html"
                if not target.is_file():
                    problems.append(f"{where}: no such file")
                    continue
            fragment = unquote(parts.fragment)
            if fragment and target.suffix == ".html" and element in ("a", "area"):
                if fragment not in read(target).ids:
                    name = target.relative_to(site).as_posix()
                    problems.append(f"{where}: {name} has no element with id {fragment!r}")
    return problems


def _toc_documents() -> list[str]:
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [toc["root"]]

    def walk(entries: list[dict]) -> None:
        for entry in entries:
            if "file" in entry:
                files.append(entry["file"])
            for key in ("parts", "chapters", "sections"):
                walk(entry.get(key, []))

    walk([toc])
    return [str(Path(name).with_suffix("")) for name in files]


@pytest.fixture(scope="module")
def site() -> Path:
    if (SITE / "index.html").is_file():
        return SITE
    message = "the built book is needed: run `make book` first"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def test_every_document_of_the_table_of_contents_is_a_page(site: Path) -> None:
    built = {path.relative_to(site).with_suffix("").as_posix() for path in pages(site)}
    assert set(_toc_documents()) <= built
    assert {"index", "genindex", "search"} <= built


def test_no_internal_link_of_the_built_book_is_broken_and_no_image_missing(site: Path) -> None:
    problems = broken_references(site)
    assert not problems, f"{len(problems)} broken:\n" + "\n".join(problems)


def _write(path: Path, body: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"<!DOCTYPE html>\n<html><head></head><body>\n{body}\n</body></html>\n")


def test_the_checker_finds_broken_links_and_missing_images(tmp_path: Path) -> None:
    """A small site with one reference of every kind, good and broken."""
    site = tmp_path / "html"
    _write(site / "index.html", '<meta http-equiv="refresh" content="0; url=book/intro.html" />')
    _write(
        site / "book" / "intro.html",
        "\n".join(
            [
                '<section id="top"><h1>Intro</h1>',
                '<a href="chapter.html#sec-one">good</a>',
                '<a href="chapter.html">good</a>',
                '<a href="#top">good</a>',
                '<a href="#">good</a>',
                '<a href="../book/">good</a>',
                '<a href="https://example.org/missing.html#nowhere">external</a>',
                '<a href="mailto:someone@example.org">external</a>',
                '<img src="../_images/there.png" alt="" />',
                '<img src="data:image/png;base64,AAAA" alt="" />',
                '<link rel="stylesheet" href="../_static/style.css?v=1" />',
                '<a href="../_sources/intro.md">good</a>',
                '<a href="missing.html">broken</a>',
                '<a href="chapter.html#sec-two">broken</a>',
                '<a href="#nowhere">broken</a>',
                '<img src="../_images/gone.png" alt="" />',
                '<a href="../../outside.html">broken</a>',
                "</section>",
            ]
        ),
    )
    _write(site / "book" / "chapter.html", '<section id="sec-one"><span id="label"></span>')
    _write(site / "book" / "index.html", "")
    _write(site / "_static" / "fragment.html", '<a href="nowhere.html">not a page</a>')
    for name in ("_images/there.png", "_static/style.css", "_sources/intro.md"):
        (site / name).parent.mkdir(parents=True, exist_ok=True)
        (site / name).write_bytes(b"")

    problems = broken_references(site)
    assert problems == [
        "book/intro.html:15: <a> missing.html: no such file",
        "book/intro.html:16: <a> chapter.html#sec-two: book/chapter.html has no element with id "
        "'sec-two'",
        "book/intro.html:17: <a> #nowhere: book/intro.html has no element with id 'nowhere'",
        "book/intro.html:18: <img> ../_images/gone.png: no such file",
        "book/intro.html:19: <a> ../../outside.html: leads out of the site",
    ]
    (site / "book" / "intro.html").unlink()
    assert broken_references(site) == ["index.html:3: <meta refresh> book/intro.html: no such file"]
