"""The stored results: where the book's runs and benchmarks are read from, and where new
runs are written.

A reader meets the library in one of three places, and each finds the same files:

- **a checkout** of the repository: ``results/`` beside the package, read and written;
- **an installed package** (``pip install git+https://github.com/dyntemp/dyntemp``, as in
  Colab): the package carries a copy of the ``results/`` of its own commit
  (``dyntemp/_results``), read-only; runs the reader trains go to ``./results``;
- **``DYNTEMP_RESULTS``**, which overrides both: a folder (read and written), or the URL of
  a ``results/`` folder served over HTTP (the raw files of the repository at some commit,
  or a mirror behind a proxy). Its files are fetched once into a cache folder and each is
  checked against the SHA-256 that ``MANIFEST.json`` of the package's own results lists,
  so a reader sees exactly the study of the installed commit, or a one-line error.

Why ship rather than fetch by default: the files are small (a few MB beside torch's GB),
the chapters then work offline and behind firewalls, and the copy cannot drift from the
package's commit. ``MANIFEST.json`` lists every stored file with its checksum; a test keeps
it current (``python -m dyntemp.stored manifest`` rewrites it).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ENV = "DYNTEMP_RESULTS"
MANIFEST = "MANIFEST.json"
STORED_SUFFIXES = (".json", ".jsonl")
_PACKAGED = "_results"  # the copy of results/ inside an installed package


class StoredResultsError(ValueError):
    """The stored results cannot be found or fetched (one line, saying what to do)."""


# ----------------------------------------------------------------------------- where


def checkout() -> Path | None:
    """The repository checkout holding this package, or None (an installed package)."""
    here = Path(__file__).resolve().parents[1]
    if (here / "pyproject.toml").exists() and (here / "results").is_dir():
        return here
    return None


def packaged() -> Path | None:
    """The installed package's copy of ``results/``, or None (a checkout)."""
    copy = Path(__file__).resolve().parent / _PACKAGED
    return copy if copy.is_dir() else None


def own_root() -> Path | None:
    """The results this package came with: the checkout's ``results/`` or the installed
    copy (None when neither exists)."""
    root = checkout()
    return root / "results" if root is not None else packaged()


def read_root() -> Path:
    """The folder the stored study is read from (``DYNTEMP_RESULTS``, the checkout's
    ``results/``, or the package's copy)."""
    override = os.environ.get(ENV)
    if override:
        if "://" in override:
            return fetch(override)
        path = Path(override).expanduser()
        if not path.is_dir():
            raise StoredResultsError(f"{ENV}={override} is neither a folder nor a URL")
        return path
    root = own_root()
    if root is not None:
        return root
    raise StoredResultsError(
        f"no stored results: this installation of dyntemp carries none; set {ENV} to a "
        f"results folder or to the URL of one"
    )


def write_root() -> Path:
    """Where new runs go: ``DYNTEMP_RESULTS`` when it is a folder, the checkout's
    ``results/``, else ``./results`` (an installed package's copy is never written)."""
    override = os.environ.get(ENV)
    if override and "://" not in override:
        return Path(override).expanduser()
    root = checkout()
    return root / "results" if root is not None else Path.cwd() / "results"


def path(relative: str) -> Path:
    """The stored file or folder ``relative`` to ``results/`` (e.g. ``bench-loss/results.json``)."""
    return read_root() / relative


def locate(name: str) -> Path:
    """The folder or file a table names: ``results/...`` is found wherever the stored
    results are read from; any other name is a path as it stands (a smoke-scale run's
    temporary folder, say)."""
    return path(name.removeprefix("results/")) if name.startswith("results/") else Path(name)


def read_json(relative: str) -> Any:
    """A stored JSON file, by its path relative to ``results/``.

    >>> read_json("bench-loss/results.json")["provenance"]["command"].split()[:4]
    ['python', '-m', 'dyntemp', 'bench']
    """
    file = path(relative)
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise StoredResultsError(f"no stored file {relative} in {read_root()}") from None
    except (OSError, json.JSONDecodeError) as error:
        raise StoredResultsError(f"cannot read {file}: {error}") from None


