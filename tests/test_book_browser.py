"""The built book in a real browser (headless Chromium driven by Playwright).

Every page of ``_build/html`` is served on 127.0.0.1 and must load without console errors,
without failed requests, and without a single request to another host; its images must be
loaded, its formulas typeset by the local MathJax, its exercises' solutions folded, and each
chapter's Colab button must open that chapter's notebook on the ``main`` branch of the
repository named in ``_config.yml``.

Run ``make book`` first (``make test`` does). Without Chromium the test is skipped, except in
CI, where it fails.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SITE = ROOT / "_build" / "html"
COLAB = "https://colab.research.google.com"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

# Text outside code and outside typeset formulas that still looks like TeX: a formula that
# MathJax did not render.
FIND_RAW_TEX = r"""() => {
  const skip = "pre, code, script, style, mjx-container, .math, .highlight, .search";
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  const found = [];
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    if (node.parentElement.closest(skip)) continue;
    if (/\\[a-zA-Z]+|\$/.test(node.textContent)) found.push(node.textContent.trim().slice(0, 80));
  }
  return found;
}"""

# Images that are not shown: not loaded, or loaded with no pixels.
FIND_BROKEN_IMAGES = """async () => {
  const images = Array.from(document.images);
  images.forEach((img) => { img.loading = "eager"; });
  await Promise.all(images.map((img) => img.decode().catch(() => null)));
  return images.filter((img) => !(img.complete && img.naturalWidth > 0)).map((img) => img.src);
}"""


def _config() -> dict:
    return yaml.safe_load((ROOT / "_config.yml").read_text())


def _toc_files() -> list[str]:
    """Every document of _toc.yml, as a path without suffix."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [toc["root"]]

    def walk(entries: list[dict]) -> None:
        for entry in entries:
            if "file" in entry:
                files.append(entry["file"])
            for key in ("parts", "chapters", "sections"):
                walk(entry.get(key, []))

    walk([toc])
    return files


def _source(doc: str) -> Path:
    for suffix in (".ipynb", ".md"):
        if (ROOT / f"{doc}{suffix}").exists():
            return ROOT / f"{doc}{suffix}"
    raise FileNotFoundError(f"{doc} in _toc.yml has no .ipynb or .md source")


def _has_math(source: Path) -> bool:
    """Whether a page's source has a formula: in its prose, or a LaTeX output of a cell."""
    if source.suffix == ".ipynb":
        cells = json.loads(source.read_text())["cells"]
        prose = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
        outputs = [out for cell in cells for out in cell.get("outputs", [])]
        if any("text/latex" in out.get("data", {}) for out in outputs):
            return True
    else:
        prose = source.read_text()
    prose = re.sub(r"`[^`\n]*`", "", _without_code_blocks(prose))  # and without inline code
    return bool(re.search(r"\$[^$\s][^$]*\$|\\begin\{|\{math\}", prose))


def _without_code_blocks(markdown: str) -> str:
    """The markdown less its fenced code blocks; the fences of directives (```{name}) stay."""
    kept: list[str] = []
    code_fence: str | None = None
    directive_fences: list[str] = []
    for line in markdown.splitlines():
        fence = re.match(r"\s*(`{3,}|~{3,})\s*(\S*)", line)
        if code_fence is not None:
            if fence and fence.group(1) == code_fence and not fence.group(2):
                code_fence = None
            continue
        if fence and fence.group(2).startswith("{"):
            directive_fences.append(fence.group(1))
        elif fence and not fence.group(2) and directive_fences[-1:] == [fence.group(1)]:
            directive_fences.pop()
        elif fence:
            code_fence = fence.group(1)
            continue
        kept.append(line)
    return "\n".join(kept)


def _stored_figures(source: Path) -> int:
    if source.suffix != ".ipynb":
        return len(re.findall(r"^```\{(?:figure|image)\}|!\[", source.read_text(), flags=re.M))
    cells = json.loads(source.read_text())["cells"]
    outputs = [out for cell in cells for out in cell.get("outputs", [])]
    return sum("image/png" in out.get("data", {}) for out in outputs)


def _captioned_figures(source: Path) -> list[tuple[str, str]]:
    """(caption, alt) of the cells that give their figure a caption (cell metadata mystnb)."""
    if source.suffix != ".ipynb":
        return []
    cells = json.loads(source.read_text())["cells"]
    found = []
    for cell in cells:
        options = cell.get("metadata", {}).get("mystnb", {})
        if "figure" in options:
            caption = options["figure"].get("caption", "")
            found.append((caption, options.get("image", {}).get("alt", "")))
    return found


# Figures that carry a caption on the page, with the alt text of their image.
FIND_CAPTIONED = """() => Array.from(document.querySelectorAll("main figure")).map((fig) => {
  const img = fig.querySelector("img");
  const caption = fig.querySelector("figcaption");
  // Sphinx turns ' into a typographic apostrophe; compare with the source's
  const text = caption ? caption.textContent.trim().replace(/\u2019/g, "'") : "";
  return [text, img ? img.alt : ""];
})"""


def _solutions(source: Path) -> list[str]:
    """The summaries of the solutions a chapter folds in HTML <details>, in order."""
    if source.suffix != ".ipynb":
        return []
    cells = json.loads(source.read_text())["cells"]
    prose = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
    return re.findall(r"<summary>(Solution to exercise [\d.]+)</summary>", prose)


