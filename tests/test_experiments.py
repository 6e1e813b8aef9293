"""The study's scales and safety: one notion of a scale, nothing trains unless asked, plans
say what training would take, and the untrained baseline is computed like every run."""

from __future__ import annotations

import json

import pytest
import torch

from dyntemp import catalogue, experiments
from dyntemp import config as configs


def test_every_scale_is_the_preset_of_its_name():
    for scale in catalogue.SCALES:
        preset = configs.PRESETS[catalogue.SCALE_PRESETS[scale]]
        assert preset.items() <= catalogue.SCALE_SETTINGS[scale].items(), scale
        cfg = experiments.run_config("fixed-0.2", 0, scale)
        for key, value in preset.items():
            assert getattr(cfg, key) == value, (scale, key)


def test_without_a_scale_the_chapters_show_the_stored_study(monkeypatch):
    monkeypatch.delenv("DYNTEMP_SCALE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a Colab GPU runtime
    assert catalogue.default_scale() == catalogue.STORED_SCALE == "cpu"
    assert not catalogue.may_train()
    monkeypatch.setenv("DYNTEMP_SCALE", "gpu")
    assert catalogue.default_scale() == "gpu" and catalogue.may_train()
    monkeypatch.setenv("DYNTEMP_SCALE", "huge")
    with pytest.raises(ValueError, match="unknown scale 'huge'"):
        catalogue.default_scale()


def test_a_plan_counts_the_missing_runs_and_their_time(monkeypatch, tmp_path):
    monkeypatch.setattr(experiments, "results_root", lambda: tmp_path)
    monkeypatch.setattr(experiments, "step_seconds", lambda scale: 0.05)
    text = experiments.plan(["fixed-0.2", "fixed-0.5"], "gpu")
    steps = 2 * 3 * (50_000 // 128) * 200  # 2 configs x 3 seeds x steps of 200 epochs
    assert text.startswith(f"6 runs to train at gpu scale ({steps:,} steps)")
    assert f"about {steps * 0.05 / 60:.0f} minutes" in text


def test_a_step_is_timed_on_the_scales_own_network(monkeypatch):
    """The estimate times the scale's config with the step timer (which has its own tests)."""
    timed = []

    def timer(config, *, steps):
        timed.append((config, steps))
        return 0.25

    monkeypatch.setattr(experiments.timing, "step_seconds", timer)
    for scale in ("smoke", "gpu"):
        assert experiments.step_seconds(scale, steps=4) == 0.25
    assert timed == [(experiments.run_config("fixed-0.2", 0, s), 4) for s in ("smoke", "gpu")]
    assert timed[0][0].model == "small" and timed[1][0].model == "resnet18"


@pytest.mark.data
def test_the_untrained_baseline_is_stored_and_reused(cifar10_root, monkeypatch, tmp_path):
    monkeypatch.setenv("DYNTEMP_SMOKE_DIR", str(tmp_path))
    first = experiments.untrained(0, "smoke")
    assert 0 < first["knn_top1"] < 100
    path = tmp_path / "untrained" / "seed0" / experiments.UNTRAINED_FILE
    stored = json.loads(path.read_text())
    assert stored["knn_top1"] == first["knn_top1"]
    assert stored["provenance"]["dataset"]["test_images"] == 100
    assert experiments.untrained(0, "smoke", compute=False) == stored
    other = experiments.untrained(1, "smoke")  # another initialisation
    assert other["config"]["seed"] == 1


@pytest.mark.data
def test_the_long_tailed_runs_have_their_own_untrained_baseline(
    cifar10_root, monkeypatch, tmp_path
):
    monkeypatch.setenv("DYNTEMP_SMOKE_DIR", str(tmp_path))
    balanced = experiments.untrained(0, "smoke")
    long_tailed = experiments.untrained(0, "smoke", long_tailed=True)
    path = tmp_path / "untrained-lt" / "seed0" / experiments.UNTRAINED_FILE
    assert json.loads(path.read_text())["knn_top1"] == long_tailed["knn_top1"]
    assert long_tailed["config"]["dataset"] == "cifar10-lt"
    assert balanced["config"]["dataset"] == "cifar10"
    fingerprints = [
        r["provenance"]["dataset"]["train_fingerprint"] for r in (balanced, long_tailed)
    ]
    assert fingerprints[0] != fingerprints[1]  # the kNN's training images differ
    assert "long_tailed=True" in long_tailed["provenance"]["command"]
    assert experiments.untrained(0, "smoke", long_tailed=True, compute=False) == long_tailed


@pytest.mark.parametrize("scale", catalogue.SCALES)
def test_every_config_has_settings_at_every_scale(scale):
    for name in catalogue.CONFIGS:
        assert catalogue.steps(experiments.run_config(name, 0, scale)) > 0, (name, scale)


def test_a_long_tailed_colab_run_sees_as_many_images_as_a_balanced_one():
    def images(name: str) -> int:
        cfg = experiments.run_config(name, 0, "colab")
        return cfg.epochs * (cfg.subset or 12_406)

    assert images("lt-fixed-0.2") == pytest.approx(images("fixed-0.2"), rel=0.01)


def test_steps_of_a_run():
    assert catalogue.steps(experiments.run_config("fixed-0.2", 0, "gpu")) == (50_000 // 128) * 200
    lt = experiments.run_config("lt-fixed-0.2", 0, "gpu")
    assert catalogue.steps(lt) == (12_406 // 128) * 200


@pytest.mark.parametrize("name", list(catalogue.CONFIGS))
def test_every_cpu_run_trains_at_least_3000_steps(name):
    cfg = experiments.run_config(name, 0, "cpu")
    assert catalogue.steps(cfg) >= 3_000, name
    assert 0 < cfg.eval_every < cfg.epochs  # learning curves: the kNN every few epochs
