"""The book's experiments: named training configs at four scales, run once and reused.

A *scale* says how big every run of the study is (the preset of the same name in
``dyntemp.config``):

- ``cpu``: the ``small`` network on all of CIFAR-10, trained for real (3,120 SGD steps) in
  about 3 minutes a run on a 2-core CPU; the stored study of the book;
- ``colab``: ResNet-18 sized so that one chapter trains in about 15 minutes on a T4;
- ``gpu``: the paper's CIFAR-10 setting (ResNet-18, 200 epochs, batch 128, all 50,000
  training images): about a day for the five main configs on one GPU, about four days for
  the whole study;
- ``smoke``: a handful of steps, to check that every chapter runs end to end.

``DYNTEMP_SCALE`` chooses the scale of the chapters. Without it they show the stored ``cpu``
study and train nothing; with it they train what that scale lacks, after saying how many
runs and about how long (``plan``), measured on the machine at hand.

A *config* is a name of the study (``fixed-0.2``, ``dystress-0.1-0.2``, ``macl``, ...) that
adds the temperature rule and, for the long-tailed runs, the dataset to the scale's
settings. ``run_or_load(name, seed, scale)`` returns the finished run in
``results/<scale>/<name>/seed<k>/`` when that folder holds one with the same config, and
trains it there otherwise (at ``smoke`` scale in a temporary folder, never in ``results/``).
After training it also writes ``eval.json`` (``python -m dyntemp eval``) and
``embedding.json``: histograms of the similarities of the projections, where the loss's
temperature acts, and for seed 0 a 2-D t-SNE map of test images. ``untrained(seed, scale)``
is the kNN accuracy of the same network before any training, the baseline of every table
(``long_tailed=True``: against the long-tailed training images, the baseline of those runs).

``python -m dyntemp.experiments study cpu`` runs the whole study at one scale;
``python -m dyntemp.experiments table cpu`` prints the table of chapter 9.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import shlex
import sys
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from dyntemp import parts, runs, stored
from dyntemp import train as training
from dyntemp.augment import ViewBatches
from dyntemp.config import PRESETS, TrainConfig

# The verdicts, under the names the chapters use (see dyntemp.stats).
from dyntemp.stats import describe, difference, holm, mean_and_spread, verdict  # noqa: F401

SCALES = ("smoke", "cpu", "colab", "gpu")

# What every run of a scale shares: the preset of the same name (the gpu scale is the
# paper's setting, where torchvision fetches CIFAR-10 if DYNTEMP_DATA has none).
SCALE_PRESETS: dict[str, str] = {
    "gpu": "paper-cifar10",
    "colab": "colab",
    "cpu": "cpu",
    "smoke": "smoke",
}
SCALE_SETTINGS: dict[str, dict[str, Any]] = {
    scale: {**PRESETS[name], **({"download": True} if scale == "gpu" else {})}
    for scale, name in SCALE_PRESETS.items()
}

# The seeds of every config at each scale.
SEEDS: dict[str, tuple[int, ...]] = {
    "gpu": (0, 1, 2),
    "colab": (0,),
    "cpu": (0, 1, 2),
    "smoke": (0,),
}
#: The scale whose runs are stored in the repository, shown when no scale is asked for.
STORED_SCALE = "cpu"

# The main comparison: fixed temperatures against DySTreSS with two ranges.
MAIN: dict[str, dict[str, Any]] = {
    "fixed-0.1": {"temperature": "fixed", "tau": 0.1},
    "fixed-0.2": {"temperature": "fixed", "tau": 0.2},
    "fixed-0.5": {"temperature": "fixed", "tau": 0.5},
    "dystress-0.1-0.2": {"temperature": "dystress", "tau_min": 0.1, "tau_max": 0.2},
    "dystress-0.07-0.2": {"temperature": "dystress", "tau_min": 0.07, "tau_max": 0.2},
}

# Long-tailed CIFAR-10 with imbalance ratio 0.01 (5,000 images of the first class, 50 of
# the last; 12,406 in all). At cpu scale a long-tailed run takes all 12,406 images for 32
# epochs of batch 128: 3,072 SGD steps, as many as a balanced cpu run. At smoke scale it
# only checks that the code runs.
LONG_TAILED: dict[str, Any] = {"dataset": "cifar10-lt", "imbalance": 0.01}
LONG_TAILED_SCALE: dict[str, dict[str, Any]] = {
    "gpu": {},
    "cpu": {"epochs": 32, "eval_every": 4},
    # All 12,406 images for 16 epochs: about the 200,000 images of a balanced colab run.
    "colab": {"subset": None, "epochs": 16, "eval_every": 4},
    "smoke": {"subset": 250},
}

# Kukleva et al.'s schedule: one temperature for all pairs, from 1.0 down to 0.1 and back
# with a period of 400 epochs in a 200-epoch run. The period is scaled with the run's
# length: twice its number of epochs, so every scale sees the same half period.
SCHEDULE: dict[str, Any] = {"temperature": "schedule", "tau_min": 0.1, "tau_max": 1.0}

# The ablations, in the order in which the study runs them (most important first).
ABLATIONS: dict[str, dict[str, Any]] = {
    "lt-dystress-0.1-0.2": {**LONG_TAILED, **MAIN["dystress-0.1-0.2"]},
    "lt-schedule": {**LONG_TAILED, **SCHEDULE},
    # MACL as its authors run it (the temperature and the reweighting 1 / (1 - P_ip)), and
    # its temperature alone.
    "macl": {"temperature": "macl", "tau": 0.1, "alpha": 0.5, "reweight": True},
    "macl-no-reweight": {"temperature": "macl", "tau": 0.1, "alpha": 0.5, "reweight": False},
    # A temperature learned with the network, as CLIP does, from 0.2.
    "learned-0.2": {"temperature": "learned", "tau": 0.2},
    # MoCo v2's momentum encoder and queue, with a fixed temperature and with DySTreSS.
    "moco-fixed-0.2": {"method": "moco", **MAIN["fixed-0.2"]},
    "moco-dystress-0.1-0.2": {"method": "moco", **MAIN["dystress-0.1-0.2"]},
    "schedule": dict(SCHEDULE),
    "dystress-in-graph": {**MAIN["dystress-0.1-0.2"], "detach_temperature": False},
    "shifted": {
        "temperature": "shifted",
        "tau_min": 0.1,
        "tau_max": 0.2,
        "shift": -0.4,
        "width": 0.7,
    },
    "linear": {"temperature": "linear", "tau_min": 0.1, "tau_max": 0.2},
    "exponential": {"temperature": "exponential", "tau_min": 0.1, "tau_max": 0.2, "rate": 3.5},
    "dystress-0.07-0.1": {"temperature": "dystress", "tau_min": 0.07, "tau_max": 0.1},
    "lt-fixed-0.2": {**LONG_TAILED, **MAIN["fixed-0.2"]},
    # A reader's own rule, written as one formula: DySTreSS's range with a parabola.
    "formula-quadratic": {"temperature": "formula", "formula": "0.1 + 0.1*s**2"},
    # The same run in float32: does the bf16 arithmetic of the CPU study change anything?
    "fixed-0.2-fp32": {**MAIN["fixed-0.2"], "amp": "off", "channels_last": "off"},
}

CONFIGS: dict[str, dict[str, Any]] = {**MAIN, **ABLATIONS}

# Short labels for tables and legends.
LABELS: dict[str, str] = {
    "fixed-0.1": "fixed τ = 0.1",
    "fixed-0.2": "fixed τ = 0.2",
    "fixed-0.5": "fixed τ = 0.5",
    "dystress-0.1-0.2": "DySTreSS (0.1, 0.2)",
    "dystress-0.07-0.2": "DySTreSS (0.07, 0.2)",
    "lt-dystress-0.1-0.2": "CIFAR-10-LT, DySTreSS (0.1, 0.2)",
    "lt-schedule": "CIFAR-10-LT, Kukleva schedule",
    "lt-fixed-0.2": "CIFAR-10-LT, fixed τ = 0.2",
    "macl": "MACL (τ0 = 0.1, α = 0.5, reweighted)",
    "macl-no-reweight": "MACL's temperature alone (τ0 = 0.1, α = 0.5)",
    "learned-0.2": "learned τ (from 0.2)",
    "moco-fixed-0.2": "MoCo, fixed τ = 0.2",
    "moco-dystress-0.1-0.2": "MoCo, DySTreSS (0.1, 0.2)",
    "schedule": "Kukleva schedule (0.1, 1.0)",
    "dystress-in-graph": "DySTreSS (0.1, 0.2), τ in the graph",
    "shifted": "shifted DySTreSS (Δs = -0.4, k = 0.7)",
    "linear": "linear (0.1, 0.2)",
    "exponential": "exponential (0.1, 0.2, c = 3.5)",
    "dystress-0.07-0.1": "DySTreSS (0.07, 0.1)",
    "formula-quadratic": "formula τ = 0.1 + 0.1 s²",
    "fixed-0.2-fp32": "fixed τ = 0.2, float32",
}

# Numbers reported by the paper (weighted 200-NN top-1 %, ResNet-18, 200 epochs), quoted
# from reviews of it; no seeds or spreads are reported. The paper does not say which range
# its CIFAR-10 DySTreSS number used; the official CIFAR script defaults to (0.07, 0.2).
REPORTED: dict[str, tuple[str, float]] = {
    "fixed-0.2": ("SimCLR, CIFAR-10", 83.65),
    "macl": ("MACL, CIFAR-10", 84.85),
    "dystress-0.07-0.2": ("DySTreSS, CIFAR-10", 85.68),
    "lt-schedule": ("Kukleva et al., CIFAR-10-LT", 62.91),
    "lt-dystress-0.1-0.2": ("DySTreSS, CIFAR-10-LT", 64.98),
}

EMBEDDING_FILE = runs.EMBEDDING_FILE
MAP_POINTS = 1_000  # test images in the 2-D map
MAPPED = ("fixed-0.1", "fixed-0.5", "dystress-0.1-0.2")  # configs with a map (seed 0)


# ----------------------------------------------------------------------------- configs


def default_scale() -> str:
    """``DYNTEMP_SCALE`` if set, else the stored study's scale (never one that trains)."""
    return check_scale(os.environ.get("DYNTEMP_SCALE") or STORED_SCALE)