# The solutions on the page: their summary, and whether they are open.
FIND_SOLUTIONS = """() => Array.from(document.querySelectorAll("main details > summary"))
  .filter((summary) => summary.textContent.trim().startsWith("Solution to exercise"))
  .map((summary) => [summary.textContent.trim(), summary.parentElement.open])"""


PAGES = [f"{doc}.html" for doc in _toc_files()] + ["index.html", "genindex.html", "search.html"]


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        message = "Chromium is not installed (Debian: apt-get install chromium)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


class _QuietHandler(SimpleHTTPRequestHandler):
    extensions_map = {**SimpleHTTPRequestHandler.extensions_map, ".woff": "font/woff"}

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


@pytest.fixture(scope="module")
def site() -> Iterator[str]:
    """The built book, served on a free port of 127.0.0.1."""
    if not (SITE / "index.html").is_file():
        pytest.fail(f"the book is not built ({SITE.relative_to(ROOT)} is missing): run `make book`")
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_QuietHandler, directory=str(SITE)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def browser(site: str) -> Iterator[object]:
    executable = _chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


def test_every_built_page_is_checked() -> None:
    if not (SITE / "index.html").is_file():
        pytest.fail(f"the book is not built ({SITE.relative_to(ROOT)} is missing): run `make book`")
    built = {
        path.relative_to(SITE).as_posix()
        for path in SITE.rglob("*.html")
        if path.relative_to(SITE).parts[0] not in {"_static", "_sources", "_images"}
    }
    assert built == set(PAGES)


@pytest.mark.parametrize("page_path", PAGES)
def test_page_in_browser(site: str, browser, page_path: str) -> None:  # noqa: ANN001
    page = browser.new_page()
    console_errors: list[str] = []
    failed: list[str] = []
    outside: list[str] = []

    def route(route) -> None:  # noqa: ANN001
        if urlsplit(route.request.url).hostname == "127.0.0.1":
            route.continue_()
        else:  # never let a request leave the machine; record it instead
            outside.append(route.request.url)
            route.abort()

    page.route("**/*", route)
    page.on("console", lambda msg: msg.type == "error" and console_errors.append(msg.text))
    page.on("pageerror", lambda error: console_errors.append(str(error)))
    page.on("requestfailed", lambda req: failed.append(f"{req.url} ({req.failure})"))
    page.on("response", lambda res: res.status < 400 or failed.append(f"{res.url} {res.status}"))

    page.goto(f"{site}/{page_path}", wait_until="networkidle")

    doc = page_path.removesuffix(".html")
    source = _source(doc) if doc in _toc_files() else None
    has_math = bool(page.query_selector(".math"))
    if source is not None and _has_math(source):
        assert has_math, f"{page_path}: its source has math but the page has none"
    if has_math:
        page.wait_for_function("() => window.MathJax && MathJax.startup && MathJax.startup.promise")
        page.evaluate("() => MathJax.startup.promise.then(() => document.fonts.ready)")
        untypeset = page.eval_on_selector_all(
            ".math", "els => els.filter(e => !e.querySelector('mjx-container')).length"
        )
        assert untypeset == 0, f"{page_path}: {untypeset} formulas not typeset"
        assert not page.query_selector("mjx-merror"), f"{page_path}: a formula has a TeX error"
    raw_tex = page.evaluate(FIND_RAW_TEX)
    assert not raw_tex, f"{page_path}: TeX left in the text: {raw_tex}"

    broken = page.evaluate(FIND_BROKEN_IMAGES)
    assert not broken, f"{page_path}: images not shown: {broken}"
    if source is not None:
        shown = page.eval_on_selector_all("main img", "els => els.length")
        assert shown >= _stored_figures(source), f"{page_path}: figures of the source missing"
        wanted = _captioned_figures(source)
        if source.suffix == ".ipynb":  # every figure of a chapter is captioned
            assert len(wanted) == _stored_figures(source), f"{page_path}: uncaptioned figures"
        if wanted:
            captioned = page.evaluate(FIND_CAPTIONED)
            for caption, alt in wanted:
                assert any(
                    text and caption.split("`")[0].strip()[:40] in text and alt == seen_alt
                    for text, seen_alt in captioned
                ), f"{page_path}: figure {caption[:40]!r} without its caption or alt text"

    if source is not None:
        solutions = page.evaluate(FIND_SOLUTIONS)
        assert [summary for summary, _ in solutions] == _solutions(source), (
            f"{page_path}: solutions {solutions}"
        )
        assert not any(is_open for _, is_open in solutions), f"{page_path}: a solution is open"

    colab_links = page.eval_on_selector_all(f"a[href^='{COLAB}']", "els => els.map(e => e.href)")
    if source is not None and source.suffix == ".ipynb":
        owner_repo = urlsplit(_config()["repository"]["url"]).path.strip("/").removesuffix(".git")
        expected = f"{COLAB}/github/{owner_repo}/blob/main/{doc}.ipynb"
        assert set(colab_links) == {expected}, f"{page_path}: Colab link {colab_links}"
    else:
        assert colab_links == [], f"{page_path}: a page that is not a notebook links to Colab"

    page.close()
    assert outside == [], f"{page_path}: requests to other hosts: {outside}"
    assert failed == [], f"{page_path}: failed requests: {failed}"
    assert console_errors == [], f"{page_path}: console errors: {console_errors}"
