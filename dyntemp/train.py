"""The training loop: SimCLR with any temperature rule, resumable, on one or several devices.

``train(TrainConfig(...))`` trains a backbone and projector with ``dyntemp.loss.ntxent`` on
the views of ``dyntemp.augment`` and writes into ``config.out``:

- ``config.json`` at the start; a folder holding a run of another config is refused
  (unless ``force``), and rerunning the same config there resumes it;
- ``checkpoint.pt`` after every epoch, written atomically (temporary file, then rename),
  so a killed run restarts from its last finished epoch. Each epoch's shuffle and views
  depend only on (seed, epoch), so on a CPU the resumed run ends bit-identical to one that
  was never interrupted;
- ``metrics.jsonl``, one line per epoch (loss, learning rate, images/s, kNN accuracy);
- ``results.json`` at the end: the kNN accuracy, the temperature rule, the final metrics and
  where they came from (command, config, git commit, torch version, device, wall time,
  dataset fingerprints).

Under ``torchrun`` each of K processes takes its shard of every global batch of
``K * batch_size`` images, the loss gathers all ranks' views as negatives and BatchNorm uses
the global batch's statistics, so K processes compute what one process with the whole
batch computes. Only rank 0 writes.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dyntemp import data, distributed, evaluate, models, optim, provenance, temperature
from dyntemp.augment import SimCLRAugment, view_batches
from dyntemp.loss import ntxent

AMP_MODES = ("auto", "bf16", "fp16", "off")
CONFIG_FILE, CHECKPOINT_FILE = "config.json", "checkpoint.pt"
METRICS_FILE, RESULTS_FILE = "metrics.jsonl", "results.json"
LOG_EVERY = 25  # steps between progress-bar updates and non-finite checks

# The fields of TrainConfig that may differ between a run and its resumption.
_RESUMABLE_DIFFERENCES = ("out", "force", "progress", "data_root", "download", "compile")

_TEMPERATURE_OPTIONS = (
    "tau",
    "tau_min",
    "tau_max",
    "shift",
    "width",
    "rate",
    "period",
    "alpha",
    "a0",
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
    subset: int | None = _doc("train on a class-balanced subset of this many images", default=None)
    test_subset: int | None = _doc(
        "evaluate on a class-balanced subset of this many test images", default=None
    )
    imbalance: float | None = _doc(
        "imbalance ratio of cifar10-lt / cifar100-lt (default 0.01)", default=None
    )
    model: str = _doc(f"backbone: {', '.join(models.MODELS)}", default="resnet18")
    stem: str = _doc("ResNet stem: cifar (3x3, no max-pool) or imagenet", default="cifar")
    projector_hidden_dim: int = _doc("hidden width of the projector", default=512)
    projector_dim: int = _doc("output width of the projector", default=128)
    temperature: str = _doc(f"temperature rule: {', '.join(temperature.NAMES)}", default="dystress")
    tau: float | None = _doc("fixed: the temperature; macl: its tau0", default=None)
    tau_min: float | None = _doc(
        "dystress, shifted, linear, exponential, schedule: the lowest temperature", default=None
    )
    tau_max: float | None = _doc(
        "dystress, shifted, linear, schedule: the highest temperature; exponential: a",
        default=None,
    )
    shift: float | None = _doc("shifted: the shift of the cosine (paper: -0.4)", default=None)
    width: float | None = _doc("shifted: the width of the cosine (paper: 0.7)", default=None)
    rate: float | None = _doc("exponential: the rate c (paper: 3.5)", default=None)
    period: float | None = _doc("schedule: the period in epochs (400)", default=None)
    alpha: float | None = _doc("macl: the sensitivity alpha (0.5)", default=None)
    a0: float | None = _doc("macl: the reference positive similarity A0 (0)", default=None)
    detach_temperature: bool = _doc("stop gradients through the temperature", default=True)
    decoupled: bool = _doc(
        "decoupled contrastive loss (positive not in the denominator)", default=False
    )
    epochs: int = _doc("training epochs", default=200)
    batch_size: int = _doc("images per step per process (two views each)", default=128)
    optimizer: str = _doc(f"optimizer: {', '.join(optim.OPTIMIZERS)}", default="sgd")
    lr: float = _doc("peak learning rate", default=0.2)
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
        "mixed precision: auto (bf16 on compute capability >= 8, else fp16; "
        "none on CPU), bf16, fp16, off",
        default="auto",
    )
    compile: bool = _doc("torch.compile the model", default=False)
    progress: bool = _doc("show a progress bar and a line per epoch", default=True)
    force: bool = _doc("start afresh in an output folder holding another run", default=False)

    def temperature_rule(self) -> temperature.TemperatureRule:
        """The rule named by ``temperature`` with the options given for it."""
        given = {key: getattr(self, key) for key in _TEMPERATURE_OPTIONS}
        given = {key: value for key, value in given.items() if value is not None}
        return temperature.from_name(self.temperature, **given)

    def check(self) -> None:
        """Raise ValueError with one clear line for any setting that cannot run."""
        if not self.out:
            raise ValueError("an output folder is needed (out / --out)")
        if self.dataset not in data.NAMES:
            raise ValueError(f"unknown dataset {self.dataset!r}; known: {', '.join(data.NAMES)}")
        if self.model not in models.MODELS:
            raise ValueError(
                f"unknown model {self.model!r}; choose one of {', '.join(models.MODELS)}"
            )
        if self.stem not in models.STEMS:
            raise ValueError(f"unknown stem {self.stem!r}; choose one of {', '.join(models.STEMS)}")
        if self.optimizer not in optim.OPTIMIZERS:
            raise ValueError(
                f"unknown optimizer {self.optimizer!r}; choose one of {', '.join(optim.OPTIMIZERS)}"
            )
        if self.amp not in AMP_MODES:
            raise ValueError(f"unknown amp mode {self.amp!r}; choose one of {', '.join(AMP_MODES)}")
        self.temperature_rule()
        positive = {
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "lr": self.lr,
            "projector_hidden_dim": self.projector_hidden_dim,
            "projector_dim": self.projector_dim,
            "knn_k": self.knn_k,
            "knn_temperature": self.knn_temperature,
        }
        for name, value in positive.items():
            if not value > 0:
                raise ValueError(f"{name} must be positive, got {value}")
        for name in ("subset", "test_subset"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be positive, got {value}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must not be negative, got {self.weight_decay}")
        if not 0 <= self.warmup_epochs <= self.epochs:
            raise ValueError(f"warmup_epochs must be in [0, epochs], got {self.warmup_epochs}")
        if not 0 < self.crop_scale_min <= 1:
            raise ValueError(f"crop_scale_min must be in (0, 1], got {self.crop_scale_min}")
        if not 0 <= self.blur <= 1:
            raise ValueError(f"blur is a probability, got {self.blur}")
        if self.eval_every < 0:
            raise ValueError(f"eval_every must not be negative, got {self.eval_every}")


PRESETS: dict[str, dict[str, Any]] = {
    # The paper's CIFAR setup (the defaults); CIFAR-100 the same on the other dataset.
    "paper-cifar10": {},
    "paper-cifar100": {"dataset": "cifar100"},
    # Tens of minutes on a laptop CPU: the paper's recipe with the small network on a
    # class-balanced 10,000 of the CIFAR-10 training images.
    "cpu": {"model": "small", "subset": 10_000, "epochs": 30, "eval_every": 5},
    # About a minute: does everything run?
    "smoke": {
        "model": "small",
        "subset": 1_000,
        "test_subset": 1_000,
        "epochs": 2,
        "batch_size": 100,
        "knn_k": 20,
    },
}


def preset(name: str, **overrides: Any) -> TrainConfig:
    """The named preset (``paper-cifar10``, ``paper-cifar100``, ``cpu``, ``smoke``) with changes."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return TrainConfig(**{**PRESETS[name], **overrides})


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