def may_train() -> bool:
    """True when the reader asked for a scale (``DYNTEMP_SCALE``): only then do the chapters
    train what is not stored."""
    return bool(os.environ.get("DYNTEMP_SCALE"))


def check_scale(scale: str) -> str:
    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}; choose one of {', '.join(SCALES)}")
    return scale


def check_config(name: str) -> str:
    if name not in CONFIGS:
        raise ValueError(f"unknown config {name!r}; known: {', '.join(CONFIGS)}")
    return name


def is_long_tailed(name: str) -> bool:
    """Whether config ``name`` trains on long-tailed CIFAR-10."""
    return CONFIGS[name].get("dataset") == LONG_TAILED["dataset"]


def settings(name: str, scale: str) -> dict[str, Any]:
    """The TrainConfig fields of config ``name`` at ``scale`` that differ from the defaults."""
    check_scale(scale)
    fields = {**SCALE_SETTINGS[scale], **CONFIGS[check_config(name)]}
    if is_long_tailed(name):
        fields.update(LONG_TAILED_SCALE[scale])
    if fields.get("temperature") == "schedule":
        fields["period"] = 2.0 * fields.get("epochs", TrainConfig.epochs)
    defaults = TrainConfig()
    return {k: v for k, v in fields.items() if getattr(defaults, k) != v}


