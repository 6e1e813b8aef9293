"""The training loop: SimCLR with any temperature rule, resumable, on one or several devices.

``train(TrainConfig(...))`` trains a backbone and projector with ``dyntemp.loss.ntxent`` on
the views of ``dyntemp.augment`` and writes the run folder ``config.out`` (its files:
``dyntemp.runs``): the config first, a checkpoint and a line of metrics after every epoch,
the results at the end. Rerunning the same config resumes the run, or returns the results
of a finished one. Each epoch's shuffle and views depend only on (seed, epoch), so on a CPU
a resumed run ends bit-identical to one that was never interrupted.

Under ``torchrun`` each of K processes takes its shard of every global batch of
``K * batch_size`` images, the loss gathers all ranks' views as negatives and BatchNorm uses
the global batch's statistics, so K processes compute what one process with the whole
batch computes. Only rank 0 writes.
"""

from __future__ import annotations

import contextlib
import json
import platform
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.profiler import record_function

from dyntemp import distributed, models, optim, provenance, runs, temperature
from dyntemp.augment import SimCLRAugment, ViewBatches
from dyntemp.config import TEMPERATURE_OPTIONS, TrainConfig
from dyntemp.cpu_share import ThreadGuard
from dyntemp.isogclr import isogclr_loss
from dyntemp.loss import ntxent
from dyntemp.moco import MoCo, symmetric_moco_loss
from dyntemp.parts import Splits, build_augment, build_model, knn_scores, load_splits
from dyntemp.precision import Precision, amp_dtype, by_rule, choose

__all__ = ["NonFiniteLossError", "Run", "start_run", "train", "train_epoch", "train_step"]

LOG_EVERY = 25  # steps between progress-bar updates and non-finite checks
#: The labels of a step's phases in torch's profiler (the views are made by the batches).
PHASES = {
    "views": "dyntemp: views",
    "forward": "dyntemp: forward",
    "loss": "dyntemp: loss",
    "backward": "dyntemp: backward",
    "optimiser": "dyntemp: optimiser",
}


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


# ----------------------------------------------------------------------------- a run


@dataclass
class Run:
    """A run in progress: what the loop works with, and what a checkpoint saves."""

    config: TrainConfig
    context: distributed.Context
    rule: temperature.TemperatureRule
    precision: Precision  # what the steps compute in, fixed for the whole run
    images: torch.Tensor  # the training images, on the device
    augment: SimCLRAugment
    model: models.SimCLRModel
    step_model: nn.Module  # the model as the steps call it (DDP, compiled)
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    global_batch: int
    steps_per_epoch: int
    epoch: int = 0  # epochs finished
    history: list[dict[str, Any]] = field(default_factory=list)
    elapsed: float = 0.0  # seconds of training, over every resumption
    moco: MoCo | None = None  # method moco: the key encoder and the queue
    thread_guard: ThreadGuard | None = None  # on the CPU: one thread while others are busy

    @property
    def dtype(self) -> torch.dtype | None:
        return self.precision.dtype

    @property
    def channels_last(self) -> bool:
        return self.precision.channels_last

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.config.epochs

    @property
    def warmup_steps(self) -> int:
        return round(self.config.warmup_epochs * self.steps_per_epoch)

    def state(self, fingerprint: str) -> dict[str, Any]:
        """The checkpoint: tensors and plain values only, loadable with weights_only."""
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else {},
            "temperature": self.rule.state_dict(),
            "moco": self.moco.state_dict() if self.moco is not None else {},
            "epoch": self.epoch,
            "history": self.history,
            "elapsed": self.elapsed,
            "precision": self.precision.as_dict(),
            "dataset_fingerprint": fingerprint,
            "config": self.config.as_dict(),
        }

    def restore(self, state: dict[str, Any], fingerprint: str, folder: Path) -> None:
        """Continue from a checkpoint of this run."""
        if state.get("dataset_fingerprint") != fingerprint:
            raise ValueError(
                f"the training data differ from those of the run in {folder} (fingerprint "
                f"{fingerprint[:12]} vs {str(state.get('dataset_fingerprint'))[:12]})"
            )
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            if self.rule.parameters() or self.rule.needs_indices:  # learned, or per image
                self.rule.load_state_dict(state["temperature"])
            if self.moco is not None:
                self.moco.load_state_dict(state["moco"])
        except (KeyError, RuntimeError, ValueError, TypeError) as error:
            raise runs.RunFolderError(
                f"{folder / runs.CHECKPOINT_FILE} does not fit this run: {error}"
            ) from None
        # A run may resume under another mixed precision (Colab hands out other GPUs): the
        # loss scale of fp16 carries over only between two fp16 runs.
        if self.scaler.is_enabled() and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.history = int(state["epoch"]), list(state["history"])
        self.elapsed = float(state["elapsed"])


