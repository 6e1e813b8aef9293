"""The loss benchmark runs and reports every candidate (its timings are not tested)."""

from __future__ import annotations

import json

from dyntemp.bench import loss as bench


def test_bench_loss_prints_table_and_writes_results(tmp_path, capsys):
    assert bench.main(["--sizes", "8", "--dim", "4", "--repeats", "1", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "dyntemp ntxent, DySTreSS(0.1, 0.2)" in printed
    assert "plain autograd, DySTreSS(0.1, 0.2)" in printed
    payload = json.loads((tmp_path / "results.json").read_text())
    assert payload["benchmark"] == "loss" and "command" in payload["provenance"]
    rows = payload["rows"]
    assert {r["views"] for r in rows} == {8}
    assert all(r["ms"] > 0 for r in rows)
