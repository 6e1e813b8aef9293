"""One decisive comparison: does DySTreSS beat the best fixed temperature, once both are
tuned on a validation split, trained to what the network learns, and run with enough seeds?

The stored cpu study (``dyntemp.experiments``) shows what the rules do to the first 3,000
steps. This experiment asks the book's question at a scale a 2-core CPU carries, in three
stages, each stored under ``results/decisive/<stage>/<name>/seed<k>/``:

1. **pilot**: fixed tau = 0.2, seed 0, a constant learning rate for ``PILOT_EPOCHS``
   epochs, scored every 2 epochs by kNN on the validation split. Its curve chooses the
   training length: the shortest length L at which doubling it changes validation kNN by
   less than ``CONVERGED_POINTS`` (``choose_length``), within the budget.
2. **tuning**: every candidate of each arm (``ARMS``) at every learning rate of ``LR_GRID``,
   seed 0, L epochs with the cosine schedule; each arm's best by final validation kNN
   goes on (``best_of_arms``). Both arms get the same grid of learning rates.
3. **primary**: each arm's best, with the seeds the plan file names, from one package
   commit. The plan (``results/decisive/plan.json``, written by ``python -m
   dyntemp.decisive plan`` and committed before the first primary run) fixes the seeds,
   the test, and the rule of the verdict.

Every run holds out the same class-balanced 5,000 of the 50,000 training images
(``--validation 5000``): the kNN during training scores them against the other 45,000,
and the test set is scored once, at the end of a run, and chooses nothing. Every run uses
bf16 with channels_last, whatever the machine would choose, so that all stages compute
the same arithmetic.

``python -m dyntemp.decisive pilot|tuning|plan|primary|status`` runs or reports a stage;
finished runs are kept, so a stopped stage resumes where it stopped.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Any

from dyntemp import runs, stored
from dyntemp import train as training
from dyntemp.config import PRESETS, TrainConfig
from dyntemp.experiments import relative, train_command

STAGES = ("pilot", "tuning", "primary")
VALIDATION_IMAGES = 5_000

# What every run shares: the cpu scale's network and optimiser, the validation split, one
# arithmetic on every machine.
BASE: dict[str, Any] = {
    **PRESETS["cpu"],
    "validation": VALIDATION_IMAGES,
    "amp": "bf16",
    "channels_last": "on",
    "eval_every": 4,
    "progress": False,
}

PILOT_EPOCHS = 64
PILOT: dict[str, Any] = {
    "temperature": "fixed",
    "tau": 0.2,
    "lr_schedule": "constant",
    "epochs": PILOT_EPOCHS,
    "eval_every": 2,
}
#: Training is long enough when doubling it moves validation kNN by less than this.
CONVERGED_POINTS = 1.0

# The contest: each arm's candidates, as the issue of the comparison fixed them.
ARMS: dict[str, dict[str, dict[str, Any]]] = {
    "simclr": {
        "fixed-0.1": {"temperature": "fixed", "tau": 0.1},
        "fixed-0.2": {"temperature": "fixed", "tau": 0.2},
        "fixed-0.5": {"temperature": "fixed", "tau": 0.5},
    },
    "dystress": {
        "dystress-0.07-0.2": {"temperature": "dystress", "tau_min": 0.07, "tau_max": 0.2},
        "dystress-0.1-0.2": {"temperature": "dystress", "tau_min": 0.1, "tau_max": 0.2},
    },
}
LR_GRID = (0.15, 0.3, 0.6)
TUNING_SEED = 0

#: The budget of the whole experiment (pilot, tuning, primary), in SGD steps of batch 128.
BUDGET_STEPS = 400_000
MAX_SEEDS = 10


# ----------------------------------------------------------------------------- configs


def root() -> Path:
    """``results/decisive``: the stored one where there is one, else where new runs go."""
    found = stored.read_root() / "decisive"
    return found if found.is_dir() else stored.write_root() / "decisive"


def run_folder(stage: str, name: str, seed: int) -> Path:
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; choose one of {', '.join(STAGES)}")
    return root() / stage / name / f"seed{seed}"


def steps_per_epoch() -> int:
    """SGD steps of an epoch: the 45,000 training images over the batch."""
    return (50_000 - VALIDATION_IMAGES) // BASE["batch_size"]


def pilot_config() -> TrainConfig:
    return _config("pilot", "fixed-0.2", 0, PILOT)


def tuning_name(candidate: str, lr: float) -> str:
    return f"{candidate}-lr{lr:g}"


def tuning_config(candidate: str, lr: float, epochs: int) -> TrainConfig:
    rule = _candidate(candidate)
    changes = {**rule, "lr": lr, "epochs": epochs}
    return _config("tuning", tuning_name(candidate, lr), TUNING_SEED, changes)


def primary_config(candidate: str, lr: float, epochs: int, seed: int) -> TrainConfig:
    changes = {**_candidate(candidate), "lr": lr, "epochs": epochs}
    return _config("primary", candidate, seed, changes)


def _candidate(name: str) -> dict[str, Any]:
    for candidates in ARMS.values():
        if name in candidates:
            return candidates[name]
    known = [n for candidates in ARMS.values() for n in candidates]
    raise ValueError(f"unknown candidate {name!r}; known: {', '.join(known)}")


def _config(stage: str, name: str, seed: int, changes: dict[str, Any]) -> TrainConfig:
    folder = run_folder(stage, name, seed)
    return TrainConfig(**{**BASE, **changes, "seed": seed, "out": str(folder)})


# ----------------------------------------------------------------------------- running


def run(cfg: TrainConfig) -> dict[str, Any]:
    """The finished run of ``cfg``: loaded, or trained (resumed) first."""
    folder = Path(cfg.out)
    if not runs.is_finished(folder):
        here = dataclasses.replace(cfg, out=os.path.relpath(folder))
        command = train_command(dataclasses.replace(cfg, out=relative(folder)))
        training.train(here, command=command)
    return runs.load(folder)


def curve(folder: Path) -> list[tuple[int, float]]:
    """(epoch, validation kNN top-1) of every evaluated epoch of the run in ``folder``."""
    metrics = runs.load(folder)["metrics"] if runs.is_finished(folder) else _partial(folder)
    return [(m["epoch"], m["val_knn_top1"]) for m in metrics if "val_knn_top1" in m]


def _partial(folder: Path) -> list[dict[str, Any]]:
    path = folder / runs.METRICS_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def choose_length(points: list[tuple[int, float]]) -> dict[str, Any]:
    """The shortest evaluated length L whose double 2L was evaluated too and scores less than
    ``CONVERGED_POINTS`` more on the validation split; None when no length qualifies.

    >>> choose_length([(2, 40.0), (4, 50.0), (8, 55.0), (16, 55.5)])["epochs"]
    8
    """
    score = dict(points)
    gains = {e: score[2 * e] - score[e] for e in sorted(score) if 2 * e in score}
    converged = [e for e, gain in gains.items() if gain < CONVERGED_POINTS]
    return {
        "epochs": converged[0] if converged else None,
        "gain_of_doubling": gains,
        "criterion": f"validation kNN(2L) - kNN(L) < {CONVERGED_POINTS} point",
    }


def tuning_configs(epochs: int) -> list[TrainConfig]:
    return [
        tuning_config(candidate, lr, epochs)
        for lr in LR_GRID
        for candidates in ARMS.values()
        for candidate in candidates
    ]


def best_of_arms(epochs: int) -> dict[str, dict[str, Any]]:
    """Each arm's finished tuning runs and its best (highest final validation kNN)."""
    table: dict[str, dict[str, Any]] = {}
    for arm, candidates in ARMS.items():
        rows = []
        for candidate in candidates:
            for lr in LR_GRID:
                folder = Path(tuning_config(candidate, lr, epochs).out)
                if runs.is_finished(folder):
                    results = runs.read_json(folder / runs.RESULTS_FILE)
                    rows.append(
                        {"candidate": candidate, "lr": lr, "val_knn_top1": results["val_knn_top1"]}
                    )
        best = max(rows, key=lambda row: row["val_knn_top1"]) if rows else None
        table[arm] = {"runs": rows, "best": best, "complete": len(rows) == len(candidates) * 3}
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dyntemp.decisive", description=__doc__)
    parser.add_argument("stage", choices=("pilot", "tuning", "status"))
    parser.add_argument("--epochs", type=int, help="tuning: the training length L")
    args = parser.parse_args(argv)
    try:
        if args.stage == "pilot":
            result = run(pilot_config())
            print(json.dumps(choose_length(curve(result["folder"])), indent=1))
        elif args.stage == "tuning":
            if args.epochs is None:
                raise ValueError("tuning needs --epochs, the length the pilot chose")
            for cfg in tuning_configs(args.epochs):
                result = run(cfg)
                print(f"{relative(cfg.out)}: validation {result['results']['val_knn_top1']:.2f} %")
        else:
            print(json.dumps(choose_length(curve(Path(pilot_config().out))), indent=1))
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