def start_run(
    config: TrainConfig,
    context: distributed.Context,
    images: torch.Tensor,
    precision: Precision | None = None,
) -> Run:
    """Model, optimiser and views of a new run on ``images`` (uint8, N x 3 x H x W), moved to
    the context's device; everything seeded by the config. ``precision`` defaults to what
    the config names, ``auto`` resolved by rule (``train`` measures instead, on a CPU)."""
    device = context.device
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    if precision is None:
        precision = by_rule(config.amp, config.channels_last, device)
    dtype, channels_last = precision.dtype, precision.channels_last
    images = images.to(device)
    torch.manual_seed(config.seed)
    model = build_model(config).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if context.distributed:  # before the optimizer: the conversion makes new parameters
        model = distributed.sync_batchnorm(model, device)
    rule = config.temperature_rule().to(device)
    if rule.needs_indices:  # iSogCLR: a temperature (and its state) for every training image
        rule.bind(len(images), device)  # type: ignore[attr-defined]
    groups: list[dict[str, Any]] = [{"params": list(model.parameters())}]
    if rule.parameters():  # a learned temperature: trained, never decayed
        groups.append({"params": rule.parameters(), "weight_decay": 0.0})
    moco = None
    if config.method == "moco":  # the key encoder starts as a copy of the model
        moco = MoCo(
            model,
            queue_size=config.queue_size,
            dim=config.projector_dim,
            momentum=config.moco_momentum,
            seed=config.seed,
        )
    optimizer = optim.build_optimizer(
        config.optimizer,
        groups,  # type: ignore[arg-type]
        lr=config.lr,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
    )
    step_model: nn.Module = model
    if context.distributed:
        step_model = nn.parallel.DistributedDataParallel(
            step_model, device_ids=[device.index] if device.type == "cuda" else None
        )
    if config.compile:
        step_model = torch.compile(step_model)
    global_batch = config.batch_size * context.world_size
    return Run(
        config=config,
        context=context,
        rule=rule,
        precision=precision,
        images=images,
        augment=build_augment(config, images.shape[-1]),
        model=model,
        step_model=step_model,
        optimizer=optimizer,
        scaler=torch.amp.GradScaler(device.type, enabled=dtype == torch.float16),
        global_batch=global_batch,
        steps_per_epoch=len(images) // global_batch,
        moco=moco,
        thread_guard=ThreadGuard() if device.type == "cpu" else None,
    )


def train_step(
    run: Run,
    view1: torch.Tensor,
    view2: torch.Tensor,
    step: int,
    indices: torch.Tensor | None = None,
) -> torch.Tensor:
    """One SGD step on a batch of view pairs; returns the loss (detached, on the device).
    ``indices``: the batch's images' indices, for a rule with a temperature per image.

    Its phases are labelled for torch's profiler (``PHASES``; ``bench train --profile``).
    """
    lr = optim.learning_rate(
        run.config.lr_schedule, step, run.total_steps, run.config.lr, run.warmup_steps
    )
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    device_type = run.context.device.type
    with record_function(PHASES["forward"]):
        views = torch.cat([view1, view2])
        if run.channels_last:
            views = views.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device_type, dtype=run.dtype, enabled=run.dtype is not None):
            projections = run.step_model(views)
    options = {
        "detach_temperature": run.config.detach_temperature,
        "decoupled": run.config.decoupled,
        "progress": step / run.steps_per_epoch,
    }
    with record_function(PHASES["loss"]):
        if run.moco is None:
            z1, z2 = projections.float().chunk(2)  # the loss runs in float32
            if run.rule.needs_indices:  # iSogCLR: its own loss, and its step on the images
                if indices is None:
                    raise ValueError(f"{run.rule!r} needs the batch's images' indices")
                loss = isogclr_loss(z1, z2, indices, run.rule, gather=run.context.distributed)
            else:
                loss = ntxent(z1, z2, run.rule, gather=run.context.distributed, **options)
        else:  # MoCo: the keys of the momentum encoder, updated first (as MoCo's code)
            with torch.no_grad():
                run.moco.update(run.model)
                with torch.autocast(device_type, dtype=run.dtype, enabled=run.dtype is not None):
                    keys = run.moco.encoder(views)
            q1, q2 = projections.float().chunk(2)
            k1, k2 = keys.float().chunk(2)
            loss = symmetric_moco_loss(q1, q2, k1, k2, run.moco.queue, run.rule, **options)
    with record_function(PHASES["backward"]):
        run.optimizer.zero_grad(set_to_none=True)
        run.scaler.scale(loss).backward()
        _average_temperature_gradients(run)
    with record_function(PHASES["optimiser"]):
        run.scaler.step(run.optimizer)
        run.scaler.update()
        run.rule.clamp_()
        if run.moco is not None:
            run.moco.enqueue(k1, k2)
    return loss.detach()


