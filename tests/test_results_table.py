"""The stored runs under results/ and the table of the results chapter agree.

Every run folder ``results/<scale>/<config>/seed<k>/`` holds its config, its per-epoch
metrics and ``results.json`` with provenance, and is the run its name says. The table that
``experiments.results_table`` computes equals an independent reading of those files, and
the results chapter, stored executed at cpu scale, shows exactly that table, below a first
row for the untrained network read from its stored files.
"""

from __future__ import annotations

import dataclasses
import json
import re
import statistics
from collections import defaultdict
from pathlib import Path

import pytest
import yaml

from dyntemp import catalogue, experiments, stats

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results"
CHAPTER = ROOT / "notebooks" / "09_results.ipynb"
RUN_FOLDERS = sorted(path.parent for path in RESULTS.glob("*/*/seed*/results.json"))
SCALES = sorted({folder.parts[-3] for folder in RUN_FOLDERS})


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


def _name(folder: Path) -> str:
    return folder.relative_to(ROOT).as_posix()


def test_the_cpu_study_is_stored() -> None:
    names = {folder.parts[-2] for folder in RUN_FOLDERS if folder.parts[-3] == "cpu"}
    assert set(catalogue.MAIN) <= names
    for name in catalogue.MAIN:
        assert len(list((RESULTS / "cpu" / name).glob("seed*/results.json"))) >= 3, name


@pytest.mark.parametrize("folder", RUN_FOLDERS, ids=_name)
def test_run_folder_holds_a_finished_run_with_provenance(folder: Path) -> None:
    scale, name, seed_dir = folder.parts[-3:]
    seed = int(seed_dir.removeprefix("seed"))
    config = _json(folder / "config.json")["config"]
    results = _json(folder / "results.json")
    metrics = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]

    # The folder holds the run its name says, finished, and its numbers agree.
    wanted = dataclasses.asdict(experiments.run_config(name, seed, scale))
    assert experiments.same_config(config, wanted)
    assert [m["epoch"] for m in metrics] == list(range(1, config["epochs"] + 1))
    assert results["epochs"] == config["epochs"]
    assert results["knn_top1"] == metrics[-1]["knn_top1"]

    source = results["provenance"]
    assert source["command"].startswith("python -m dyntemp train --out ")
    assert f"--out results/{scale}/{name}/seed{seed} " in source["command"]
    assert re.fullmatch(r"[0-9a-f]{40}(\+dirty)?", source["git_commit"])
    assert source["machine"]["device"] and source["machine"]["cpu_cores"] >= 1
    assert source["wall_time_s"] > 0
    data = source["dataset"]
    assert re.fullmatch(r"[0-9a-f]{64}", data["train_fingerprint"])
    assert re.fullmatch(r"[0-9a-f]{64}", data["test_fingerprint"])
    if config["subset"] is not None:
        assert data["train_images"] == config["subset"]
    # No machine's folders in the stored files: the data come from DYNTEMP_DATA.
    assert config["data_root"] is None and not Path(config["out"]).is_absolute()


@pytest.mark.parametrize("folder", RUN_FOLDERS, ids=_name)
def test_run_folder_is_small_and_has_no_checkpoint_in_git(folder: Path) -> None:
    import subprocess

    tracked = subprocess.run(
        ["git", "ls-files", "--", str(folder)], cwd=ROOT, capture_output=True, text=True
    ).stdout.split()
    assert not [path for path in tracked if path.endswith(".pt")]
    for path in folder.iterdir():
        if path.suffix != ".pt":
            assert path.stat().st_size < 1_000_000, path.name


@pytest.mark.parametrize("scale", SCALES)
def test_results_table_matches_the_files(scale: str) -> None:
    accuracies: dict[str, dict[int, float]] = defaultdict(dict)
    for folder in RUN_FOLDERS:
        if folder.parts[-3] == scale:
            seed = int(folder.name.removeprefix("seed"))
            accuracies[folder.parts[-2]][seed] = _json(folder / "results.json")["knn_top1"]

    rows = experiments.results_table(scale)
    assert {row["name"] for row in rows} == set(accuracies)
    paper = (ROOT / "book" / "paper.md").read_text()
    for row in rows:
        by_seed = accuracies[row["name"]]
        assert row["seeds"] == sorted(by_seed)
        assert row["knn_top1"] == [by_seed[s] for s in sorted(by_seed)]
        values = list(by_seed.values())
        assert row["mean"] == pytest.approx(statistics.mean(values), abs=1e-12)
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        assert row["spread"] == pytest.approx(spread, abs=1e-12)
        assert row["folders"] == [f"results/{scale}/{row['name']}/seed{s}" for s in sorted(by_seed)]
        if row["reported"] is not None:  # quoted as the book's page on the paper quotes it
            assert f"{row['reported']:.2f}" in paper


def _table_output(notebook: dict) -> str:
    for cell in notebook["cells"]:
        for output in cell.get("outputs", []):
            text = "".join(output.get("data", {}).get("text/markdown", ""))
            if text.startswith("| config |"):
                return text
    raise AssertionError("the results chapter shows no table")


def test_results_chapter_shows_the_stored_table() -> None:
    notebook = _json(CHAPTER)
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    repository = config["repository"]["url"]
    shown = _table_output(notebook)
    header = [cell.strip() for cell in shown.splitlines()[0].strip("|").split("|")]
    assert header[1].startswith("ours, cpu scale") and len(header) == 3  # no paper column
    lines = shown.splitlines()[2:]

    # First the untrained network, against the balanced and the long-tailed training images,
    # read from its stored files.
    seeds = catalogue.SEEDS["cpu"]
    baselines = {
        "untrained network": "untrained",
        "untrained network, long-tailed bank": "untrained-lt",
    }
    for line, (label, folder) in zip(lines, baselines.items(), strict=False):
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        assert cells[0] == label
        stored = [_json(RESULTS / "cpu" / folder / f"seed{s}" / "untrained.json") for s in seeds]
        assert cells[1] == stats.describe([result["knn_top1"] for result in stored])
        targets = re.findall(r"\]\(([^)]+)\)", cells[2])
        assert targets == [f"{repository}/tree/main/results/cpu/{folder}/seed{s}" for s in seeds]

    # Then one row per config, as results_table computes it.
    rows = experiments.results_table("cpu")
    assert len(lines) == len(baselines) + len(rows)
    for line, row in zip(lines[len(baselines) :], rows, strict=True):
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        assert cells[0] == row["label"]
        assert cells[1] == stats.describe(row["knn_top1"])
        targets = re.findall(r"\]\(([^)]+)\)", cells[2])
        assert targets == [f"{repository}/tree/main/{folder}" for folder in row["folders"]]
        for folder in row["folders"]:
            assert (ROOT / folder / "results.json").exists()
