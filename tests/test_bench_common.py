"""The pieces the benchmarks share."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dyntemp.bench import common


def test_write_results_puts_the_sections_between_the_name_and_the_provenance(tmp_path, capsys):
    assert common.write_results(None, "x", {"command": "c"}, rows=[1]) is None
    path = common.write_results(tmp_path / "out", "x", {"command": "c"}, rows=[1], more={"a": 2})
    assert path == tmp_path / "out" / "results.json"
    payload = json.loads(path.read_text())
    assert list(payload) == ["benchmark", "rows", "more", "provenance"]
    assert payload == {
        "benchmark": "x",
        "rows": [1],
        "more": {"a": 2},
        "provenance": {"command": "c"},
    }
    assert f"wrote {path}" in capsys.readouterr().out


def test_per_image_pipeline_makes_normalised_views_of_one_pil_image():
    from PIL import Image

    torch.manual_seed(0)
    image = Image.fromarray(np.full((32, 32, 3), 128, dtype=np.uint8))
    view = common.per_image_pipeline(16, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))(image)
    assert view.shape == (3, 16, 16) and view.dtype == torch.float32
    # A flat gray image stays flat whatever the crop; only the colour jitter moves its level.
    assert float(view.std()) < 1e-5


def test_training_images_are_cifar_from_a_root_or_random(tmp_path):
    from fake_cifar import write_fake_cifar10

    random, said = common.training_images(None, 5)
    assert random.shape == (5, 3, 32, 32) and random.dtype == torch.uint8 and "random" in said
    assert torch.equal(random, common.training_images(None, 5)[0])  # the same every time
    root = write_fake_cifar10(tmp_path / "data")
    real, said = common.training_images(str(root), 7)
    assert real.shape == (7, 3, 32, 32) and said == f"CIFAR-10 from {root}"


def test_a_benchmark_replaces_only_its_own_earlier_result(tmp_path):
    folder = tmp_path / "bench"
    common.write_results(folder, "loss", {"command": "first"})
    common.write_results(folder, "loss", {"command": "again"})  # its own result: replaced
    assert json.loads((folder / "results.json").read_text())["provenance"]["command"] == "again"
    with pytest.raises(ValueError, match="not a result of bench train"):
        common.write_results(folder, "train", {})
    run = tmp_path / "run"  # a training run's folder: never written into
    run.mkdir()
    (run / "config.json").write_text("{}")
    (run / "results.json").write_text('{"knn_top1": 50.0}')
    with pytest.raises(ValueError, match="holds a training run"):
        common.write_results(run, "loss", {})
    assert json.loads((run / "results.json").read_text()) == {"knn_top1": 50.0}
    assert sorted(p.name for p in folder.iterdir()) == ["results.json"]  # no temporary left