def relative(location: str | os.PathLike) -> str:
    """``location`` as the repository names it: ``results/...`` for a stored file wherever it
    was read from, else relative to the checkout, else as given (forward slashes)."""
    location = Path(location).resolve()
    for base, prefix in ((_resolved(read_root, True), "results/"), (checkout(), "")):
        if base is None:
            continue
        try:
            return prefix + location.relative_to(base.resolve()).as_posix()
        except ValueError:
            continue
    return location.as_posix()


def _resolved(where, quiet: bool) -> Path | None:
    try:
        return where()
    except StoredResultsError:
        if quiet:
            return None
        raise


# ----------------------------------------------------------------------------- the manifest


def stored_files(root: Path) -> list[str]:
    """The files of the stored study under ``root``: every JSON file, except those of a run
    still in progress (a run folder without its results.json) and the manifest itself."""
    found = []
    for file in sorted(root.rglob("*")):
        if not file.is_file() or file.suffix not in STORED_SUFFIXES or file.name == MANIFEST:
            continue
        folder = file.parent
        in_progress = (folder / "config.json").exists() and not (folder / "results.json").exists()
        if not in_progress:
            found.append(file.relative_to(root).as_posix())
    return found


def sha256(file: Path) -> str:
    return hashlib.sha256(file.read_bytes()).hexdigest()


def manifest(root: Path) -> dict[str, Any]:
    """``{"files": {relative path: sha256}}`` of the stored files under ``root``."""
    return {"files": {name: sha256(root / name) for name in stored_files(root)}}


def write_manifest(root: Path) -> Path:
    """Rewrite ``MANIFEST.json`` of the results folder ``root``."""
    target = root / MANIFEST
    text = json.dumps(manifest(root), indent=1, sort_keys=True) + "\n"
    target.write_text(text, encoding="utf-8")
    return target


def own_manifest() -> dict[str, Any]:
    """The manifest of the results this package came with (checkout or installed copy)."""
    root = own_root()
    if root is not None and (root / MANIFEST).exists():
        return json.loads((root / MANIFEST).read_text(encoding="utf-8"))
    raise StoredResultsError(f"this installation of dyntemp has no {MANIFEST} to check {ENV} by")


# ----------------------------------------------------------------------------- fetching


def cache_root() -> Path:
    """``DYNTEMP_CACHE``, else the user's cache folder (``XDG_CACHE_HOME`` or ~/.cache)."""
    if os.environ.get("DYNTEMP_CACHE"):
        return Path(os.environ["DYNTEMP_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "dyntemp"


def fetch(url: str, *, workers: int = 8) -> Path:
    """The files of the package's manifest, fetched from ``url`` (once) into the cache and
    checked against their checksums; returns the cached ``results`` folder."""
    files = own_manifest()["files"]
    key = hashlib.sha256((url + json.dumps(files, sort_keys=True)).encode()).hexdigest()[:16]
    folder = cache_root() / "results" / key
    todo = [
        name
        for name, digest in files.items()
        if not (folder / name).exists() or sha256(folder / name) != digest
    ]
    base = url.rstrip("/")

    def one(name: str) -> None:
        address = f"{base}/{name}"
        try:
            with urllib.request.urlopen(address, timeout=60) as response:
                payload = response.read()
        except (urllib.error.URLError, OSError, ValueError) as error:
            reason = getattr(error, "reason", None) or error
            raise StoredResultsError(f"cannot fetch {address}: {reason}") from None
        if hashlib.sha256(payload).hexdigest() != files[name]:
            raise StoredResultsError(
                f"{address} differs from the file of this package's commit (its SHA-256 does "
                f"not match {MANIFEST}); point {ENV} at the results of the installed commit"
            )
        target = folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=target.parent, suffix=".tmp")
        with os.fdopen(handle, "wb") as out:
            out.write(payload)
        os.replace(temporary, target)

    if todo:
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(one, todo))
    return folder


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv != ["manifest"]:
        print("usage: python -m dyntemp.stored manifest", file=sys.stderr)
        return 2
    root = checkout()
    if root is None:
        print("error: the manifest is written in a checkout of the repository", file=sys.stderr)
        return 2
    target = write_manifest(root / "results")
    print(f"{len(manifest(root / 'results')['files'])} files listed in results/{target.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