def _average_temperature_gradients(run: Run) -> None:
    """A learned temperature is no module parameter: DDP does not average its gradient."""
    if not run.context.distributed:
        return
    import torch.distributed as dist

    for parameter in run.rule.parameters():
        if parameter.grad is not None:
            dist.all_reduce(parameter.grad)
            parameter.grad.div_(run.context.world_size)


def train_epoch(run: Run, bar: Any = None) -> dict[str, Any]:
    """The next epoch of ``run``; returns its metrics (without the kNN accuracy)."""
    epoch, context, device = run.epoch, run.context, run.context.device
    started = time.perf_counter()
    run.step_model.train()
    if run.moco is not None:
        run.moco.encoder.train()  # batch statistics, as the query encoder
    loss_sum = torch.zeros((), device=device)
    first_bad = torch.full((), run.total_steps, dtype=torch.int64, device=device)
    batches = ViewBatches(
        run.images,
        run.global_batch,
        run.augment,
        seed=run.config.seed,
        epoch=epoch,
        rank=context.rank,
        world_size=context.world_size,
        with_indices=run.rule.needs_indices,
    )
    window_start, window = time.perf_counter(), 0
    fewest_threads = torch.get_num_threads()
    for index, (view1, view2, *indices) in enumerate(batches):
        step = epoch * run.steps_per_epoch + index
        loss = train_step(run, view1, view2, step, *indices)
        loss_sum += loss
        first_bad = torch.where(torch.isfinite(loss) | (first_bad < step), first_bad, step)
        window += 1
        if window == LOG_EVERY or index == run.steps_per_epoch - 1:  # one sync per window
            _stop_if_not_finite(run, first_bad)
            if run.thread_guard is not None:
                fewest_threads = min(fewest_threads, run.thread_guard.check())
            if bar is not None:
                seconds = time.perf_counter() - window_start
                bar.update(window)
                bar.set_postfix(epoch=epoch + 1, loss=f"{loss.item():.4f}",
                                img_s=f"{window * run.global_batch / seconds:.0f}")  # fmt: skip
            window_start, window = time.perf_counter(), 0
    seconds = time.perf_counter() - started
    metrics = {
        "epoch": epoch + 1,
        "step": (epoch + 1) * run.steps_per_epoch,
        "loss": distributed.mean_over_ranks(loss_sum / run.steps_per_epoch, context).item(),
        "lr": optim.learning_rate(
            run.config.lr_schedule,
            (epoch + 1) * run.steps_per_epoch - 1,
            run.total_steps,
            run.config.lr,
            run.warmup_steps,
        ),
        "images_per_s": run.steps_per_epoch * run.global_batch / seconds,
    }
    if run.thread_guard is not None:  # fewer threads while other processes were busy
        metrics["threads"] = fewest_threads
    if run.rule.parameters():  # a learned temperature: its value at the epoch's end
        metrics["tau"] = run.rule.value().item()  # type: ignore[attr-defined]
    if run.rule.needs_indices:  # the images' temperatures at the epoch's end
        metrics.update(run.rule.summary())  # type: ignore[attr-defined]
    return metrics


def _stop_if_not_finite(run: Run, first_bad: torch.Tensor) -> None:
    step = int(distributed.min_over_ranks(first_bad, run.context))
    if step < run.total_steps:
        kept = (
            f"the checkpoint of epoch {run.epoch} in {Path(run.config.out) / runs.CHECKPOINT_FILE}"
            " is kept"
            if run.epoch
            else "no checkpoint was written"
        )
        raise NonFiniteLossError(f"the loss is not finite at step {step}; {kept}")


# ----------------------------------------------------------------------------- the loop