def config(name: str, seed: int = 0, scale: str | None = None, **changes: Any):
    """The TrainConfig of run ``seed`` of config ``name`` at ``scale``, writing into its folder."""
    scale = default_scale() if scale is None else check_scale(scale)
    fields = {"out": str(run_dir(name, seed, scale)), "seed": seed, "progress": False}
    return TrainConfig(**{**fields, **settings(name, scale), **changes})


def seeds(name: str, scale: str) -> tuple[int, ...]:
    """The seeds of ``name`` at ``scale``: the same for every config (the study runs the
    ablations' later seeds after all the first ones, so a stopped study has the most
    configs covered)."""
    check_config(name)
    return SEEDS[check_scale(scale)]


# ----------------------------------------------------------------------------- folders


def results_root() -> Path:
    """Where the stored study is read from (see ``dyntemp.stored``)."""
    return stored.read_root()


_smoke_root: Path | None = None


def smoke_root() -> Path:
    """Where smoke-scale runs go: ``DYNTEMP_SMOKE_DIR`` if set, else a temporary folder."""
    global _smoke_root
    if os.environ.get("DYNTEMP_SMOKE_DIR"):
        return Path(os.environ["DYNTEMP_SMOKE_DIR"])
    if _smoke_root is None:
        _smoke_root = Path(tempfile.mkdtemp(prefix="dyntemp-smoke-"))
    return _smoke_root


