"""What a training run depends on: ``TrainConfig``, checked before anything is touched, and
the named presets (the paper's setups and the book's scales).

Every field has a command-line flag of the same name (``flag("tau_min")`` is ``--tau-min``)
and its help text; ``check()`` refuses any setting that cannot run with one line that names
the flag. The temperature options are the arguments of the rules' constructors
(``TEMPERATURE_OPTIONS``, read from their signatures), one field each, their help made from
the rules. A preset is a set of changes to the defaults: ``preset("cpu", seed=1)``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from dyntemp import checks, data, models, optim, temperature

AMP_MODES = ("auto", "bf16", "fp16", "off")
CHANNELS_LAST_MODES = ("auto", "on", "off")
METHODS = ("simclr", "moco")
# torch.manual_seed takes integers below 2**64; seeds are kept to what every platform's
# 64-bit signed integers hold.
MAX_SEED = 2**63 - 1
MAX_EPOCHS = 1_000_000

#: Arguments of the rules that the run sets, not a flag: a formula is checked over its epochs.
SET_BY_THE_RUN = ("max_progress",)
#: The temperature options of the command line: the arguments of the rules' constructors
#: (``temperature.OPTIONS``), less those the run sets; each is a TrainConfig field of its name.
TEMPERATURE_OPTIONS: tuple[str, ...] = tuple(
    name for name in temperature.OPTIONS if name not in SET_BY_THE_RUN
)


def flag(name: str) -> str:
    """The command-line flag of a field.

    >>> flag("tau_min")
    '--tau-min'
    """
    return "--" + name.replace("_", "-")


def _doc(text: str, **kwargs: Any) -> Any:
    return field(metadata={"help": text}, **kwargs)


def _option(name: str) -> Any:
    """The field of a temperature option: None (the rule's default) unless given; its help
    says which rules take it and what it means to each (``temperature.option_help``)."""
    return field(default=None, metadata={"help": temperature.option_help(name), "rule": True})


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
    # the temperature options, one for each argument of the rules' constructors
    tau: float | None = _option("tau")
    tau_min: float | None = _option("tau_min")
    tau_max: float | None = _option("tau_max")
    shift: float | None = _option("shift")
    width: float | None = _option("width")
    rate: float | None = _option("rate")
    period: float | None = _option("period")
    alpha: float | None = _option("alpha")
    a0: float | None = _option("a0")
    reweight: bool | None = _option("reweight")
    tau_floor: float | None = _option("tau_floor")
    dt_m: float | None = _option("dt_m")
    rho: float | None = _option("rho")
    eta: float | None = _option("eta")
    beta: float | None = _option("beta")
    gamma: float | None = _option("gamma")
    formula: str | None = _option("formula")
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
        if self.temperature == "formula" and "formula" not in given:
            raise ValueError("--temperature formula needs --formula, e.g. '0.2 + 0.1*s**2'")
        if self.temperature in temperature.OPTIONS["max_progress"]:
            given["max_progress"] = float(max(self.epochs, 1))  # checked over the whole run
        return temperature.from_name(self.temperature, **given)

    def check(self) -> None:
        """Raise ValueError with one clear line, naming the flag, for any setting that cannot
        run (``check_sizes`` checks what needs the data too)."""
        if not self.out:
            raise ValueError("an output folder is needed (--out)")
        for name, known in _CHOICES.items():
            checks.choice(flag(name), getattr(self, name), known)
        for name, (low, high) in _WHOLE.items():
            value = getattr(self, name)
            if value is not None or name not in _MAY_BE_NONE:  # None: not given, for some
                checks.whole(flag(name), value, low=low, high=high)
        for name, bounds in _NUMBERS.items():
            checks.number(flag(name), getattr(self, name), **bounds)
        if self.batch_size < 2:
            raise ValueError(f"--batch-size must be at least 2 (a negative), got {self.batch_size}")
        checks.number(flag("warmup_epochs"), self.warmup_epochs, low=0, high=self.epochs)
        if self.imbalance is not None:
            data.check_imbalance(self.imbalance, self.dataset, name=flag("imbalance"))
        if self.image_size is not None:
            data.check_image_size(self.image_size, name=flag("image_size"))
        self._check_queue(world_size=1)
        rule = self.temperature_rule()
        rule.check_decoupled(
            self.decoupled, reweight_off="--no-reweight", decoupled_off="--no-decoupled"
        )
        if rule.needs_indices and self.method != "simclr":
            raise ValueError(
                f"--temperature {self.temperature} has a loss of its own, for --method simclr "
                f"only (got --method {self.method})"
            )
        if rule.needs_indices and not self.detach_temperature:
            raise ValueError(
                f"--temperature {self.temperature} learns each image's temperature by its own "
                "step, never through the loss's graph: --no-detach-temperature does not apply"
            )

    def check_sizes(self, images: int, world_size: int = 1) -> None:
        """Raise ValueError for a batch, a kNN or a queue too large for ``images`` training
        images and ``world_size`` processes (``check()`` checks the queue for one)."""
        if self.batch_size * world_size > images:
            raise ValueError(f"{self._batch(world_size)} exceeds the {images} training images")
        if self.knn_k > images:
            raise ValueError(f"--knn-k {self.knn_k} exceeds the {images} training images")
        self._check_queue(world_size)

    def _check_queue(self, world_size: int) -> None:
        keys = 2 * self.batch_size * world_size
        if self.method == "moco" and self.queue_size < keys:
            raise ValueError(
                f"--queue-size {self.queue_size} must hold at least one step's keys ({keys}: "
                f"two views of {self._batch(world_size)})"
            )

    def _batch(self, world_size: int) -> str:
        processes = f" x {world_size} processes" if world_size > 1 else ""
        return f"--batch-size {self.batch_size}{processes}"

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# The checks of single settings, by field (``TrainConfig.check``).
_CHOICES = {
    "dataset": data.NAMES,
    "model": models.MODELS,
    "stem": models.STEMS,
    "optimizer": optim.OPTIMIZERS,
    "amp": AMP_MODES,
    "channels_last": CHANNELS_LAST_MODES,
    "method": METHODS,
    "lr_schedule": optim.SCHEDULES,
}
_WHOLE = {  # (least, most) of the whole numbers; None: no bound
    "epochs": (1, MAX_EPOCHS),
    "batch_size": (1, None),
    "projector_hidden_dim": (1, None),
    "projector_dim": (1, None),
    "knn_k": (1, None),
    "seed": (0, MAX_SEED),
    "eval_every": (0, None),
    "queue_size": (1, None),
    "subset": (1, None),
    "test_subset": (1, None),
    "validation": (1, None),
}
_NUMBERS: dict[str, dict[str, float]] = {  # the bounds checks.number takes
    "lr": {"above": 0},
    "knn_temperature": {"above": 0},
    "weight_decay": {"low": 0},
    "momentum": {"low": 0, "below": 1},
    "moco_momentum": {"low": 0, "below": 1},
    "crop_scale_min": {"above": 0, "high": 1},
    "blur": {"low": 0, "high": 1},
}
_MAY_BE_NONE = {f.name for f in dataclasses.fields(TrainConfig) if f.default is None}


# The named settings: the paper's setups, and the scales of the book's study (which
# dyntemp.experiments runs with a temperature rule each). One name, one meaning.
PRESETS: dict[str, dict[str, Any]] = {
    # The paper's CIFAR setup (the defaults); CIFAR-100 the same on the other dataset.
    "paper-cifar10": {},
    "paper-cifar100": {"dataset": "cifar100"},
    # The book's cpu scale: the small network on all of CIFAR-10, 8 epochs of batch 128.
    "cpu": {
        "model": "small",
        "epochs": 8,
        "batch_size": 128,
        "lr": 0.3,
        "momentum": 0.9,
        "eval_every": 2,
    },
    # The book's colab scale: ResNet-18 on 20,000 balanced images, 10 epochs, one T4-class GPU.
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
    # The smoke scale: a handful of steps, to see that everything runs (what the tests use).
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
