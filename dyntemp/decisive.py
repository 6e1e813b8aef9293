"""One decisive comparison: does DySTreSS beat the best fixed temperature, once both are
tuned on a validation split, trained to what the network learns, and run with enough seeds?

The stored cpu study (``dyntemp.experiments``) shows what the rules do to the first 3,000
steps. This experiment asks the book's question at a scale a 2-core CPU carries, in stages,
each stored under ``results/decisive/<stage>/<name>/seed<k>/``:

1. **pilot**: fixed tau = 0.2, seed 0, a constant learning rate for ``PILOT_EPOCHS``
   epochs, scored every 2 epochs by kNN on the validation split. Its curve chooses the
   training length: the shortest length L at which doubling it changes validation kNN by
   less than ``CONVERGED_POINTS``, on means over the last quarter of each length
   (``choose_length``), within the budget (``budget_epochs``).
2. **tuning**: every candidate of each arm (``ARMS``) at every learning rate of ``LR_GRID``,
   seed 0, L epochs with the cosine schedule; each arm's best by final validation kNN
   goes on (``best_of_arms``). Both arms get the same grid of learning rates.
3. **lengthcheck** and **spread**: the pilot's config for 2L epochs under the cosine
   schedule (what doubling buys there), and for L epochs with two more seeds (the spread
   that sizes the primary stage, with the stored study's pooled spread as its floor).
4. **primary**: each arm's best, with the seeds the plan file names, from one package
   commit. The plan (``results/decisive/plan.json``, written by ``python -m
   dyntemp.decisive plan`` and committed before the first primary run) fixes the seeds,
   the test, and the rule of the verdict (``primary_result``; ``verdict_sentence`` says
   in one sentence what it means for the paper's claim).
5. **longtail**: CIFAR-10-LT the paper's way (``LONG_TAIL``, ``long_tail_family``).
6. **confirm**: written after the primary runs, when the length check found that doubling
   L still gains more than a point under the cosine schedule: each arm's setting chosen
   again on the validation split from the settings run with several seeds
   (``settings_on_validation``), trained for 2L epochs with seeds no earlier stage used,
   tested by the plan's rule. Its plan (``confirm-plan.json``, ``python -m dyntemp.decisive
   confirm-plan``) is committed before its first run.

Every balanced run holds out the same class-balanced 5,000 of the 50,000 training images
(``--validation 5000``): the kNN during training scores them against the other 45,000,
and the test set is scored once, at the end of a run, and chooses nothing. Every run uses
bf16 with channels_last, whatever the machine would choose, so that all stages compute
the same arithmetic.

``python -m dyntemp.decisive <stage>`` runs a stage (``plan`` and ``confirm-plan`` write the
plans, ``status`` reports the length rule); finished runs are kept, so a stopped stage
resumes where it stopped.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

from dyntemp import runs, stored
from dyntemp import train as training
from dyntemp.config import PRESETS, TrainConfig
from dyntemp.experiments import relative, train_command

STAGES = ("pilot", "tuning", "lengthcheck", "spread", "primary", "longtail", "confirm")
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
#: The seed spread that sizes the primary stage: the pilot's config at the chosen length
#: (its tuning run is seed 0) with these seeds as well.
SPREAD = ("fixed-0.2", 0.3)
SPREAD_SEEDS = (1, 2)

# The primary test, as the plan file states it before the first primary run.
PRIMARY_EFFECT = 1.0  # points of test kNN top-1: the difference the seeds are sized to find
PRIMARY_POWER = 0.8
EQUIVALENCE_MARGIN = 1.0  # points: the equivalence test's margin
LEVEL = 0.05
PLAN_FILE = "plan.json"
CONFIRM_PLAN_FILE = "confirm-plan.json"

# CIFAR-10-LT the paper's way: the cpu study's long-tailed scale (all 12,406 images, 32
# epochs of batch 128), scored by majority 1-NN and 10-NN and by head / medium / tail
# (``python -m dyntemp eval --long-tail``). Kukleva et al.'s schedule twice: with the period
# the DySTreSS comparison implies (400 epochs in a 200-epoch run: twice the run's length,
# tau falls from 1.0 to 0.1 once), and with the period of its authors' code (t_max = 200,
# a period of 400 epochs in a 2000-epoch run: a fifth of the run, five cycles).
LONG_TAIL_BASE: dict[str, Any] = {
    **PRESETS["cpu"],
    "dataset": "cifar10-lt",
    "imbalance": 0.01,
    "epochs": 32,
    "eval_every": 4,
    "amp": "bf16",
    "channels_last": "on",
    "progress": False,
}
LONG_TAIL: dict[str, dict[str, Any]] = {
    "dystress-0.1-0.2": {"temperature": "dystress", "tau_min": 0.1, "tau_max": 0.2},
    "fixed-0.2": {"temperature": "fixed", "tau": 0.2},
    "schedule-paper": {"temperature": "schedule", "tau_min": 0.1, "tau_max": 1.0, "period": 64.0},
    "schedule-source": {
        "temperature": "schedule",
        "tau_min": 0.1,
        "tau_max": 1.0,
        "period": 6.4,
    },
}
LONG_TAIL_SEEDS = (0, 1, 2)
#: The long-tailed family, fixed before its runs: DySTreSS against each other rule, on each
#: of the paper's two classifiers, Welch over the 3 seeds, Holm-adjusted over the family.
#: Secondary: with 3 seeds a side these tests find only large differences.
LONG_TAIL_FAMILY = {
    "reference": "dystress-0.1-0.2",
    "others": ("fixed-0.2", "schedule-paper", "schedule-source"),
    "measures": ("majority 1-NN", "majority 10-NN"),
}

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


def primary_config(
    candidate: str, lr: float, epochs: int, seed: int, stage: str = "primary"
) -> TrainConfig:
    """A run of a plan's arm: ``stage`` is "primary", or "confirm" for the confirmation."""
    changes = {**_candidate(candidate), "lr": lr, "epochs": epochs}
    return _config(stage, candidate, seed, changes)


