"""The stored results reach every reader: a checkout, an installed package, a folder or a URL
named by DYNTEMP_RESULTS, each file checked against the manifest."""

from __future__ import annotations

import contextlib
import functools
import http.server
import json
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from dyntemp import experiments, stored

RESULTS = Path(__file__).resolve().parents[1] / "results"


def test_the_manifest_lists_every_stored_file_with_its_checksum():
    written = json.loads((RESULTS / stored.MANIFEST).read_text())
    assert written == stored.manifest(RESULTS), (
        "results/MANIFEST.json is stale: run python -m dyntemp.stored manifest"
    )
    assert len(written["files"]) > 300  # the whole cpu study and the benchmarks


def test_a_run_in_progress_is_not_listed(tmp_path):
    (tmp_path / "done").mkdir()
    (tmp_path / "running").mkdir()
    for name in ("config.json", "results.json", "metrics.jsonl"):
        (tmp_path / "done" / name).write_text("{}")
    for name in ("config.json", "metrics.jsonl"):
        (tmp_path / "running" / name).write_text("{}")
    (tmp_path / "bench.json").write_text("{}")
    listed = stored.stored_files(tmp_path)
    assert listed == ["bench.json", "done/config.json", "done/metrics.jsonl", "done/results.json"]


def test_a_checkout_reads_its_own_results(monkeypatch):
    monkeypatch.delenv(stored.ENV, raising=False)
    assert stored.read_root() == RESULTS
    assert stored.write_root() == RESULTS
    assert stored.read_json("bench-loss/results.json")["provenance"]["machine"]
    assert stored.relative(RESULTS / "cpu" / "fixed-0.2") == "results/cpu/fixed-0.2"


def test_a_folder_in_the_variable_overrides_where_the_study_is_read(monkeypatch, tmp_path):
    shutil.copytree(RESULTS / "bench-loss", tmp_path / "bench-loss")
    (tmp_path / "bench-loss" / "results.json").write_text('{"marker": 1}')
    monkeypatch.setenv(stored.ENV, str(tmp_path))
    assert stored.read_json("bench-loss/results.json") == {"marker": 1}
    assert experiments.run_dir("fixed-0.2", 0, "cpu") == tmp_path / "cpu" / "fixed-0.2" / "seed0"
    with pytest.raises(stored.StoredResultsError, match="no stored file cpu/x.json"):
        stored.read_json("cpu/x.json")
    monkeypatch.setenv(stored.ENV, str(tmp_path / "nowhere"))
    with pytest.raises(stored.StoredResultsError, match="neither a folder nor a URL"):
        stored.read_root()


def test_an_installed_package_reads_its_copy_and_writes_beside_the_reader(monkeypatch, tmp_path):
    copy = tmp_path / "site" / "_results"
    shutil.copytree(RESULTS / "cpu" / "fixed-0.2", copy / "cpu" / "fixed-0.2")
    monkeypatch.delenv(stored.ENV, raising=False)
    monkeypatch.setattr(stored, "checkout", lambda: None)
    monkeypatch.setattr(stored, "packaged", lambda: copy)
    monkeypatch.chdir(tmp_path)
    assert stored.read_root() == copy
    assert experiments.run_dir("fixed-0.2", 1, "cpu") == copy / "cpu" / "fixed-0.2" / "seed1"
    # a run the copy lacks is trained beside the reader, never into the installed package
    missing = experiments.run_dir("fixed-0.5", 0, "cpu")
    assert missing == tmp_path / "results" / "cpu" / "fixed-0.5" / "seed0"
    monkeypatch.setattr(stored, "packaged", lambda: None)
    with pytest.raises(stored.StoredResultsError, match="carries none; set DYNTEMP_RESULTS"):
        stored.read_root()


@contextlib.contextmanager
def serving(folder: Path) -> Iterator[str]:
    """``folder`` served over HTTP on localhost, quietly."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/results"
    finally:
        server.shutdown()
        server.server_close()


def test_a_url_is_fetched_once_and_checked_against_the_manifest(monkeypatch, tmp_path):
    served = tmp_path / "served" / "results"
    shutil.copytree(RESULTS / "cpu" / "fixed-0.2", served / "cpu" / "fixed-0.2")
    shutil.copytree(RESULTS / "bench-loss", served / "bench-loss")
    own = stored.manifest(served)
    monkeypatch.setattr(stored, "own_manifest", lambda: own)
    monkeypatch.setenv("DYNTEMP_CACHE", str(tmp_path / "cache"))
    with serving(tmp_path / "served") as url:
        monkeypatch.setenv(stored.ENV, url)
        root = stored.read_root()
        assert root.is_relative_to(tmp_path / "cache")
        assert sorted(stored.stored_files(root)) == sorted(own["files"])
        original = stored.read_json("bench-loss/results.json")
        assert original == json.loads((served / "bench-loss" / "results.json").read_text())
        # the runs of the stored study are found where the chapters look for them
        run = experiments.load(experiments.run_dir("fixed-0.2", 0, "cpu"))
        assert run["results"]["knn_top1"] > 50
        # a file that differs from the package's commit is refused, with one line
        (served / "bench-loss" / "results.json").write_text('{"changed": true}')
        (root / "bench-loss" / "results.json").unlink()
        with pytest.raises(stored.StoredResultsError, match="differs from the file of this"):
            stored.read_root()
        # a URL with nothing behind it
        monkeypatch.setenv(stored.ENV, url.replace("/results", "/elsewhere"))
        with pytest.raises(stored.StoredResultsError, match="cannot fetch http://127.0.0.1"):
            stored.read_root()
