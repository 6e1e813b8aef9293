"""The book's study, as a catalogue: which configs it compares, at which scales, with which
seeds, and what the paper reported. Nothing here trains or reads a run: ``dyntemp.experiments``
runs and tabulates what this module names.

A *scale* says how big every run of the study is (the preset of the same name in
``dyntemp.config``): ``cpu`` (the ``small`` network on all of CIFAR-10, 3,120 SGD steps, the
stored study of the book), ``colab`` (ResNet-18 sized for one chapter in about 15 minutes on
a T4), ``gpu`` (the paper's CIFAR-10 setting) and ``smoke`` (a handful of steps).
``DYNTEMP_SCALE`` chooses the scale of the chapters (``default_scale``).

A *config* is a name (``fixed-0.2``, ``dystress-0.1-0.2``, ``macl``, ...) that adds the
temperature rule and, for the long-tailed runs, the dataset to the scale's settings
(``settings``).

>>> settings("fixed-0.2", "cpu")["tau"], settings("fixed-0.2", "cpu")["model"], seeds("macl", "cpu")
(0.2, 'small', (0, 1, 2))
"""

from __future__ import annotations

import os
from typing import Any

from dyntemp.config import PRESETS, TrainConfig

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
    # The rest of the field's temperatures (issue 21), each as its authors' code runs it:
    # DySTreSS as the NeurIPS-2023 submission's code ran it (the negatives' cosine upside down);
    "dystress-neurips-0.1-0.2": {"temperature": "dystress-neurips", "tau_min": 0.1, "tau_max": 0.2},
    # Kim and Kim's temperature-free InfoNCE, the logits 2 atanh(s), the gradient through them;
    "temperature-free": {"temperature": "temperature-free", "detach_temperature": False},
    # Zhang et al.'s dual temperature, their tau = 0.1 and dt_m = 10 (tau_inter = 1);
    "dual-0.1-10": {"temperature": "dual", "tau": 0.1, "dt_m": 10.0},
    # iSogCLR's individual temperatures with LibAUC's defaults (from 0.1, in [0.05, 0.7]).
    "isogclr": {"temperature": "isogclr"},
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
    "shifted": "shifted DySTreSS (Δs = -0.4, w = 0.7)",
    "linear": "linear (0.1, 0.2)",
    "exponential": "exponential (0.1, 0.2, c = 3.5)",
    "dystress-0.07-0.1": "DySTreSS (0.07, 0.1)",
    "formula-quadratic": "formula τ = 0.1 + 0.1 s²",
    "fixed-0.2-fp32": "fixed τ = 0.2, float32",
    "dystress-neurips-0.1-0.2": "DySTreSS (0.1, 0.2), NeurIPS-2023 code",
    "temperature-free": "temperature-free InfoNCE (logit 2 atanh s)",
    "dual-0.1-10": "dual temperature (τ = 0.1, τ_inter = 1)",
    "isogclr": "iSogCLR (τ_i from 0.1, in [0.05, 0.7])",
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

MAPPED = ("fixed-0.1", "fixed-0.5", "dystress-0.1-0.2")  # configs with a map (seed 0)

# ----------------------------------------------------------------------------- names


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


def seeds(name: str, scale: str) -> tuple[int, ...]:
    """The seeds of ``name`` at ``scale``: the same for every config (the study runs the
    ablations' later seeds after all the first ones, so a stopped study has the most
    configs covered)."""
    check_config(name)
    return SEEDS[check_scale(scale)]


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