def spread_configs(epochs: int) -> list[TrainConfig]:
    """The spread stage: the pilot's config at length ``epochs`` with ``SPREAD_SEEDS``."""
    candidate, lr = SPREAD
    changes = {**_candidate(candidate), "lr": lr, "epochs": epochs}
    name = tuning_name(candidate, lr)
    return [_config("spread", name, seed, changes) for seed in SPREAD_SEEDS]


def long_tail_configs() -> list[TrainConfig]:
    return [
        TrainConfig(
            **{**LONG_TAIL_BASE, **rule, "seed": seed},
            out=str(run_folder("longtail", name, seed)),
        )
        for seed in LONG_TAIL_SEEDS
        for name, rule in LONG_TAIL.items()
    ]


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


def run(cfg: TrainConfig, *, long_tail: bool = False) -> dict[str, Any]:
    """The finished run of ``cfg``: loaded, or trained (resumed) first; with ``long_tail``
    also scored the paper's way (``longtail.json``). The manifest of the stored results is
    rewritten after each new run, so that a commit of its folder stays consistent."""
    folder = Path(cfg.out)
    if not runs.is_finished(folder):
        here = dataclasses.replace(cfg, out=os.path.relpath(folder))
        command = train_command(dataclasses.replace(cfg, out=relative(folder)))
        training.train(here, command=command)
    if long_tail and not (folder / runs.LONG_TAIL_FILE).exists():
        from dyntemp import run_metrics

        run_metrics.long_tail_report(folder, device=cfg.device)
    if stored.checkout() is not None:
        stored.write_manifest(stored.checkout() / "results")
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


def smoothed(points: list[tuple[int, float]], epochs: int) -> float | None:
    """Validation kNN at ``epochs``, as the mean of the evaluations in its last quarter
    (epochs from ``0.75 * epochs`` to ``epochs``, at least three evaluations): one
    evaluation under a constant learning rate moves by about a point from one to the next,
    so a single one decides nothing. None where fewer than three evaluations fall there."""
    window = [v for e, v in points if 0.75 * epochs <= e <= epochs]
    return sum(window) / len(window) if len(window) >= 3 and epochs in dict(points) else None


def choose_length(points: list[tuple[int, float]], *, most: int | None = None) -> dict[str, Any]:
    """The training length: the shortest evaluated L whose double 2L scores less than
    ``CONVERGED_POINTS`` more on the validation split, both scores ``smoothed``; None when
    no length qualifies. ``most`` caps it (the budget); ``raw`` is the same rule on single
    evaluations, the rule first written, kept for the record.

    >>> curve = [(e, 56.0 - 16.0 / e) for e in range(2, 65, 2)]
    >>> choose_length(curve)["epochs"], choose_length(curve)["raw"]
    (16, 10)
    >>> choose_length(curve, most=8)["epochs"]
    8
    """
    score = dict(points)
    raw = {e: score[2 * e] - score[e] for e in sorted(score) if 2 * e in score}
    smooth = {}
    for e in sorted(score):
        now, doubled = smoothed(points, e), smoothed(points, 2 * e)
        if now is not None and doubled is not None:
            smooth[e] = doubled - now
    converged = [e for e, gain in smooth.items() if gain < CONVERGED_POINTS]
    chosen = converged[0] if converged else None
    capped = most is not None and (chosen is None or chosen > most)
    return {
        "epochs": most if capped else chosen,
        "converged_at": chosen,
        "capped_by_budget": capped,
        "gain_of_doubling": smooth,
        "raw": next((e for e, gain in raw.items() if gain < CONVERGED_POINTS), None),
        "raw_gain_of_doubling": raw,
        "criterion": f"mean validation kNN over the last quarter up to 2L minus the same up "
        f"to L < {CONVERGED_POINTS} point",
    }


