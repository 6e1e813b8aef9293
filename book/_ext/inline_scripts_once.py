"""Write every inline script of a page once.

Sphinx 7.4 adds an inline script registered at ``builder-inited`` twice (once as filename
None, once as ''), and sphinx-thebe's ``const THEBE_JS_URL = ...`` declared twice is a
JavaScript SyntaxError in the reader's browser console. Drop the repeats page by page.
"""

from __future__ import annotations

from typing import Any

from sphinx.application import Sphinx


def _drop_repeats(app: Sphinx, pagename: str, templatename: str, context: dict, doctree) -> None:
    scripts = context.get("script_files")
    if not isinstance(scripts, list):
        return
    seen: set[tuple] = set()
    unique = []
    for script in scripts:
        key = (
            getattr(script, "filename", script) or "",
            tuple(sorted(getattr(script, "attributes", {}).items())),
        )
        if key not in seen:
            seen.add(key)
            unique.append(script)
    scripts[:] = unique


def setup(app: Sphinx) -> dict[str, Any]:
    app.connect("html-page-context", _drop_repeats, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