def train(config: TrainConfig, *, command: str | None = None) -> dict[str, Any]:
    """Train as ``config`` says, writing into ``config.out``; returns the results.

    Everything is checked before the folder is touched. Rerunning the same config in the
    same folder resumes the run, or returns the results of a finished one. ``command`` is
    recorded in the provenance (the command line).

    One epoch of two steps on an image folder of 16 training images, two grey classes:

    >>> import itertools, tempfile
    >>> from PIL import Image
    >>> folder = tempfile.TemporaryDirectory()
    >>> for split, c, i in itertools.product(("train", "test"), (0, 1), range(8)):
    ...     path = Path(folder.name, split, f"class{c}", f"{i}.png")
    ...     path.parent.mkdir(parents=True, exist_ok=True)
    ...     Image.new("RGB", (32, 32), (40 + 160 * c + i,) * 3).save(path)
    >>> config = TrainConfig(dataset="imagefolder", data_root=folder.name, model="small",
    ...                      epochs=1, batch_size=8, knn_k=4, projector_hidden_dim=16,
    ...                      projector_dim=8, amp="off", channels_last="off",
    ...                      progress=False, out=f"{folder.name}/run")
    >>> results = train(config)
    >>> results["final"]["step"], sorted(p.name for p in Path(config.out).iterdir())
    (2, ['checkpoint.pt', 'config.json', 'metrics.jsonl', 'results.json'])
    >>> folder.cleanup()
    """
    config.check()
    provenance.code_commit()  # the code as it is now, not when the run ends
    provenance.code_version()
    context = distributed.setup(config.device)
    try:
        amp_dtype(config.amp, context.device)  # refused here, before the folder is touched
        splits = load_splits(config)
        config.check_sizes(len(splits.train), context.world_size)
        out = Path(config.out)
        if runs.inspect(out, config, context.world_size).status == "finished":
            return runs.read_json(out / runs.RESULTS_FILE)
        holding = runs.lock(out) if context.is_main else contextlib.nullcontext()
        with holding:
            return _train_in_folder(config, context, splits, command)
    finally:
        distributed.cleanup(context)


def _train_in_folder(
    config: TrainConfig, context: distributed.Context, splits: Splits, command: str | None
) -> dict[str, Any]:
    out = Path(config.out)
    state = runs.inspect(out, config, context.world_size)  # again, now that the lock is held
    if state.status == "finished":
        return runs.read_json(out / runs.RESULTS_FILE)
    distributed.barrier(context)
    if context.is_main:
        runs.prepare(out, config, context.world_size, state)
    distributed.barrier(context)
    checkpoint = None
    if state.status == "resume":
        checkpoint = runs.load_checkpoint(out / runs.CHECKPOINT_FILE, context.device)
    precision = _precision(config, context, checkpoint)
    run = start_run(config, context, splits.train.images, precision)
    if checkpoint is not None:
        run.restore(checkpoint, splits.train.fingerprint, out)
    started = time.perf_counter()
    bar = _progress_bar(run)
    try:
        while run.epoch < config.epochs:
            _one_epoch(run, bar, splits)
    finally:
        if bar is not None:
            bar.close()  # before any message, so that it does not end up on the bar's line
    results = _results(run, splits, command, started)
    if context.is_main:
        runs.atomic_write_json(out / runs.RESULTS_FILE, results)
    distributed.barrier(context)
    return results


def _precision(
    config: TrainConfig, context: distributed.Context, checkpoint: dict[str, Any] | None
) -> Precision:
    """The arithmetic of the run: a resumed run's own (as its checkpoint recorded it, or as
    the rule gave it before checkpoints recorded it), else chosen now: on a CPU by timing
    the trainer's step under each candidate (``dyntemp.precision.choose``). Several
    processes take the rule: each would time its own steps and might choose differently,
    and every process must compute in the same arithmetic."""
    if checkpoint is not None:
        if "precision" in checkpoint:
            return Precision.from_dict(checkpoint["precision"], source="resumed")
        return by_rule(config.amp, config.channels_last, context.device)
    if context.distributed:
        return by_rule(config.amp, config.channels_last, context.device)
    key = {"model": config.model, "batch_size": config.batch_size, "method": config.method}
    key["image_size"] = config.image_size
    return choose(
        config.amp,
        config.channels_last,
        context.device,
        key,
        lambda dtype, layout: probe_step(config, context, dtype, layout),
    )