# ----------------------------------------------------------------------------- files


def _atomic_write_bytes(path: Path, payload: bytes) -> None:
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "wb") as handle:
        handle.write(payload)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def _atomic_write_json(path: Path, value: Any) -> None:
    _atomic_write_bytes(path, (json.dumps(value, indent=2) + "\n").encode())


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    temporary = path.with_name(path.name + ".tmp")
    torch.save(state, temporary)
    os.replace(temporary, path)


def _comparable(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if k not in _RESUMABLE_DIFFERENCES}


def _prepare_folder(config: TrainConfig, world_size: int) -> bool:
    """Check ``config.out`` against the run it may hold; True if that run should resume."""
    out = Path(config.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"output folder {out} is a file")
    saved_path = out / CONFIG_FILE
    if not saved_path.exists() or config.force:
        return False
    try:
        saved = json.loads(saved_path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(
            f"cannot read {saved_path}: {error}; use --force to start afresh"
        ) from None
    old = _comparable({**saved.get("config", {}), "world_size": saved.get("world_size", 1)})
    new = _comparable({**dataclasses.asdict(config), "world_size": world_size})
    differences = [
        f"{key} {old.get(key)!r} -> {new.get(key)!r}"
        for key in sorted(set(old) | set(new))
        if old.get(key) != new.get(key)
    ]
    if differences:
        raise ValueError(
            f"{out} holds a run with a different config ({'; '.join(differences)}); "
            f"choose another output folder or pass --force to overwrite it"
        )
    return (out / CHECKPOINT_FILE).exists()


def _clear_folder(out: Path) -> None:
    for name in (CHECKPOINT_FILE, METRICS_FILE, RESULTS_FILE, "eval.json"):
        (out / name).unlink(missing_ok=True)


# ----------------------------------------------------------------------------- pieces


def amp_dtype(mode: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype: bf16 on compute capability >= 8.0, fp16 below, none on CPU.

    A Colab T4 (7.5) says it supports bf16, through slow emulation; the capability decides.
    """
    if mode == "off" or device.type != "cuda":
        if mode in ("bf16", "fp16") and device.type != "cuda":
            raise ValueError(f"amp {mode} needs a CUDA device, not {device}")
        return None
    if mode == "bf16":
        return torch.bfloat16
    if mode == "fp16":
        return torch.float16
    major, _ = torch.cuda.get_device_capability(device)
    return torch.bfloat16 if major >= 8 else torch.float16


def build_model(config: TrainConfig) -> models.SimCLRModel:
    """Backbone and projector as the config says (initialised from the global RNG)."""
    backbone = models.build(config.model, stem=config.stem)
    projector = models.Projector(
        backbone.feature_dim, config.projector_hidden_dim, config.projector_dim
    )
    return models.SimCLRModel(backbone, projector)


def build_augment(config: TrainConfig, image_size: int) -> SimCLRAugment:
    mean, std = data.dataset_stats(config.dataset)
    return SimCLRAugment(
        size=image_size, scale=(config.crop_scale_min, 1.0), blur_p=config.blur, mean=mean, std=std
    )


def load_data(config: TrainConfig) -> tuple[data.ImageDataset, data.ImageDataset]:
    """The training set (subset, imbalance) and the test set (test_subset)."""
    options: dict[str, Any] = {}
    if config.imbalance is not None:
        options["imbalance"] = config.imbalance
    train_set = data.load_dataset(
        config.dataset, config.data_root, "train", config.download, subset=config.subset, **options
    )
    test_set = data.load_dataset(
        config.dataset, config.data_root, "test", config.download, subset=config.test_subset
    )
    return train_set, test_set


def knn_eval(
    backbone: nn.Module,
    train_set: data.ImageDataset,
    test_set: data.ImageDataset,
    augment: SimCLRAugment,
    config: TrainConfig,
    device: torch.device,
    dtype: torch.dtype | None = None,
) -> float:
    """Weighted kNN top-1 (percent) of the test set against the training set's features."""
    features = [
        evaluate.extract_features(
            backbone, s.images, augment.normalize, device=device, amp_dtype=dtype
        )
        for s in (train_set, test_set)
    ]
    return evaluate.knn_accuracy(
        features[0],
        train_set.labels,
        features[1],
        test_set.labels,
        k=config.knn_k,
        temperature=config.knn_temperature,
    )


# ----------------------------------------------------------------------------- the loop


def train(config: TrainConfig, *, command: str | None = None) -> dict[str, Any]:
    """Train as ``config`` says, writing into ``config.out``; returns the results.

    Rerunning the same config in the same folder resumes the run (or returns the results of
    a finished one). ``command`` is recorded in the provenance (the command line).
    """
    config.check()
    provenance.code_commit()  # the code as it is now, not when the run ends
    context = distributed.setup(config.device)
    try:
        return _train(config, context, command)
    finally:
        distributed.cleanup(context)


def _train(config: TrainConfig, context: distributed.Context, command: str | None) -> dict:
    out = Path(config.out)
    resume = _prepare_folder(config, context.world_size)
    results_path = out / RESULTS_FILE
    device = context.device
    rule = config.temperature_rule()
    dtype = amp_dtype(config.amp, device)
    train_set, test_set = load_data(config)
    global_batch = config.batch_size * context.world_size
    if global_batch > len(train_set):
        raise ValueError(
            f"batch size {global_batch} ({config.batch_size} x {context.world_size} processes) "
            f"exceeds the {len(train_set)} training images"
        )
    distributed.barrier(context)
    if context.is_main:  # only now that the run can start, the folder changes
        out.mkdir(parents=True, exist_ok=True)
        if config.force or not resume:
            _clear_folder(out)
        _atomic_write_json(
            out / CONFIG_FILE,
            {"config": dataclasses.asdict(config), "world_size": context.world_size},
        )
    distributed.barrier(context)

    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    train_images = train_set.images.to(device)
    augment = build_augment(config, train_images.shape[-1])

    torch.manual_seed(config.seed)
    model = build_model(config).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    if context.distributed:  # before the optimizer: the conversion makes new parameters
        model = distributed.sync_batchnorm(model, device)
    optimizer = optim.build_optimizer(
        config.optimizer,
        model.parameters(),
        lr=config.lr,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
    )
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)

    start_epoch, history, elapsed = 0, [], 0.0
    checkpoint_path = out / CHECKPOINT_FILE
    if resume:
        state = torch.load(checkpoint_path, map_location=device, weights_only=False)
        if state["dataset_fingerprint"] != train_set.fingerprint:
            raise ValueError(
                f"the training data differ from those of the run in {out} (fingerprint "
                f"{train_set.fingerprint[:12]} vs {state['dataset_fingerprint'][:12]})"
            )
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        start_epoch, history, elapsed = state["epoch"], state["history"], state["elapsed"]
        if start_epoch >= config.epochs and results_path.exists():
            return json.loads(results_path.read_text())

    step_model: nn.Module = model
    if context.distributed:
        step_model = nn.parallel.DistributedDataParallel(
            step_model, device_ids=[device.index] if device.type == "cuda" else None
        )
    if config.compile:
        step_model = torch.compile(step_model)

    steps_per_epoch = len(train_images) // global_batch
    total_steps = steps_per_epoch * config.epochs
    warmup_steps = round(config.warmup_epochs * steps_per_epoch)
    bar = _progress_bar(config, context, total_steps, start_epoch * steps_per_epoch)
    started = time.perf_counter()
    last_good = start_epoch
    for epoch in range(start_epoch, config.epochs):
        epoch_start = time.perf_counter()
        step_model.train()
        loss_sum = torch.zeros((), device=device)
        bad_step = torch.full((), total_steps, dtype=torch.int64, device=device)
        window_start, window_steps = time.perf_counter(), 0
        batches = view_batches(
            train_images,
            global_batch,
            augment,
            seed=config.seed,
            epoch=epoch,
            rank=context.rank,
            world_size=context.world_size,
        )
        for index, (view1, view2) in enumerate(batches):
            step = epoch * steps_per_epoch + index
            lr = optim.cosine_lr(step, total_steps, config.lr, warmup_steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            views = torch.cat([view1, view2])
            if device.type == "cuda":
                views = views.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                projections = step_model(views)
            z1, z2 = projections.float().chunk(2)
            loss = ntxent(
                z1,
                z2,
                rule,
                detach_temperature=config.detach_temperature,
                decoupled=config.decoupled,
                gather=context.distributed,
                progress=epoch + index / steps_per_epoch,
            )
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            loss = loss.detach()
            loss_sum += loss
            finite = torch.isfinite(loss)
            bad_step = torch.where(finite | (bad_step < total_steps), bad_step, step)
            window_steps += 1
            if window_steps == LOG_EVERY or index == steps_per_epoch - 1:
                _check_finite(bad_step, total_steps, context, out, last_good)
                seconds = time.perf_counter() - window_start
                if bar is not None:
                    bar.update(window_steps)
                    bar.set_postfix(
                        epoch=epoch + 1,
                        loss=f"{loss.item():.4f}",
                        lr=f"{lr:.4g}",
                        img_s=f"{window_steps * global_batch / seconds:.0f}",
                    )
                window_start, window_steps = time.perf_counter(), 0
        seconds = time.perf_counter() - epoch_start
        metrics: dict[str, Any] = {
            "epoch": epoch + 1,
            "step": (epoch + 1) * steps_per_epoch,
            "loss": distributed.mean_over_ranks(loss_sum / steps_per_epoch, context).item(),
            "lr": lr,
        }
        evaluate_now = epoch + 1 == config.epochs or (
            config.eval_every > 0 and (epoch + 1) % config.eval_every == 0
        )
        if evaluate_now and context.is_main:
            metrics["knn_top1"] = knn_eval(
                model.backbone, train_set, test_set, augment, config, device, dtype
            )
        metrics["images_per_s"] = steps_per_epoch * global_batch / seconds
        metrics["seconds"] = time.perf_counter() - epoch_start
        history.append(metrics)
        elapsed += metrics["seconds"]
        last_good = epoch + 1
        if context.is_main:
            _save_checkpoint(
                checkpoint_path,
                {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scaler": scaler.state_dict(),
                    "epoch": epoch + 1,
                    "history": history,
                    "elapsed": elapsed,
                    "dataset_fingerprint": train_set.fingerprint,
                    "config": dataclasses.asdict(config),
                },
            )
            lines = "".join(json.dumps(entry) + "\n" for entry in history)
            _atomic_write_bytes(out / METRICS_FILE, lines.encode())
            if config.progress:
                _print(bar, _epoch_line(metrics, config.epochs))
        distributed.barrier(context)
    if bar is not None:
        bar.close()

    results = _results(
        config, context, history, rule, train_set, test_set, elapsed, command, dtype, started
    )
    if context.is_main:
        _atomic_write_json(results_path, results)
    distributed.barrier(context)
    return results


def _check_finite(
    bad_step: torch.Tensor,
    total_steps: int,
    context: distributed.Context,
    out: Path,
    last_good: int,
) -> None:
    first_bad = int(distributed.min_over_ranks(bad_step, context))
    if first_bad < total_steps:
        kept = (
            f"the checkpoint of epoch {last_good} in {out / CHECKPOINT_FILE} is kept"
            if last_good
            else "no checkpoint was written"
        )
        raise NonFiniteLossError(f"the loss is not finite at step {first_bad}; {kept}")


def _progress_bar(config: TrainConfig, context: distributed.Context, total: int, initial: int):
    if not (config.progress and context.is_main):
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit="step", desc="train", dynamic_ncols=True)


def _print(bar, line: str) -> None:
    if bar is not None:
        bar.write(line)
    else:
        print(line, flush=True)


def _epoch_line(metrics: dict[str, Any], epochs: int) -> str:
    line = (
        f"epoch {metrics['epoch']}/{epochs}  loss {metrics['loss']:.4f}  "
        f"lr {metrics['lr']:.4g}  {metrics['images_per_s']:.0f} images/s"
    )
    if "knn_top1" in metrics:
        line += f"  kNN {metrics['knn_top1']:.2f} %"
    return line


def _results(
    config: TrainConfig,
    context: distributed.Context,
    history: list[dict[str, Any]],
    rule: temperature.TemperatureRule,
    train_set: data.ImageDataset,
    test_set: data.ImageDataset,
    elapsed: float,
    command: str | None,
    dtype: torch.dtype | None,
    started: float,
) -> dict[str, Any]:
    final = history[-1]
    return {
        "knn_top1": final.get("knn_top1"),
        "epochs": config.epochs,
        "temperature": {
            "name": config.temperature,
            "rule": repr(rule),
            "params": rule.params(),
            "detached": config.detach_temperature,
            "decoupled": config.decoupled,
        },
        "final": final,
        "provenance": {
            "command": command,
            "config": dataclasses.asdict(config),
            "git_commit": provenance.code_commit(),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "device": str(context.device),
            "machine": provenance.machine(context.device),
            "world_size": context.world_size,
            "amp": str(dtype).removeprefix("torch.") if dtype is not None else "off",
            "wall_time_s": elapsed,
            "wall_time_this_process_s": time.perf_counter() - started,
            "dataset": {
                "name": train_set.name,
                "train_images": len(train_set),
                "train_fingerprint": train_set.fingerprint,
                "test_images": len(test_set),
                "test_fingerprint": test_set.fingerprint,
            },
        },
    }
