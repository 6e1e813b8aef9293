"""The book's study, run and tabulated: the configs of ``dyntemp.catalogue`` trained once
at a scale and reused.

``run_or_load(name, seed, scale)`` returns the finished run in
``results/<scale>/<name>/seed<k>/`` when that folder holds one with the same config
(``run_config``), and trains it there otherwise (at ``smoke`` scale in a temporary folder,
never in ``results/``). After training it also writes ``eval.json`` and ``embedding.json``
(``dyntemp.run_metrics``). ``untrained(seed, scale)`` is the kNN accuracy of the same
network before any training, the baseline of every table (``long_tailed=True``: against the
long-tailed training images, the baseline of those runs). Without ``DYNTEMP_SCALE`` the
chapters show the stored ``cpu`` study and train nothing; with it they train what that
scale lacks, after saying how many runs and about how long (``plan``), measured on the
machine at hand. Stored runs are read wherever ``dyntemp.stored`` finds them.

``python -m dyntemp.experiments study cpu`` runs the whole study at one scale;
``python -m dyntemp.experiments table cpu`` prints the table of chapter 9.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import os
import shlex
import sys
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from dyntemp import parts, runs, stored, timing
from dyntemp import train as training
from dyntemp.catalogue import (
    CONFIGS,
    LABELS,
    MAIN,
    MAPPED,
    REPORTED,
    SCALES,
    SEEDS,
    check_config,
    check_scale,
    default_scale,
    is_long_tailed,
    seeds,
    settings,
    steps,
)
from dyntemp.config import TrainConfig
from dyntemp.stats import describe, mean_and_spread

# ----------------------------------------------------------------------------- configs


def run_config(name: str, seed: int = 0, scale: str | None = None, **changes: Any):
    """The TrainConfig of run ``seed`` of config ``name`` at ``scale``, writing into its folder."""
    scale = default_scale() if scale is None else check_scale(scale)
    fields = {"out": str(run_dir(name, seed, scale)), "seed": seed, "progress": False}
    return TrainConfig(**{**fields, **settings(name, scale), **changes})


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
    cfg = run_config(name, seed, scale)
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
    lacks (``dyntemp.run_metrics``); each is written whole, so an interruption leaves the
    run visibly unevaluated."""
    from dyntemp import run_metrics

    folder = Path(folder)
    if not (folder / runs.EVAL_FILE).exists():
        run_metrics.evaluate_run(folder, device="auto")
    if not (folder / runs.EMBEDDING_FILE).exists():
        run_metrics.write_embedding(folder, tsne=tsne, device="auto")


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
    cfg = run_config("lt-fixed-0.2" if long_tailed else "fixed-0.2", seed, scale)
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
        if not finished(run_dir(name, seed, scale), run_config(name, seed, scale))
    ]


def step_seconds(scale: str, steps: int = 6) -> float:
    """Seconds of one training step of the scale's network on this machine, measured
    (``dyntemp.timing.step_seconds``)."""
    return timing.step_seconds(run_config("fixed-0.2", 0, scale), steps=steps)


def plan(names: Iterable[str], scale: str) -> str:
    """What training ``names`` at ``scale`` would take here: runs, steps, estimated time."""
    todo = missing(list(names), scale)
    if not todo:
        return f"all runs of these configs are stored at {scale} scale: nothing to train"
    seconds = step_seconds(scale)
    total = sum(steps(run_config(name, seed, scale)) for name, seed in todo)
    minutes = total * seconds / 60
    return (
        f"{len(todo)} runs to train at {scale} scale ({total:,} steps); one step takes "
        f"{1000 * seconds:.0f} ms here, so about {minutes:.0f} minutes of training, plus "
        f"evaluation"
    )


#: Training images of each dataset (CIFAR-10-LT at the imbalance of the study, 0.01).
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
            elif finished(run_dir(name, seed, scale), run_config(name, seed, scale)):
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
