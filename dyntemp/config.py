"""What a training run depends on: ``TrainConfig``, checked before anything is touched, and
the named presets (the paper's setups and the book's scales).

Every field has a command-line flag of the same name (``tau_min`` -> ``--tau-min``) and its
help text; ``check()`` refuses any setting that cannot run with one line that names the
flag. A preset is a set of changes to the defaults: ``preset("cpu", seed=1)``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from dyntemp import data, models, optim, temperature

AMP_MODES = ("auto", "bf16", "fp16", "off")
CHANNELS_LAST_MODES = ("auto", "on", "off")
METHODS = ("simclr", "moco")
# torch.manual_seed takes integers below 2**64; seeds are kept to what every platform's
# 64-bit signed integers hold.
MAX_SEED = 2**63 - 1
MAX_EPOCHS = 1_000_000

# The temperature options of the command line, as every rule's constructor names them.
TEMPERATURE_OPTIONS = (
    "tau",
    "tau_min",
    "tau_max",
    "shift",
    "width",
    "rate",
    "period",
    "alpha",
    "a0",
    "reweight",
    "tau_floor",
    "formula",
)


def _doc(text: str, **kwargs: Any) -> Any:
    return field(metadata={"help": text}, **kwargs)


@dataclass
class TrainConfig:
    """Everything a training run depends on. The defaults are the paper's CIFAR-10 setup.

    ResNet-18 with the CIFAR stem, the 512-512-128 projector, DySTreSS with (0.1, 0.2), SGD
    with learning rate 0.2, weight decay 5e-4 and no momentum (as the official code), cosine
    schedule, batch 128, 200 epochs, 200-NN accuracy every epoch. Each field's help text
    says what it does; the command line has a flag for each.
    """

    out: str | None = _doc("output folder of the run (required)", default=None)
    dataset: str = _doc(f"dataset: {', '.join(data.NAMES)}", default="cifar10")
    data_root: str | None = _doc("data folder (default: DYNTEMP_DATA, then ./data)", default=None)
    download: bool = _doc("download the dataset with torchvision if missing", default=False)
    subset: int | None = _doc(
        "train on a class-balanced subset of this many images (default: all)", default=None
    )
    validation: int | None = _doc(
        "hold out a class-balanced validation set of this many training images (the same for "
        "every run): the kNN during training scores them against the other training images, "
        "and the test set is scored once, at the end (default: none; the kNN scores the test "
        "set)",
        default=None,
    )
    test_subset: int | None = _doc(
        "evaluate on a class-balanced subset of this many test images (default: all)",
        default=None,
    )
    image_size: int | None = _doc(
        "resize every image to this size (default: as stored; needed for folders of mixed sizes)",
        default=None,
    )
    imbalance: float | None = _doc(
        "imbalance ratio of cifar10-lt / cifar100-lt (default: 0.01)", default=None
    )
    model: str = _doc(f"backbone: {', '.join(models.MODELS)}", default="resnet18")
    stem: str = _doc("ResNet stem: cifar (3x3, no max-pool) or imagenet", default="cifar")
    projector_hidden_dim: int = _doc("hidden width of the projector", default=512)
    projector_dim: int = _doc("output width of the projector", default=128)
    temperature: str = _doc(f"temperature rule: {', '.join(temperature.NAMES)}", default="dystress")
    method: str = _doc(
        "simclr (both views of every image against each other) or moco (queries against a "
        "momentum encoder's keys and a queue of past keys)",
        default="simclr",
    )
    moco_momentum: float = _doc(
        "moco: momentum m of the key encoder's moving average (CIFAR scale: 0.99)", default=0.99
    )
    queue_size: int = _doc(
        "moco: keys in the queue of negatives (CIFAR scale: 4096; at least two global batches)",
        default=4096,
    )
    tau: float | None = _doc(
        "fixed: the temperature; macl: its tau0; learned: its initial value", default=None
    )
    tau_min: float | None = _doc(
        "dystress, shifted, linear, exponential, schedule: the lowest temperature", default=None
    )
    tau_max: float | None = _doc(
        "dystress, shifted, linear, exponential, schedule: the highest temperature",
        default=None,
    )
    shift: float | None = _doc("shifted: the shift of the cosine (paper: -0.4)", default=None)
    width: float | None = _doc("shifted: the width of the cosine (paper: 0.7)", default=None)
    rate: float | None = _doc("exponential: the rate c (paper: 3.5)", default=None)
    period: float | None = _doc("schedule: the period in epochs (paper: 400)", default=None)
    alpha: float | None = _doc("macl: the sensitivity alpha (paper: 0.5)", default=None)
    a0: float | None = _doc("macl: the reference positive similarity A0 (paper: 0)", default=None)
    reweight: bool | None = _doc(
        "macl: weight each anchor's loss by the detached 1 / (1 - P_ip), as the authors train "
        "(default: on)",
        default=None,
    )
    tau_floor: float | None = _doc(
        "learned, macl: the lowest temperature (default: 0.01, CLIP's)", default=None
    )
    formula: str | None = _doc(
        "formula: tau as a formula of s and progress (epochs), e.g. '0.1 + 0.05*(1 - cos(pi*s))'",
        default=None,
    )
    detach_temperature: bool = _doc("stop gradients through the temperature", default=True)
    decoupled: bool = _doc(
        "decoupled contrastive loss (positive not in the denominator)", default=False
    )
    epochs: int = _doc("training epochs", default=200)
    batch_size: int = _doc("images per step per process (two views each)", default=128)
    optimizer: str = _doc(f"optimizer: {', '.join(optim.OPTIMIZERS)}", default="sgd")
    lr: float = _doc("peak learning rate", default=0.2)
    lr_schedule: str = _doc(
        f"learning-rate schedule after the warm-up: {', '.join(optim.SCHEDULES)}",
        default="cosine",
    )
    momentum: float = _doc("momentum (the paper's code: none)", default=0.0)
    weight_decay: float = _doc("weight decay", default=5e-4)
    warmup_epochs: float = _doc("epochs of linear learning-rate warm-up", default=0.0)
    crop_scale_min: float = _doc("smallest crop area fraction of RandomResizedCrop", default=0.08)
    blur: float = _doc("probability of Gaussian blur (the paper's CIFAR code: 0)", default=0.0)
    eval_every: int = _doc("weighted kNN every this many epochs (0: only at the end)", default=1)
    knn_k: int = _doc("neighbours of the kNN classifier", default=200)
    knn_temperature: float = _doc("temperature of the weighted kNN votes", default=0.1)
    seed: int = _doc("seed of the initial weights, the shuffle and the views", default=0)
    device: str = _doc("auto (CUDA if available), cpu, cuda or cuda:N", default="auto")
    amp: str = _doc(
        "mixed precision: auto (CUDA: bf16 on compute capability >= 8, else fp16; CPU: bf16 "
        "where the processor computes it natively, else none), bf16, fp16 (CUDA), off",
        default="auto",
    )
    channels_last: str = _doc(
        "channels-last memory format: auto (on CUDA, and with bf16 on the CPU), on, off",
        default="auto",
    )
    compile: bool = _doc("torch.compile the model", default=False)
    progress: bool = _doc("show a progress bar and a line per epoch", default=True)
    force: bool = _doc("start afresh in an output folder holding another run", default=False)

    def temperature_rule(self) -> temperature.TemperatureRule:
        """The rule named by ``temperature`` with the options given for it."""
        given = {key: getattr(self, key) for key in TEMPERATURE_OPTIONS}
        given = {key: value for key, value in given.items() if value is not None}
        if self.temperature == "formula":
            if "formula" not in given:
                raise ValueError("--temperature formula needs --formula, e.g. '0.2 + 0.1*s**2'")
            given["max_progress"] = float(max(self.epochs, 1))  # checked over the whole run
        return temperature.from_name(self.temperature, **given)

    def check(self) -> None:
        """Raise ValueError with one clear line for any setting that cannot run."""
        if not self.out:
            raise ValueError("an output folder is needed (--out)")
        _choice("dataset", self.dataset, data.NAMES)
        _choice("model", self.model, models.MODELS)
        _choice("stem", self.stem, models.STEMS)
        _choice("optimizer", self.optimizer, optim.OPTIMIZERS)
        _choice("amp", self.amp, AMP_MODES)
        _choice("channels_last", self.channels_last, CHANNELS_LAST_MODES)
        _choice("method", self.method, METHODS)
        _choice("lr_schedule", self.lr_schedule, optim.SCHEDULES)
        for name in ("epochs", "batch_size", "projector_hidden_dim", "projector_dim", "knn_k"):
            _integer(name, getattr(self, name), low=1)
        _integer("epochs", self.epochs, high=MAX_EPOCHS)
        _integer("seed", self.seed, low=0, high=MAX_SEED)
        _integer("eval_every", self.eval_every, low=0)
        for name in ("subset", "test_subset", "validation"):
            if getattr(self, name) is not None:
                _integer(name, getattr(self, name), low=1)
        _number("lr", self.lr, positive=True)
        _number("knn_temperature", self.knn_temperature, positive=True)
        _number("weight_decay", self.weight_decay)
        _number("momentum", self.momentum)
        _number("warmup_epochs", self.warmup_epochs)
        _number("crop_scale_min", self.crop_scale_min)
        _number("blur", self.blur)
        if self.batch_size < 2:
            raise ValueError(f"--batch-size must be at least 2 (a negative), got {self.batch_size}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"--momentum must be in [0, 1), got {self.momentum}")
        if self.weight_decay < 0:
            raise ValueError(f"--weight-decay must not be negative, got {self.weight_decay}")
        if not 0 <= self.warmup_epochs <= self.epochs:
            raise ValueError(f"--warmup-epochs must be in [0, epochs], got {self.warmup_epochs}")
        if not 0 < self.crop_scale_min <= 1:
            raise ValueError(f"--crop-scale-min must be in (0, 1], got {self.crop_scale_min}")
        if not 0 <= self.blur <= 1:
            raise ValueError(f"--blur is a probability, got {self.blur}")
        if self.imbalance is not None:
            _number("imbalance", self.imbalance, positive=True)
        _number("moco_momentum", self.moco_momentum)
        if not 0 <= self.moco_momentum < 1:
            raise ValueError(f"--moco-momentum must be in [0, 1), got {self.moco_momentum}")
        _integer("queue_size", self.queue_size, low=1)
        if self.method == "moco" and self.queue_size < 2 * self.batch_size:
            raise ValueError(
                f"--queue-size {self.queue_size} must hold at least the two views' keys of a "
                f"batch ({2 * self.batch_size})"
            )
        if self.image_size is not None:
            _integer("image_size", self.image_size, low=8, high=4096)
        rule = self.temperature_rule()
        if rule.reweight and self.decoupled:
            raise ValueError(
                "MACL's reweighting 1 / (1 - P_ip) needs the positive in the denominator: "
                "use --no-reweight with --decoupled"
            )

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _choice(name: str, value: Any, known: tuple[str, ...]) -> None:
    if value not in known:
        raise ValueError(f"unknown {_flag(name)} {value!r}; choose one of {', '.join(known)}")


def _integer(name: str, value: Any, low: int | None = None, high: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{_flag(name)} must be a whole number, got {value!r}")
    if low is not None and value < low:
        bound = "positive" if low == 1 else f"at least {low}"
        raise ValueError(f"{_flag(name)} must be {bound}, got {value}")
    if high is not None and value > high:
        raise ValueError(f"{_flag(name)} must be at most {high}, got {value}")


def _number(name: str, value: Any, positive: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{_flag(name)} must be a finite number, got {value!r}")
    if positive and not value > 0:
        raise ValueError(f"{_flag(name)} must be positive, got {value}")


# The named settings: the paper's setups, and the scales of the book's study (which
# dyntemp.experiments runs with a temperature rule each). One name, one meaning.
PRESETS: dict[str, dict[str, Any]] = {
    # The paper's CIFAR setup (the defaults); CIFAR-100 the same on the other dataset.
    "paper-cifar10": {},
    "paper-cifar100": {"dataset": "cifar100"},
    # The book's cpu scale: the small network on all of CIFAR-10 for 8 epochs of batch 128,
    # 3,120 SGD steps, about 3 minutes a run with bf16 on a quiet 2-core CPU; the kNN on
    # the whole test set every 2 epochs. Calibrated with fixed tau = 0.2, seed 0: lr 0.15 /
    # 0.3 / 0.6 gave 55.6 / 56.9 / 56.4 %; with crops from 0.2 of the area, 57.4 % after 8
    # epochs and 57.7 after 12: longer runs add little to the small network. A deeper one, four
    # convolutions (32-64-128-128), went from 37.6 % untrained to 56.6 % in 1.45 times the
    # time: +19.0 points, against +17.9 for the study's seed-0 run (38.1 to 56.0 %).
    "cpu": {
        "model": "small",
        "epochs": 8,
        "batch_size": 128,
        "lr": 0.3,
        "momentum": 0.9,
        "eval_every": 2,
    },
    # The book's colab scale: ResNet-18 on a class-balanced 20,000 images for 10 epochs, for
    # a reader with one T4-class GPU. Estimated, until a GPU measures it: a training image
    # costs two views x (forward + backward, about 3 forwards) x 0.56 GFLOPs (ResNet-18 with
    # the CIFAR stem at 32x32) = 3.3 GFLOPs; at a sixth of a T4's 65 fp16 TFLOPS, about
    # 3,000 images/s, so 200,000 images take about 70 s and a run with its evaluations
    # about 1.5 minutes: 5 runs (chapter 6) in about 8 minutes, the ablations in about 15.
    "colab": {
        "model": "resnet18",
        "subset": 20_000,
        "test_subset": 5_000,
        "epochs": 10,
        "batch_size": 256,
        "lr": 0.3,
        "momentum": 0.9,
        "warmup_epochs": 1.0,
        "eval_every": 2,
    },
    # Does everything run? A handful of steps.
    "smoke": {
        "model": "small",
        "subset": 128,
        "test_subset": 100,
        "epochs": 1,
        "batch_size": 64,
        "eval_every": 1,
        "knn_k": 20,
    },
}


def preset(name: str, **overrides: Any) -> TrainConfig:
    """The named preset (see ``PRESETS``) with changes."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return TrainConfig(**{**PRESETS[name], **overrides})


def from_dict(saved: dict[str, Any]) -> TrainConfig:
    """The config saved in a run folder's config.json (unknown keys of other versions dropped;
    a value of the wrong kind is refused by ``check``)."""
    if not isinstance(saved, dict):
        raise ValueError("the saved config is not a mapping of settings")
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in saved.items() if k in known})
