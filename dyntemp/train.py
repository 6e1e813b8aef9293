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
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from dyntemp import distributed, optim, provenance, runs, timing
from dyntemp.augment import ViewBatches
from dyntemp.config import TEMPERATURE_OPTIONS, TrainConfig
from dyntemp.parts import Splits, knn_scores, load_splits
from dyntemp.precision import Precision, amp_dtype, by_rule, choose
from dyntemp.step import Run, start_run, train_step

__all__ = ["NonFiniteLossError", "train", "train_epoch"]

LOG_EVERY = 25  # steps between progress-bar updates and non-finite checks


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


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