def run_dir(name: str, seed: int, scale: str) -> Path:
    """``results/<scale>/<name>/seed<k>``: the stored folder where there is one, else where
    a new run goes (``dyntemp.stored.write_root``; a temporary folder at smoke scale)."""
    if check_scale(scale) == "smoke":
        return smoke_root() / name / f"seed{seed}"
    found = results_root() / scale / name / f"seed{seed}"
    return found if found.is_dir() else stored.write_root() / scale / name / f"seed{seed}"


def relative(path: str | os.PathLike) -> str:
    """``path`` as the repository names it (``results/...``), with forward slashes."""
    return stored.relative(path)


def train_command(cfg) -> str:
    """The ``python -m dyntemp train`` command line that trains ``cfg``."""
    defaults = TrainConfig()
    out = cfg.out if not Path(cfg.out).is_absolute() else relative(cfg.out)
    words = ["python", "-m", "dyntemp", "train", "--out", out]
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if f.name in ("out", "progress") or (
            value == getattr(defaults, f.name) and f.name != "temperature"
        ):
            continue
        flag = "--" + f.name.replace("_", "-")
        if isinstance(value, bool):
            words.append(flag if value else "--no-" + flag[2:])
        elif value is not None:
            words += [flag, f"{value:g}" if isinstance(value, float) else str(value)]
    return shlex.join(words)


# ----------------------------------------------------------------------------- runs


def finished(folder: str | os.PathLike, cfg: TrainConfig | None = None) -> bool:
    """True if ``folder`` holds a finished run (of ``cfg``, when given)."""
    if not runs.is_finished(folder):
        return False
    saved, _ = runs.read_saved_config(Path(folder))
    return cfg is None or runs.same_config(saved, cfg.as_dict())


#: Two configs describe the same run (see ``dyntemp.runs``).
same_config = runs.same_config
#: A finished run: config, results, metrics and evaluations (see ``dyntemp.runs``).
load = runs.load


def evaluated(folder: str | os.PathLike) -> bool:
    """True if the run in ``folder`` has both of its evaluations (eval.json, embedding.json)."""
    return all((Path(folder) / name).exists() for name in runs.EVALUATION_FILES)


def run_or_load(
    name: str, seed: int = 0, scale: str | None = None, *, evaluate: bool = True
) -> dict[str, Any]:
    """The finished run ``seed`` of config ``name`` at ``scale``: loaded, or trained first.

    A folder holding a run of another config is an error (never overwritten). After
    training, ``evaluate`` also writes ``eval.json`` and ``embedding.json``.
    """
    scale = default_scale() if scale is None else check_scale(scale)
    cfg = config(name, seed, scale)
    folder = Path(cfg.out)
    if not finished(folder, cfg):
        if scale != "smoke":  # a relative folder keeps machine paths out of the files
            cfg = dataclasses.replace(cfg, out=os.path.relpath(folder))
        training.train(cfg, command=train_command(dataclasses.replace(cfg, out=relative(folder))))
    trained = (folder / runs.CHECKPOINT_FILE).exists()
    if evaluate and trained and not evaluated(folder):
        evaluate_folder(folder, tsne=seed == 0 and name in MAPPED)
    return load(folder)


