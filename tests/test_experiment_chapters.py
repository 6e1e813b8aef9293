"""The experiment chapters (6-9) as stored: the cpu study, read without training, with
verdicts that are tests.

The chapters are committed executed without ``DYNTEMP_SCALE``: they must show the stored
study and train nothing; every verdict they print is Welch's test with Holm's adjustment
over a family the chapter names; the untrained baseline they show is stored for every seed,
evaluated on the same images as the runs it starts.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from dyntemp import catalogue, experiments

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = sorted((ROOT / "notebooks").glob("0[6-9]_*.ipynb"))
NOT_TRAINING = "DYNTEMP_SCALE is not set: the stored cpu study is shown, nothing is trained"


def _cells(path: Path) -> list[dict]:
    return json.loads(path.read_text())["cells"]


def _code(path: Path) -> str:
    return "\n".join("".join(c["source"]) for c in _cells(path) if c["cell_type"] == "code")


def _outputs(path: Path) -> str:
    texts = []
    for cell in _cells(path):
        for output in cell.get("outputs", []):
            texts.append("".join(output.get("text", "")))
            texts.append("".join(output.get("data", {}).get("text/markdown", "")))
    return "\n".join(texts)


def test_there_are_four_experiment_chapters() -> None:
    assert [p.name[:2] for p in CHAPTERS] == ["06", "07", "08", "09"]


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_a_chapter_trains_only_when_a_scale_is_asked_for(path: Path) -> None:
    code = _code(path)
    assert "train=True" not in code and "run_or_load(" not in code
    for call in re.findall(r"collect\([^)]*\)", code):
        assert "train=train" in call, call
    assert "train = catalogue.may_train()" in code
    assert "experiments.plan(" in code  # what training would take, said before it starts


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_a_chapter_is_stored_showing_the_stored_study(path: Path) -> None:
    shown = _outputs(path)
    assert "scale: cpu" in shown and NOT_TRAINING in shown
    assert "Traceback" not in shown


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_verdicts_are_holm_adjusted_tests(path: Path) -> None:
    shown, text = _outputs(path), json.dumps(_cells(path))
    assert "twice its standard error" not in text and "larger than the spread" not in text
    assert re.search(r"The family: \d+ .*Holm-adjusted at the 0\.05 level", shown)
    verdicts = [line for line in shown.splitlines() if "at the 0.05 level" in line]
    verdicts = [line for line in verdicts if "The family" not in line]
    assert verdicts
    for line in verdicts:
        assert "Welch" in line or "paired t" in line, line
        assert re.search(r"Holm-adjusted p [=<] [01]\.\d{3}", line), line


@pytest.mark.parametrize("long_tailed", [False, True], ids=["balanced", "long-tailed"])
def test_the_untrained_baseline_is_stored_for_every_cpu_seed(long_tailed: bool) -> None:
    runs = {}
    for seed in catalogue.SEEDS["cpu"]:
        stored = experiments.untrained(seed, "cpu", long_tailed=long_tailed, compute=False)
        assert stored is not None, f"seed {seed}: no untrained.json matching the cpu config"
        assert 0 < stored["knn_top1"] < 100
        name = "lt-fixed-0.2" if long_tailed else "fixed-0.2"
        trained = experiments.load(experiments.run_dir(name, seed, "cpu"))
        runs[seed] = stored
        # The same images as the runs it is the start of.
        ours, theirs = stored["provenance"]["dataset"], trained["results"]["provenance"]["dataset"]
        assert ours["train_fingerprint"] == theirs["train_fingerprint"]
        assert ours["test_fingerprint"] == theirs["test_fingerprint"]
        assert stored["config"]["data_root"] is None
        assert not Path(stored["config"]["out"]).is_absolute()
    # Three initialisations, three baselines: the seed reaches the weights.
    assert len({result["knn_top1"] for result in runs.values()}) > 1


def test_chapter_6_starts_every_accuracy_curve_at_the_untrained_network() -> None:
    shown = _outputs(ROOT / "notebooks" / "06_training.ipynb")
    values = [
        experiments.untrained(s, "cpu", compute=False)["knn_top1"] for s in catalogue.SEEDS["cpu"]
    ]
    listed = ", ".join(f"{value:.2f}" for value in values)
    assert f"untrained network      kNN top-1 (%) per seed: {listed}" in shown


def _separation(histograms: dict) -> float:
    # (mean same-class similarity - mean other-class) / sd of the other-class similarities.
    edges = histograms["edges"]
    s = [(a + b) / 2 for a, b in zip(edges[:-1], edges[1:], strict=True)]

    def mean_and_sd(counts: list[float]) -> tuple[float, float]:
        total = sum(counts)
        mean = sum(x * c for x, c in zip(s, counts, strict=True)) / total
        return mean, (
            sum(c * (x - mean) ** 2 for x, c in zip(s, counts, strict=True)) / total
        ) ** 0.5

    (same, _), (other, spread) = (mean_and_sd(histograms[g]) for g in ("same_class", "other_class"))
    return (same - other) / spread


def test_chapter_7s_backbone_exercise_states_what_the_stored_runs_show() -> None:
    # Its solution: the projections separate same-class from other-class negatives better, by
    # about 0.4 to 0.6 standard deviations against 0.3 to 0.4 for the backbone, in every run.
    for name in catalogue.MAIN:
        for seed in catalogue.SEEDS["cpu"]:
            run = experiments.load(experiments.run_dir(name, seed, "cpu"))
            backbone = _separation(run["eval"]["histograms"])
            projections = _separation(run["embedding"]["projector_histograms"])
            assert 0.25 <= backbone <= 0.45 and 0.35 <= projections <= 0.65, (name, seed)
            assert projections > backbone, (name, seed)
