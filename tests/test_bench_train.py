"""bench train runs end to end at a tiny size (its numbers are not tested: it is no timed test)."""

from __future__ import annotations

import json

from dyntemp.bench import train as bench


def test_bench_train_runs_and_writes_its_results(tmp_path, capsys):
    out = tmp_path / "bench"
    arguments = "--images 64 --batch-size 32 --steps 1 --rounds 1 --workers 0 --no-gpu"
    assert bench.main([*arguments.split(), "--out", str(out)]) == 0
    payload = json.loads((out / "results.json").read_text())
    rates = payload["cpu"]["median_images_per_s"]
    assert rates["dyntemp"] > 0 and rates["reference"] > 0
    assert "dyntemp" in capsys.readouterr().out