def evaluate_folder(folder: str | os.PathLike, *, tsne: bool = True) -> None:
    """Write whichever of ``eval.json`` and ``embedding.json`` the trained run in ``folder``
    lacks; each is written whole, so an interruption leaves the run visibly unevaluated."""
    from dyntemp import data, evaluate, run_metrics

    folder = Path(folder)
    if not (folder / runs.EVAL_FILE).exists():
        run_metrics.evaluate_run(folder, device="auto")
    if (folder / EMBEDDING_FILE).exists():
        return
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cfg, model, _ = run_metrics.load_run(folder, device)
    _, test_set = parts.load_data(cfg)
    augment = parts.build_augment(cfg, test_set.images.shape[-1])
    view1, view2 = evaluate.extract_view_features(
        model, test_set.images, augment, seed=cfg.seed, device=device
    )
    histograms = evaluate.similarity_histograms(view1, view2, test_set.labels)
    embedding: dict[str, Any] = {
        "projector_histograms": {k: v.tolist() for k, v in histograms.items()},
        "test_images": len(test_set),
    }
    if tsne:
        points = data.balanced_subset(test_set, min(MAP_POINTS, len(test_set)))
        features = evaluate.extract_features(
            model.backbone, points.images, augment.unaugmented, device=device
        )
        embedding["tsne"] = {**tsne_map(features), "labels": points.labels.tolist()}
        embedding["classes"] = list(test_set.classes)
    text = json.dumps(embedding, separators=(",", ":")) + "\n"
    runs.atomic_write_bytes(folder / EMBEDDING_FILE, text.encode())


def tsne_map(features: torch.Tensor, seed: int = 0) -> dict[str, list[float]]:
    """A 2-D t-SNE of L2-normalised features (scikit-learn, PCA start, fixed seed)."""
    from sklearn.manifold import TSNE

    points = torch.nn.functional.normalize(features.double(), dim=1).cpu().numpy()
    perplexity = min(30.0, (len(points) - 1) / 3)
    tsne = TSNE(2, perplexity=perplexity, init="pca", max_iter=500, random_state=seed)
    xy = tsne.fit_transform(points)
    return {
        "x": [round(float(v), 3) for v in xy[:, 0]],
        "y": [round(float(v), 3) for v in xy[:, 1]],
    }


# ----------------------------------------------------------------------------- baseline

UNTRAINED = "untrained"
UNTRAINED_LONG_TAILED = "untrained-lt"
UNTRAINED_FILE = "untrained.json"


def untrained_folder(seed: int, scale: str, *, long_tailed: bool = False) -> Path:
    return run_dir(UNTRAINED_LONG_TAILED if long_tailed else UNTRAINED, seed, scale)