def probe_step(
    config: TrainConfig,
    context: distributed.Context,
    dtype: torch.dtype | None,
    channels_last: bool,
    steps: int = 3,
) -> float:
    """Images per second of the trainer's step under one arithmetic, on random images of the
    run's size (``dyntemp.timing.step_seconds``: it warms up first and leaves the global
    random state as it was, so the run that follows starts exactly as without the probe)."""
    from dyntemp import timing

    rule = config.temperature_rule()
    if rule.needs_indices:  # the probe's steps know no images: NT-Xent at the starting tau
        unset = dict.fromkeys(TEMPERATURE_OPTIONS)
        config = replace(config, temperature="fixed", **{**unset, "tau": rule.tau_init})  # type: ignore[attr-defined]
    precision = Precision(dtype, channels_last, "probe")
    seconds = timing.step_seconds(
        config, device=context.device, steps=2 * steps, precision=precision
    )
    return config.batch_size / seconds


def _one_epoch(run: Run, bar: Any, splits: Splits) -> None:
    """Train an epoch, evaluate if due, and (rank 0) write its checkpoint and metrics.

    The kNN scores the validation images when the config holds some out (and the test
    images only after the last epoch), else the test images.
    """
    config, context = run.config, run.context
    started = time.perf_counter()
    metrics = train_epoch(run, bar)
    done = metrics["epoch"]
    last = done == config.epochs
    due = last or (config.eval_every > 0 and done % config.eval_every == 0)
    if due and context.is_main:
        scored = {"knn_top1": splits.test}
        if splits.validation is not None:
            scored = {"val_knn_top1": splits.validation, **(scored if last else {})}
        accuracies = knn_scores(
            run.model.backbone,
            splits.train,
            list(scored.values()),
            run.augment,
            config,
            run.images.device,
            bank_images=run.images,
        )
        metrics.update(zip(scored, accuracies, strict=True))
    metrics["seconds"] = time.perf_counter() - started
    run.history.append(metrics)
    run.elapsed += metrics["seconds"]
    run.epoch = done
    if context.is_main:
        out = Path(config.out)
        try:
            runs.save_checkpoint(out / runs.CHECKPOINT_FILE, run.state(splits.train.fingerprint))
            lines = "".join(json.dumps(entry) + "\n" for entry in run.history)
            runs.atomic_write_bytes(out / runs.METRICS_FILE, lines.encode())
        except OSError as error:
            raise runs.RunFolderError(
                f"cannot write epoch {done} into {out}: {error.strerror or error}; "
                + (
                    f"the checkpoint of epoch {done - 1} is kept"
                    if done > 1
                    else "no checkpoint was written"
                )
            ) from None
        if config.progress:
            _print(bar, _epoch_line(metrics, config.epochs))
    distributed.barrier(context)


def _progress_bar(run: Run):
    if not (run.config.progress and run.context.is_main):
        return None
    from tqdm.auto import tqdm

    return tqdm(
        total=run.total_steps,
        initial=run.epoch * run.steps_per_epoch,
        unit="step",
        desc="train",
        dynamic_ncols=True,
    )


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
    if "tau" in metrics:
        line += f"  tau {metrics['tau']:.4f}"
    if "val_knn_top1" in metrics:
        line += f"  validation kNN {metrics['val_knn_top1']:.2f} %"
    if "knn_top1" in metrics:
        line += f"  kNN {metrics['knn_top1']:.2f} %"
    return line


def _results(run: Run, splits: Splits, command: str | None, started: float) -> dict[str, Any]:
    config, context = run.config, run.context
    train_set, test_set = splits.train, splits.test
    final = run.history[-1]
    dataset = {
        "name": train_set.name,
        "train_images": len(train_set),
        "train_fingerprint": train_set.fingerprint,
        "test_images": len(test_set),
        "test_fingerprint": test_set.fingerprint,
    }
    if splits.validation is not None:
        dataset["validation_images"] = len(splits.validation)
        dataset["validation_fingerprint"] = splits.validation.fingerprint
    results = {
        "knn_top1": final.get("knn_top1"),
        "epochs": config.epochs,
        "steps": run.total_steps,
        "method": config.method,
        "temperature": {
            "name": config.temperature,
            "rule": repr(run.rule),
            "params": run.rule.params(),
            "detached": config.detach_temperature,
            "decoupled": config.decoupled,
        },
        "final": final,
        "provenance": {
            "command": command,
            "config": config.as_dict(),
            "git_commit": provenance.code_commit(),
            "package_commit": provenance.code_version(),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "device": str(context.device),
            "machine": provenance.machine(context.device),
            "world_size": context.world_size,
            "amp": run.precision.amp,
            "channels_last": run.channels_last,
            "precision": run.precision.as_dict(),
            "wall_time_s": run.elapsed,
            "wall_time_this_process_s": time.perf_counter() - started,
            "dataset": dataset,
        },
    }
    if splits.validation is not None:
        results["val_knn_top1"] = final.get("val_knn_top1")
    return results