def budget_epochs() -> int:
    """The longest length L the budget carries: the pilot, the long-tailed runs and, at L
    epochs each, the tuning runs, the spread runs, the length check (2L) and ``MAX_SEEDS``
    primary runs a side."""
    fixed = PILOT_EPOCHS * steps_per_epoch() + long_tail_steps(long_tail_configs())
    runs_of_l = len(tuning_configs(1)) + len(SPREAD_SEEDS) + 2 + 2 * MAX_SEEDS
    return (BUDGET_STEPS - fixed) // (runs_of_l * steps_per_epoch())


def long_tail_steps(configs: list[TrainConfig]) -> int:
    """The SGD steps of ``configs``, runs of the long-tailed stage (all 12,406 images)."""
    return len(configs) * (12_406 // LONG_TAIL_BASE["batch_size"]) * LONG_TAIL_BASE["epochs"]


def length_check_config(epochs: int) -> TrainConfig:
    """The length check: the pilot's config, cosine schedule, twice the chosen length: its
    gain over the tuning run of length L says what doubling buys under the real schedule."""
    candidate, lr = SPREAD
    changes = {**_candidate(candidate), "lr": lr, "epochs": 2 * epochs}
    return _config("lengthcheck", tuning_name(candidate, lr), TUNING_SEED, changes)


def length_check(epochs: int) -> dict[str, Any] | None:
    """What doubling the length buys under the cosine schedule the runs use: the pilot's
    config trained for ``epochs`` (its tuning run) and for twice that (the length check),
    their validation and test kNN, and the validation gain of the longer run against
    ``CONVERGED_POINTS``; None until both are stored. One seed each: a run's validation
    kNN moves by about half a point from seed to seed, so the gain carries that noise."""
    candidate, lr = SPREAD
    configs = (tuning_config(candidate, lr, epochs), length_check_config(epochs))
    folders = [Path(cfg.out) for cfg in configs]
    if not all(runs.is_finished(folder) for folder in folders):
        return None
    short, long = (runs.read_json(folder / runs.RESULTS_FILE) for folder in folders)
    gain = long["val_knn_top1"] - short["val_knn_top1"]
    return {
        "epochs": (epochs, 2 * epochs),
        "val_knn_top1": (short["val_knn_top1"], long["val_knn_top1"]),
        "knn_top1": (short["knn_top1"], long["knn_top1"]),
        "gain": gain,
        "converged": gain < CONVERGED_POINTS,
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
        table[arm] = {
            "runs": rows,
            "best": best,
            "complete": len(rows) == len(candidates) * len(LR_GRID),
        }
    return table


def spread_estimate(epochs: int) -> dict[str, Any]:
    """The seed spread of the pilot's config at ``epochs`` (tuning seed 0 and the spread
    seeds): the test and validation kNN of each finished run and their sample spreads."""
    from dyntemp import stats

    candidate, lr = SPREAD
    folders = [Path(tuning_config(candidate, lr, epochs).out)]
    folders += [Path(cfg.out) for cfg in spread_configs(epochs)]
    done = [runs.read_json(f / runs.RESULTS_FILE) for f in folders if runs.is_finished(f)]
    test = [r["knn_top1"] for r in done]
    validation = [r["val_knn_top1"] for r in done]
    return {
        "runs": [relative(f) for f in folders if runs.is_finished(f)],
        "test_knn_top1": test,
        "val_knn_top1": validation,
        "test_spread": stats.mean_and_spread(test)[1] if len(test) > 1 else None,
    }


def stored_spread() -> dict[str, Any]:
    """The pooled seed spread of the stored cpu study's five main configs (3 seeds each,
    10 degrees of freedom): the same network and recipe, a better-founded spread than
    the three runs of the spread stage alone."""
    from dyntemp import experiments

    rows = experiments.results_table("cpu", experiments.MAIN)
    variances = [row["spread"] ** 2 for row in rows]
    return {
        "configs": [row["name"] for row in rows],
        "pooled_spread": math.sqrt(sum(variances) / len(variances)),
    }


def primary_seeds(spread: float) -> dict[str, Any]:
    """Seeds a side for the primary test: the fewest that find ``PRIMARY_EFFECT`` with
    ``PRIMARY_POWER`` at ``LEVEL`` given the seed ``spread``, at most ``MAX_SEEDS``."""
    from dyntemp import stats

    needed = stats.seeds_for_power(spread, PRIMARY_EFFECT, PRIMARY_POWER, LEVEL, most=MAX_SEEDS)
    n = MAX_SEEDS if needed is None else needed
    return {
        "seeds_per_arm": n,
        "needed_for_power": needed,
        "power_at_effect": stats.power(n, spread, PRIMARY_EFFECT, LEVEL),
    }


def write_plan(epochs: int, *, force: bool = False) -> dict[str, Any]:
    """Write ``results/decisive/plan.json``: the arms (each arm's best tuning run), the
    length, the seeds, the test and the rule of the verdict. Refuses while tuning or the
    spread runs are unfinished, and never overwrites a plan (primary runs may exist)."""
    from dyntemp import provenance

    target = root() / PLAN_FILE
    if target.exists() and not force:
        raise ValueError(f"{relative(target)} exists: a plan is written once, before the runs")
    arms = best_of_arms(epochs)
    unfinished = [arm for arm, table in arms.items() if not table["complete"]]
    if unfinished:
        raise ValueError(f"the tuning of {', '.join(unfinished)} is unfinished")
    spread = spread_estimate(epochs)
    if len(spread["test_knn_top1"]) < 1 + len(SPREAD_SEEDS):
        raise ValueError("the spread runs are unfinished (python -m dyntemp.decisive spread)")
    pooled = stored_spread()
    planning = max(spread["test_spread"], pooled["pooled_spread"])
    seeds = primary_seeds(planning)
    first = max(SPREAD_SEEDS) + 1  # seeds no earlier stage used
    plan = {
        "question": "Does DySTreSS, tuned, beat SimCLR with its best fixed temperature, "
        "tuned the same way, in test-set kNN after training of the chosen length?",
        "epochs": epochs,
        "arms": {arm: table["best"] for arm, table in arms.items()},
        "tuning": {arm: table["runs"] for arm, table in arms.items()},
        "spread": spread,
        "stored_spread": pooled,
        "planning_spread": planning,
        "planning_rule": "the larger of the spread stage's test spread and the stored cpu "
        "study's pooled spread, so that a low estimate from three runs cannot shrink the "
        "primary stage",
        **seeds,
        "seeds": list(range(first, first + seeds["seeds_per_arm"])),
        "primary_test": {
            "measure": "test-set weighted 200-NN top-1 (%) at the end of each run",
            "difference": "mean(dystress) - mean(simclr)",
            "test": f"Welch's two-sided t-test at level {LEVEL}, with its 95 % interval",
            "effect_sized_for": PRIMARY_EFFECT,
        },
        "verdict_rule": [
            f"p < {LEVEL}: the arms differ; the sign says which is better, the interval by "
            "how much",
            f"otherwise, TOST with margin +-{EQUIVALENCE_MARGIN} point: p < {LEVEL} says the "
            "rules are equivalent within the margin; else the experiment is inconclusive",
        ],
        "secondary": "every other comparison (validation kNN, majority kNN, the long-tailed "
        "runs) is secondary, Holm-adjusted within its family, and decides nothing",
        "package_commit": provenance.code_version(),
    }
    target.parent.mkdir(parents=True, exist_ok=True)
    runs.atomic_write_json(target, plan)
    return plan


def read_plan() -> dict[str, Any]:
    target = root() / PLAN_FILE
    if not target.exists():
        raise ValueError(
            f"no plan in {relative(target)}: write it (python -m dyntemp.decisive plan) and "
            f"commit it before the first primary run"
        )
    return runs.read_json(target)


def primary_configs(plan: dict[str, Any]) -> list[TrainConfig]:
    """The runs the plan names, seed by seed (both arms of a seed before the next); a
    confirmation plan names its own stage."""
    stage = plan.get("stage", "primary")
    return [
        primary_config(a["candidate"], a["lr"], plan["epochs"], s, stage)
        for s in plan["seeds"]
        for a in (plan["arms"][arm] for arm in ARMS)
    ]


def primary_values(plan: dict[str, Any], key: str = "knn_top1") -> dict[str, list[float]]:
    """Each arm's ``key`` (test kNN, or ``val_knn_top1``) in its finished primary runs, in
    the order of the plan's seeds."""
    values: dict[str, list[float]] = {}
    stage = plan.get("stage", "primary")
    for arm, best in plan["arms"].items():
        folders = [
            Path(primary_config(best["candidate"], best["lr"], plan["epochs"], seed, stage).out)
            for seed in plan["seeds"]
        ]
        values[arm] = [
            runs.read_json(folder / runs.RESULTS_FILE)[key]
            for folder in folders
            if runs.is_finished(folder)
        ]
    return values


def primary_result(plan: dict[str, Any] | None = None) -> dict[str, Any]:
    """The primary test on the finished primary runs, decided by the plan's rule."""
    from dyntemp import stats

    plan = read_plan() if plan is None else plan
    values = primary_values(plan)
    gap = stats.difference(values["dystress"], values["simclr"])
    low, high = stats.interval(gap)
    tost = stats.equivalence(gap, EQUIVALENCE_MARGIN)
    complete = all(len(v) == len(plan["seeds"]) for v in values.values())
    if math.isnan(gap["p_value"]):
        verdict = "not tested"
    elif gap["p_value"] < LEVEL:
        verdict = "DySTreSS better" if gap["difference"] > 0 else "SimCLR better"
    elif tost["p_value"] < LEVEL:
        verdict = f"equivalent within +-{EQUIVALENCE_MARGIN:g} point"
    else:
        verdict = "inconclusive"
    return {
        "values": values,
        "complete": complete,
        "difference": gap,
        "interval": (low, high),
        "equivalence": tost,
        "verdict": verdict,
    }


def exploratory_looks(plan: dict[str, Any] | None = None) -> dict[str, Any]:
    """Looks at the stored runs written after the primary runs were seen: exploratory, not
    in the plan, they decide nothing.

    ``chosen_by_one_seed``: each arm's validation kNN in the tuning run that chose it (seed 0)
    beside the same setting's primary seeds: the best of several single-seed runs tends to
    score above what its setting gives on other seeds (the winner's curse). ``rows``:
    DySTreSS's primary runs against the spread stage's setting (``SPREAD``, seeds 0-2, the
    one other SimCLR setting run with more than one seed) on test and validation kNN, and
    the primary arms on validation kNN; Welch, Holm-adjusted over the rows."""
    from dyntemp import stats

    plan = read_plan() if plan is None else plan
    test, validation = primary_values(plan), primary_values(plan, "val_knn_top1")
    spread = spread_estimate(plan["epochs"])
    other = tuning_name(*SPREAD)
    compared = [
        ("test kNN", other, test["dystress"], spread["test_knn_top1"]),
        ("validation kNN", other, validation["dystress"], spread["val_knn_top1"]),
        ("validation kNN", "the SimCLR arm", validation["dystress"], validation["simclr"]),
    ]
    rows = [
        {"measure": measure, "against": against, "gap": stats.difference(mine, theirs)}
        for measure, against, mine, theirs in compared
    ]
    for row, adjusted in zip(rows, stats.holm([r["gap"]["p_value"] for r in rows]), strict=True):
        row["adjusted_p"] = adjusted
        row["verdict"] = stats.verdict(row["gap"], adjusted)
    chosen = {
        arm: {"tuning": best["val_knn_top1"], "primary": validation[arm]}
        for arm, best in plan["arms"].items()
    }
    return {"chosen_by_one_seed": chosen, "rows": rows}


# ----------------------------------------------------------------------------- confirmation


#: The confirmation's choice counts only settings with at least this many stored runs.
CONFIRM_MIN_RUNS = 3


def _setting(config: dict[str, Any]) -> tuple[str, float] | None:
    """The (candidate, learning rate) of a run's config, or None for another rule."""
    for candidates in ARMS.values():
        for name, rule in candidates.items():
            if all(config.get(key) == value for key, value in rule.items()):
                return name, config["lr"]
    return None


def settings_on_validation(epochs: int) -> dict[str, dict[str, Any]]:
    """Each arm's settings as every stored run of length ``epochs`` scores them on the
    validation split (tuning, spread and primary runs, any seed), and the best by its mean
    among the settings with at least ``CONFIRM_MIN_RUNS`` runs: the validation split's
    choice once one seed no longer decides it."""
    found: dict[tuple[str, float], list[float]] = {}
    for stage in ("tuning", "spread", "primary"):
        for path in sorted((root() / stage).glob(f"*/seed*/{runs.RESULTS_FILE}")):
            report = runs.read_json(path)
            config = report["provenance"]["config"]
            setting = _setting(config)
            if setting is not None and config["epochs"] == epochs:
                found.setdefault(setting, []).append(report["val_knn_top1"])
    table: dict[str, dict[str, Any]] = {}
    for arm, candidates in ARMS.items():
        rows = [
            {
                "candidate": name,
                "lr": lr,
                "runs": len(values),
                "val_knn_top1": values,
                "mean": sum(values) / len(values),
            }  # fmt: skip
            for (name, lr), values in sorted(found.items())
            if name in candidates
        ]
        eligible = [row for row in rows if row["runs"] >= CONFIRM_MIN_RUNS]
        table[arm] = {
            "settings": rows,
            "best": max(eligible, key=lambda row: row["mean"]) if eligible else None,
        }
    return table


def write_confirm_plan(*, force: bool = False) -> dict[str, Any]:
    """Write ``results/decisive/confirm-plan.json``, before any confirmation run: each arm's
    setting re-chosen by ``settings_on_validation``, trained for twice the plan's length
    with seeds no earlier stage used, tested by the plan's rule. Refuses until the primary
    runs and the length check are stored, when the length check found L long enough, when
    the budget would be exceeded, from uncommitted code, over a written plan, and (even
    with ``force``) once any confirmation run exists.
    """
    from dyntemp import provenance

    plan = read_plan()
    target = root() / CONFIRM_PLAN_FILE
    if any((root() / "confirm").glob("*/seed*")):
        raise ValueError(f"{relative(root() / 'confirm')} holds runs: its plan cannot change")
    if target.exists() and not force:
        raise ValueError(f"{relative(target)} exists: a plan is written once, before the runs")
    commit = provenance.code_version()
    if commit is None or commit.endswith("+dirty"):
        raise ValueError(f"the package is at {commit}: a plan names a committed package")
    if not primary_result(plan)["complete"]:
        raise ValueError("the primary runs are unfinished (python -m dyntemp.decisive primary)")
    check = length_check(plan["epochs"])
    if check is None:
        raise ValueError("the length check is unfinished (python -m dyntemp.decisive lengthcheck)")
    if check["converged"]:
        raise ValueError(
            f"the length check gains {check['gain']:+.2f} points: L is long enough, and the "
            "primary result stands without a confirmation"
        )
    table = settings_on_validation(plan["epochs"])
    missing = [arm for arm, entry in table.items() if entry["best"] is None]
    if missing:
        raise ValueError(f"no setting of {', '.join(missing)} has {CONFIRM_MIN_RUNS} runs")
    epochs = 2 * plan["epochs"]
    steps = len(ARMS) * len(plan["seeds"]) * epochs * steps_per_epoch()
    spent = sum(cost["steps"] for cost in ledger().values())
    to_come = long_tail_steps([c for c in long_tail_configs() if not runs.is_finished(c.out)])
    total = spent + to_come + steps
    if total > BUDGET_STEPS:
        raise ValueError(f"the confirmation needs {total:,} SGD steps in all: over the budget")
    looks = exploratory_looks(plan)["chosen_by_one_seed"]
    confirm = {
        "stage": "confirm",
        "question": "Does DySTreSS beat SimCLR at twice the primary length, each arm's "
        "setting chosen again on the validation split from the settings run with several "
        "seeds?",
        "why": [
            f"the length check: doubling L = {plan['epochs']} gains {check['gain']:+.2f} "
            f"points of validation kNN under the cosine schedule (one seed), more than "
            f"{CONVERGED_POINTS:g}",
            f"the primary's SimCLR setting scored {looks['simclr']['tuning']:.2f} on "
            f"validation in the tuning run that chose it and "
            f"{sum(looks['simclr']['primary']) / len(looks['simclr']['primary']):.2f} on "
            "average over its primary seeds: one seed chose it",
        ],
        "written_after": "the primary runs, the length check and the exploratory looks were "
        "seen, among them the test kNN of the two SimCLR settings this rule admits; the "
        "choice itself reads the validation split only",
        "epochs": epochs,
        "choice_rule": f"each arm's setting with the best mean validation kNN at "
        f"{plan['epochs']} epochs over every stored run, among those with at least "
        f"{CONFIRM_MIN_RUNS}",
        "choice": table,
        "arms": {
            arm: {
                "candidate": e["best"]["candidate"],
                "lr": e["best"]["lr"],
                "val_knn_top1": e["best"]["mean"],
                "runs": e["best"]["runs"],
            }  # fmt: skip
            for arm, e in table.items()
        },
        "seeds": list(range(max(plan["seeds"]) + 1, max(plan["seeds"]) + 1 + len(plan["seeds"]))),
        "seeds_per_arm": len(plan["seeds"]),
        "primary_test": {**plan["primary_test"], "after": f"{epochs} epochs"},
        "verdict_rule": plan["verdict_rule"],
        "budget": {
            "spent": spent,
            "long_tail_to_come": to_come,
            "confirmation": steps,
            "total": total,
            "allowed": BUDGET_STEPS,
        },
        "package_commit": commit,
    }
    runs.atomic_write_json(target, confirm)
    return confirm


def read_confirm_plan() -> dict[str, Any] | None:
    """The confirmation's plan, or None before it is written."""
    target = root() / CONFIRM_PLAN_FILE
    return runs.read_json(target) if target.exists() else None


def paper_gain() -> float:
    """The paper's reported CIFAR-10 gain of DySTreSS over SimCLR, in points (its numbers,
    ResNet-18, 200 epochs: ``catalogue.REPORTED``)."""
    from dyntemp.catalogue import REPORTED

    return REPORTED["dystress-0.07-0.2"][1] - REPORTED["fixed-0.2"][1]


def verdict_sentence(result: dict[str, Any]) -> str:
    """One plain sentence of what the primary ``result`` means for the paper's claim at this
    scale, written by the plan's rule from the stored numbers alone."""
    from dyntemp import stats

    if not result["complete"] or result["verdict"] == "not tested":
        return "The primary runs are not all stored yet: there is no verdict."
    gap = result["difference"]["difference"]
    low, high = result["interval"]
    paper = paper_gain()
    numbers = f"{gap:+.2f} points, 95 % interval [{low:+.2f}, {high:+.2f}]"
    where = (
        f"the paper's +{paper:.2f} points (its ResNet-18 after 200 epochs, DySTreSS at a "
        f"range it does not state against its SimCLR) lie "
    )
    if low <= paper <= high:
        where += "inside that interval"
    elif paper > high:
        where += "above that interval: a gain as large is not seen at this scale"
    else:
        where += "below that interval: the gain at this scale is larger"
    rivals = "DySTreSS and SimCLR with its best fixed temperature, both tuned the same way"
    verdict = result["verdict"]
    if verdict == "DySTreSS better":
        return (
            f"At this scale DySTreSS beats SimCLR with its best fixed temperature, both "
            f"tuned the same way ({numbers}): the direction the paper claims, and {where}."
        )
    if verdict == "SimCLR better":
        return (
            f"At this scale SimCLR with its best fixed temperature beats DySTreSS, both "
            f"tuned the same way ({numbers}): the opposite of the paper's claim."
        )
    if verdict.startswith("equivalent"):
        return (
            f"At this scale {rivals}, are equivalent within ±{EQUIVALENCE_MARGIN:g} point "
            f"({numbers}; TOST {stats.format_p(result['equivalence']['p_value'])}): {where}."
        )
    return (
        f"At this scale the experiment cannot tell {rivals}, apart ({numbers}): it finds "
        f"no difference and cannot rule out one of a point; {where}."
    )


def result_lines(plan: dict[str, Any], result: dict[str, Any]) -> list[str]:
    """What a chapter prints of a planned comparison's complete ``result`` (``primary_result``
    of ``plan``, the primary's or the confirmation's): the difference with its interval,
    p-values and verdict, the interval's half-width, each arm's spread and seeds, the package
    commits of the plan and of the runs, and ``verdict_sentence``."""
    from dyntemp import stats

    stage = plan.get("stage", "primary")
    low, high = result["interval"]
    gap = result["difference"]
    label = {"confirm": "confirmation"}.get(stage, stage)
    lines = [
        f"{label}: DySTreSS - SimCLR = {gap['difference']:+.2f} points, 95 % interval "
        f"[{low:+.2f}, {high:+.2f}], {stats.format_p(gap['p_value'])}; TOST "
        f"{stats.format_p(result['equivalence']['p_value'])}: {result['verdict']}"
    ]
    half = f"  half-width of the interval: {(high - low) / 2:.2f} points (at most 1 asked"
    if "planning_spread" in plan:  # the primary's seeds were sized for a spread
        n = plan["seeds_per_arm"]
        planned = {
            "difference": 0.0,
            "df": 2 * n - 2,
            "standard_error": plan["planning_spread"] * (2 / n) ** 0.5,
        }
        half += f"; {stats.interval(planned)[1]:.2f} expected at the planning spread"
    lines.append(half + ")")
    values = result["values"]
    lines.append(
        f"  spread of the seeds: SimCLR {stats.describe(values['simclr'])}, "
        f"DySTreSS {stats.describe(values['dystress'])}"
    )
    seeds = f"seeds {plan['seeds'][0]}-{plan['seeds'][-1]}"
    lines += [
        f"  {arm}, {seeds}: " + ", ".join(f"{v:.2f}" for v in vs) for arm, vs in values.items()
    ]
    made = ledger().get(stage, {}).get("package_commits", [])
    same = "the same" if made == [plan["package_commit"]] else "NOT the same"
    lines.append(
        f"  package commit of the plan: {plan['package_commit'][:7]}; of its runs: "
        f"{', '.join(c[:7] for c in made) or 'none'} ({same})"
    )
    lines.append(verdict_sentence(result))
    return lines


def long_tail_table() -> dict[str, dict[str, Any]]:
    """The finished long-tailed runs of each rule: per classifier of the long-tailed
    protocol, the values over seeds of the overall, head, medium and tail accuracies."""
    table: dict[str, dict[str, Any]] = {}
    for name in LONG_TAIL:
        reports = []
        for seed in LONG_TAIL_SEEDS:
            path = run_folder("longtail", name, seed) / runs.LONG_TAIL_FILE
            if path.exists():
                reports.append(runs.read_json(path))
        table[name] = {"seeds": len(reports)}
        for report in reports:
            for classifier, entry in report["classifiers"].items():
                row = table[name].setdefault(classifier, {})
                for key in ("top1", "head", "medium", "tail"):
                    row.setdefault(key, []).append(entry[key])
    return table


def long_tail_family(table: dict[str, dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """The long-tailed family of ``LONG_TAIL_FAMILY``: DySTreSS minus each other rule on each
    classifier's top-1, Welch over seeds, Holm-adjusted over the whole family."""
    from dyntemp import stats

    table = long_tail_table() if table is None else table
    reference = LONG_TAIL_FAMILY["reference"]
    rows = []
    for other in LONG_TAIL_FAMILY["others"]:
        for measure in LONG_TAIL_FAMILY["measures"]:
            mine = table[reference].get(measure, {}).get("top1", [])
            theirs = table[other].get(measure, {}).get("top1", [])
            rows.append(
                {"against": other, "measure": measure, "gap": stats.difference(mine, theirs)}
            )
    for row, adjusted in zip(rows, stats.holm([r["gap"]["p_value"] for r in rows]), strict=True):
        row["adjusted_p"] = adjusted
        row["verdict"] = stats.verdict(row["gap"], adjusted)
    return rows


def stored_stages(epochs: int | None = None) -> dict[str, str]:
    """What is stored of each stage, in words (``epochs``: the chosen length, once known)."""

    def finished(configs: list[TrainConfig]) -> str:
        done = sum(runs.is_finished(cfg.out) for cfg in configs)
        return f"{done} of {len(configs)} runs"

    found = {"pilot": finished([pilot_config()])}
    if epochs is not None:
        found["tuning"] = finished(tuning_configs(epochs))
        found["length check"] = finished([length_check_config(epochs)])
        found["spread"] = finished(spread_configs(epochs))
    found["plan"] = "written" if (root() / PLAN_FILE).exists() else "not written yet"
    if (root() / PLAN_FILE).exists():
        found["primary"] = finished(primary_configs(read_plan()))
    found["long-tailed"] = finished(long_tail_configs())
    confirm = read_confirm_plan()
    found["confirmation"] = finished(primary_configs(confirm)) if confirm else "not planned"
    return found


def ledger() -> dict[str, dict[str, Any]]:
    """What each stored stage cost, and what made it: its finished runs, their SGD steps,
    their wall time in hours as each run's provenance records it (time paused while other
    work shared the machine included), the processors and the package commits."""
    costs: dict[str, dict[str, Any]] = {}
    for stage in STAGES:
        found = sorted((root() / stage).glob(f"*/seed*/{runs.RESULTS_FILE}"))
        reports = [runs.read_json(path) for path in found]
        if not reports:
            continue
        machines, commits = set(), set()
        for report in reports:
            machine = report["provenance"]["machine"]
            kind = machine.get("cpu_kind")
            machines.add(machine["cpu"] + (f" ({kind})" if kind else ""))
            commits.add(report["provenance"]["package_commit"])
        costs[stage] = {
            "runs": len(reports),
            "steps": sum(report["steps"] for report in reports),
            "hours": sum(report["provenance"]["wall_time_s"] for report in reports) / 3600,
            "machines": sorted(machines),
            "package_commits": sorted(commits),
        }
    return costs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dyntemp.decisive", description=__doc__)
    parser.add_argument(
        "stage",
        choices=(
            "pilot",
            "tuning",
            "lengthcheck",
            "spread",
            "longtail",
            "plan",
            "primary",
            "confirm-plan",
            "confirm",
            "status",
        ),
    )
    parser.add_argument("--epochs", type=int, help="tuning, spread, plan: the length L")
    args = parser.parse_args(argv)
    try:
        if args.stage in ("tuning", "lengthcheck", "spread", "plan") and args.epochs is None:
            raise ValueError(f"{args.stage} needs --epochs, the length the pilot chose")
        if args.stage == "pilot":
            result = run(pilot_config())
            chosen = choose_length(curve(result["folder"]), most=budget_epochs())
            print(json.dumps(chosen, indent=1))
        elif args.stage in ("tuning", "lengthcheck", "spread", "longtail", "primary", "confirm"):
            if args.stage in ("primary", "confirm"):
                plan = read_plan() if args.stage == "primary" else read_confirm_plan()
                if plan is None:
                    raise ValueError(
                        f"no plan in {relative(root() / CONFIRM_PLAN_FILE)}: write it "
                        "(python -m dyntemp.decisive confirm-plan) and commit it first"
                    )
                _check_commit(plan)
            todo = {
                "tuning": lambda: tuning_configs(args.epochs),
                "spread": lambda: spread_configs(args.epochs),
                "lengthcheck": lambda: [length_check_config(args.epochs)],
                "longtail": long_tail_configs,
                "primary": lambda: primary_configs(plan),
                "confirm": lambda: primary_configs(plan),
            }[args.stage]()
            for cfg in todo:
                result = run(cfg, long_tail=args.stage == "longtail")["results"]
                said = {k: result.get(k) for k in ("val_knn_top1", "knn_top1")}
                print(f"{relative(cfg.out)}: {said}", flush=True)
        elif args.stage == "confirm-plan":
            confirm = write_confirm_plan()
            arms = {
                arm: f"{a['candidate']} at lr {a['lr']:g}" for arm, a in confirm["arms"].items()
            }
            print(f"{relative(root() / CONFIRM_PLAN_FILE)}: {confirm['epochs']} epochs, {arms}")
        elif args.stage == "plan":
            plan = write_plan(args.epochs)
            print(f"{relative(root() / PLAN_FILE)}: {plan['arms']}, seeds {plan['seeds']}")
        else:
            points = curve(Path(pilot_config().out))
            print(json.dumps(choose_length(points, most=budget_epochs()), indent=1))
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


def _check_commit(plan: dict[str, Any]) -> None:
    """A plan's runs come from the committed package the plan was written with."""
    from dyntemp import provenance

    now = provenance.code_version()
    if now is None or now.endswith("+dirty") or now != plan["package_commit"]:
        raise ValueError(
            f"the package is at commit {now}, the plan was written at "
            f"{plan['package_commit']}: a plan's runs come from that one commit"
        )


if __name__ == "__main__":
    sys.exit(main())