def untrained(
    seed: int = 0, scale: str | None = None, *, long_tailed: bool = False, compute: bool = True
) -> dict | None:
    """The kNN top-1 of the scale's network before any training (initialised with ``seed``),
    evaluated exactly as the trained runs are: what training adds is measured from here.
    With ``long_tailed`` the kNN's training images are those of the long-tailed runs.

    Stored in ``results/<scale>/untrained[-lt]/seed<k>/untrained.json`` (with its
    provenance); computed when missing if ``compute`` (seconds: one pass over the images).
    """
    from dyntemp import distributed, provenance

    scale = default_scale() if scale is None else check_scale(scale)
    path = untrained_folder(seed, scale, long_tailed=long_tailed) / UNTRAINED_FILE
    cfg = config("lt-fixed-0.2" if long_tailed else "fixed-0.2", seed, scale)
    if path.exists():
        stored = runs.read_json(path)
        if runs.same_config(stored["config"], cfg.as_dict()):  # "out" is not compared
            return stored
    if not compute:
        return None
    train_set, test_set = parts.load_data(cfg)
    device = distributed.choose_device(cfg.device)
    torch.manual_seed(cfg.seed)  # the initial weights every run of this seed starts from
    model = parts.build_model(cfg).to(device)
    augment = parts.build_augment(cfg, train_set.images.shape[-1])
    (accuracy,) = parts.knn_scores(model.backbone, train_set, [test_set], augment, cfg, device)
    result = {
        "knn_top1": accuracy,
        "config": cfg.as_dict(),
        "provenance": {
            **provenance.provenance(device),
            "dataset": {
                "train_images": len(train_set),
                "train_fingerprint": train_set.fingerprint,
                "test_images": len(test_set),
                "test_fingerprint": test_set.fingerprint,
            },
        },
    }
    result["config"]["out"] = relative(path.parent) if scale != "smoke" else str(path.parent)
    result["provenance"]["command"] = (
        f'python -c "from dyntemp import experiments; '
        f"experiments.untrained({seed}, '{scale}'{', long_tailed=True' if long_tailed else ''})\""
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    runs.atomic_write_json(path, result)
    return result


# ----------------------------------------------------------------------------- plans


def missing(names: Iterable[str], scale: str) -> list[tuple[str, int]]:
    """The (config, seed) runs of ``names`` at ``scale`` that are not finished yet."""
    return [
        (name, seed)
        for name in names
        for seed in seeds(name, scale)
        if not finished(run_dir(name, seed, scale), config(name, seed, scale))
    ]


def step_seconds(scale: str, steps: int = 6) -> float:
    """Seconds of one training step of the scale's network on this machine, measured."""
    import time

    from dyntemp import distributed

    cfg = config("fixed-0.2", 0, scale)
    device = distributed.choose_device(cfg.device)
    images = torch.randint(0, 256, (2 * cfg.batch_size, 3, 32, 32), dtype=torch.uint8)
    run = training.start_run(cfg, distributed.Context(0, 1, 0, device), images)
    batches = ViewBatches(run.images, cfg.batch_size, run.augment, seed=0, epoch=0)
    view1, view2 = next(iter(batches))
    times = []
    for step in range(steps):
        begin = time.perf_counter()
        training.train_step(run, view1, view2, step).item()
        times.append(time.perf_counter() - begin)
    return sorted(times[steps // 2 :])[0] if steps > 1 else times[0]


def plan(names: Iterable[str], scale: str) -> str:
    """What training ``names`` at ``scale`` would take here: runs, steps, estimated time."""
    todo = missing(list(names), scale)
    if not todo:
        return f"all runs of these configs are stored at {scale} scale: nothing to train"
    seconds = step_seconds(scale)
    total = sum(steps(config(name, seed, scale)) for name, seed in todo)
    minutes = total * seconds / 60
    return (
        f"{len(todo)} runs to train at {scale} scale ({total:,} steps); one step takes "
        f"{1000 * seconds:.0f} ms here, so about {minutes:.0f} minutes of training, plus "
        f"evaluation"
    )


#: Training images of each dataset (CIFAR-10-LT at the imbalance of the study, 0.01).
TRAIN_IMAGES = {"cifar10": 50_000, "cifar100": 50_000, "cifar10-lt": 12_406}


# An estimate of a GPU training step at the gpu scale, until a GPU times ours: lightly's public
# CIFAR-10 benchmark, SimCLR with a ResNet-18 for 200 epochs at batch 128 in 97.7 minutes on
# one RTX A6000 (its kNN after every epoch included), over its steps.
LIGHTLY_STEP_SECONDS = 97.7 * 60 / (200 * (TRAIN_IMAGES["cifar10"] // 128))


def training_images(cfg: TrainConfig) -> int:
    """The training images of a run of ``cfg``: its subset, else its whole data set."""
    return cfg.subset or TRAIN_IMAGES.get(cfg.dataset, 50_000)


def steps(cfg: TrainConfig) -> int:
    """The SGD steps of a run of ``cfg`` (one process): images per epoch over the batch."""
    return (training_images(cfg) // cfg.batch_size) * cfg.epochs


# ----------------------------------------------------------------------------- tables


def collect(
    names: Iterable[str], scale: str, *, train: bool = False, evaluate: bool = False
) -> dict[str, list[dict[str, Any]]]:
    """The finished runs of each config (all its seeds); with ``train``, missing ones are run
    (and with ``evaluate`` also evaluated, as ``run_or_load`` does)."""
    found: dict[str, list[dict[str, Any]]] = {}
    for name in names:
        found[name] = []
        for seed in seeds(name, scale):
            if train:
                found[name].append(run_or_load(name, seed, scale, evaluate=evaluate))
            elif finished(run_dir(name, seed, scale), config(name, seed, scale)):
                found[name].append(load(run_dir(name, seed, scale)))
    return found


def results_table(scale: str, names: Iterable[str] | None = None) -> list[dict[str, Any]]:
    """One row per config with finished runs: our kNN top-1 (mean, spread) and the paper's.

    Each row: ``name``, ``label``, ``seeds``, ``knn_top1`` (one value per seed), ``mean``,
    ``spread`` (sample standard deviation over seeds), ``folders`` (relative to the
    repository root) and ``reported`` (the paper's number, or None) with ``reported_as``.
    """
    rows = []
    for name, found in collect(CONFIGS if names is None else names, scale).items():
        if not found:
            continue
        accuracies = [run["results"]["knn_top1"] for run in found]
        mean, spread = mean_and_spread(accuracies)
        reported_as, reported = REPORTED.get(name, (None, None))
        rows.append(
            {
                "name": name,
                "label": LABELS[name],
                "seeds": [run["config"]["seed"] for run in found],
                "knn_top1": accuracies,
                "mean": mean,
                "spread": spread,
                "folders": [relative(run["folder"]) for run in found],
                "reported": reported,
                "reported_as": reported_as,
            }
        )
    return rows


# ----------------------------------------------------------------------------- the study


def study(scale: str, names: Sequence[str] | None = None) -> None:
    """Run every config of the study at ``scale``: the untrained baselines, the main configs
    seed by seed, then the ablations seed by seed (the first seed of every ablation before
    any second one); finished runs are skipped, so a stopped study resumes where it stopped."""
    names = list(CONFIGS) if names is None else [check_config(n) for n in names]
    main = [n for n in names if n in MAIN]
    ablations = [n for n in names if n not in MAIN]
    order = [(n, s) for s in SEEDS[scale] for n in main]
    order += [(n, s) for s in SEEDS[scale] for n in ablations]
    banks = [False] + ([True] if any(is_long_tailed(n) for n in names) else [])
    for long_tailed, seed in itertools.product(banks, SEEDS[scale]):
        # The baseline of every table: the network before training.
        baseline = untrained(seed, scale, long_tailed=long_tailed)
        label = "untrained" + (" (long-tailed)" if long_tailed else "")
        print(f"{label} seed {seed}: kNN top-1 {baseline['knn_top1']:.2f} %", flush=True)
    for index, (name, seed) in enumerate(order, 1):
        print(f"[{index}/{len(order)}] {name} seed {seed}", flush=True)
        run = run_or_load(name, seed, scale)
        wall = run["results"]["provenance"]["wall_time_s"]
        print(f"  kNN top-1 {run['results']['knn_top1']:.2f} %, {wall:.0f} s", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dyntemp.experiments", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("study", help="run (or resume) the study at one scale")
    run.add_argument("scale", choices=SCALES)
    run.add_argument("names", nargs="*", help="only these configs (default: all)")
    table = commands.add_parser("table", help="print the results table of one scale")
    table.add_argument("scale", choices=SCALES)
    args = parser.parse_args(argv)
    try:
        if args.command == "study":
            study(args.scale, args.names or None)
        else:
            for row in results_table(args.scale):
                print(f"{row['label']:<40} {describe(row['knn_top1'])}")
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
