"""The decisive comparison, end to end on tiny generated data: pilot, tuning, spread, plan,
primary runs and the verdict, in a temporary results folder."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from fake_cifar import write_fake_cifar10

from dyntemp import decisive, provenance, runs, stats, stored

COMMIT = "c0ffee" * 6 + "c0ff"  # the package commit the tiny experiment runs from


@pytest.fixture
def tiny_experiment(monkeypatch, tmp_path) -> Path:
    root = write_fake_cifar10(tmp_path / "data")
    monkeypatch.setenv(stored.ENV, str(tmp_path / "results"))
    (tmp_path / "results").mkdir()
    monkeypatch.chdir(tmp_path)
    tiny = {
        "data_root": str(root),
        "model": "small",
        "validation": 50,
        "batch_size": 50,
        "knn_k": 10,
        "projector_hidden_dim": 32,
        "projector_dim": 16,
        "amp": "off",
        "channels_last": "off",
        "eval_every": 1,
        "progress": False,
        "momentum": 0.9,
    }
    monkeypatch.setattr(decisive, "BASE", tiny)
    monkeypatch.setattr(decisive, "PILOT", {**decisive.PILOT, "epochs": 4, "eval_every": 1})
    monkeypatch.setattr(decisive, "LR_GRID", (0.1, 0.3))
    monkeypatch.setattr(decisive, "MAX_SEEDS", 3)
    monkeypatch.setattr(decisive, "stored_spread", lambda: {"pooled_spread": 0.1})
    monkeypatch.setattr(provenance, "code_version", lambda: COMMIT)  # committed, whatever the tree
    return tmp_path / "results"


def test_the_length_is_the_shortest_whose_double_adds_less_than_a_point():
    # a curve that flattens, with a dip at epoch 20 that a single evaluation would trust
    points = [(e, 56.0 - 40.0 / e) for e in range(2, 65, 2)]  # doubling L gains 20 / L
    points = [(e, v - (1.5 if e == 20 else 0.0)) for e, v in points]
    chosen = decisive.choose_length(points)
    assert chosen["raw"] == 10  # single evaluations trust the dip: 10 -> 20 "gains" 0.5
    assert chosen["epochs"] == chosen["converged_at"] == 28  # the window means do not
    for length, gain in chosen["gain_of_doubling"].items():
        now, doubled = (decisive.smoothed(points, e) for e in (length, 2 * length))
        assert gain == pytest.approx(doubled - now)
        assert (gain < 1.0) == (length >= 28)
    capped = decisive.choose_length(points, most=16)
    assert capped["epochs"] == 16 and capped["capped_by_budget"]
    assert decisive.choose_length([(2, 40.0), (4, 50.0)])["epochs"] is None
    assert decisive.smoothed(points, 12) is None  # 9 to 12 holds two evaluations only


def test_the_stages_run_in_order_and_the_plan_decides(tiny_experiment, monkeypatch):
    results = tiny_experiment / "decisive"
    assert decisive.main(["pilot"]) == 0
    pilot = runs.load(results / "pilot" / "fixed-0.2" / "seed0")
    assert [m["epoch"] for m in pilot["metrics"] if "val_knn_top1" in m] == [1, 2, 3, 4]
    assert pilot["config"]["lr_schedule"] == "constant"
    assert "knn_top1" not in pilot["metrics"][0]  # the test set only at the very end
    # the plan refuses until tuning and the spread runs are done
    with pytest.raises(ValueError, match="tuning of simclr, dystress is unfinished"):
        decisive.write_plan(2)
    assert decisive.main(["primary"]) == 2  # no plan: one line, exit 2
    assert decisive.main(["tuning", "--epochs", "2"]) == 0
    assert decisive.main(["spread", "--epochs", "2"]) == 0
    assert decisive.length_check(2) is None  # the 4-epoch run is not trained yet
    assert decisive.main(["lengthcheck", "--epochs", "2"]) == 0
    check = decisive.length_check(2)
    doubled = runs.load(results / "lengthcheck" / "fixed-0.2-lr0.3" / "seed0")["results"]
    assert check["epochs"] == (2, 4) and check["val_knn_top1"][1] == doubled["val_knn_top1"]
    assert check["gain"] == pytest.approx(check["val_knn_top1"][1] - check["val_knn_top1"][0])
    table = decisive.best_of_arms(2)
    assert {len(table[arm]["runs"]) for arm in table} == {3 * 2, 2 * 2}
    for arm, entry in table.items():
        best = max(r["val_knn_top1"] for r in entry["runs"])
        assert entry["best"]["val_knn_top1"] == best
        assert entry["best"]["candidate"] in decisive.ARMS[arm]
    assert decisive.main(["plan", "--epochs", "2"]) == 0
    plan = json.loads((results / "plan.json").read_text())
    assert plan["seeds"][0] == 3 and len(plan["seeds"]) == plan["seeds_per_arm"] <= 3
    assert plan["planning_spread"] >= 0.1
    with pytest.raises(ValueError, match="a plan is written once"):
        decisive.write_plan(2)
    with pytest.raises(ValueError, match="primary runs are unfinished"):
        decisive.write_confirm_plan()
    assert decisive.main(["primary"]) == 0
    result = decisive.primary_result()
    assert result["complete"]
    gap = stats.difference(result["values"]["dystress"], result["values"]["simclr"])
    assert result["difference"]["difference"] == pytest.approx(gap["difference"])
    if math.isnan(gap["p_value"]):  # the generated images are easy: often 100 % everywhere
        assert result["verdict"] == "not tested"
    else:
        low, high = result["interval"]
        assert low <= gap["difference"] <= high
    looks = decisive.exploratory_looks()
    measures = [row["measure"] for row in looks["rows"]]
    assert measures == ["test kNN", "validation kNN", "validation kNN"]
    spread = decisive.spread_estimate(2)
    mine = decisive.primary_values(plan, "val_knn_top1")["dystress"]
    assert looks["rows"][1]["gap"]["difference"] == pytest.approx(
        stats.difference(mine, spread["val_knn_top1"])["difference"]
    )
    assert looks["chosen_by_one_seed"]["simclr"]["tuning"] == plan["arms"]["simclr"]["val_knn_top1"]
    assert len(looks["chosen_by_one_seed"]["dystress"]["primary"]) == len(plan["seeds"])
    # the confirmation: each arm's setting chosen again on validation, twice the length,
    # only when the length check finds L short, only from committed code
    assert decisive.main(["confirm"]) == 2  # no confirmation plan yet: one line, exit 2
    measured = decisive.length_check(2)
    monkeypatch.setattr(decisive, "length_check", lambda epochs: {**measured, "converged": True})
    with pytest.raises(ValueError, match="L is long enough"):
        decisive.write_confirm_plan()
    monkeypatch.setattr(decisive, "length_check", lambda epochs: {**measured, "converged": False})
    monkeypatch.setattr(provenance, "code_version", lambda: COMMIT + "+dirty")
    with pytest.raises(ValueError, match="a plan names a committed package"):
        decisive.write_confirm_plan()
    monkeypatch.setattr(provenance, "code_version", lambda: COMMIT)
    confirm = decisive.write_confirm_plan()
    assert confirm["epochs"] == 4 and confirm["package_commit"] == COMMIT
    assert confirm["seeds"][0] == plan["seeds"][-1] + 1  # seeds no earlier stage used
    assert (
        confirm["arms"]["simclr"]["candidate"] == confirm["choice"]["simclr"]["best"]["candidate"]
    )
    assert {"candidate": "fixed-0.2", "lr": 0.3, "runs": 3} in [
        {k: row[k] for k in ("candidate", "lr", "runs")}
        for row in confirm["choice"]["simclr"]["settings"]
    ]  # its tuning run and the two spread runs
    with pytest.raises(ValueError, match="a plan is written once"):
        decisive.write_confirm_plan()
    monkeypatch.setattr(provenance, "code_version", lambda: "0" * 40)
    assert decisive.main(["confirm"]) == 2  # another package commit: refused
    monkeypatch.setattr(provenance, "code_version", lambda: COMMIT)
    assert decisive.main(["confirm"]) == 0
    confirmed = decisive.primary_result(confirm)
    assert confirmed["complete"] and len(confirmed["values"]["dystress"]) == len(plan["seeds"])
    for cfg in decisive.primary_configs(confirm):
        stored_config = runs.load(cfg.out)["config"]
        assert stored_config["epochs"] == 4 and stored_config["seed"] in confirm["seeds"]
        assert stored_config["lr"] == cfg.lr and Path(cfg.out).parts[-3] == "confirm"
    with pytest.raises(ValueError, match="holds runs"):
        decisive.write_confirm_plan(force=True)  # its runs exist: the plan cannot change
    costs = decisive.ledger()
    assert costs["primary"]["runs"] == 2 * len(plan["seeds"])
    assert costs["tuning"]["runs"] == len(decisive.tuning_configs(2))
    assert costs["pilot"]["steps"] == pilot["results"]["steps"] and "longtail" not in costs
    assert costs["confirm"]["runs"] == 2 * len(plan["seeds"])
    assert all(cost["hours"] > 0 and cost["machines"] for cost in costs.values())
    assert costs["primary"]["package_commits"] == [plan["package_commit"]]
    # what the chapter prints of each result, from one helper
    for stage_plan, stage_result, label in ((plan, result, "primary"),
                                            (confirm, confirmed, "confirmation")):  # fmt: skip
        lines = decisive.result_lines(stage_plan, stage_result)
        assert lines[0].startswith(f"{label}: DySTreSS - SimCLR = ")
        assert ("expected at the planning spread" in lines[1]) == (label == "primary")
        assert lines[-2].endswith(f"of its runs: {COMMIT[:7]} (the same)")
        assert lines[-1] == decisive.verdict_sentence(stage_result)
    # every run is listed in the manifest only once finished; no run shares a seed
    primary_seeds = {json.loads((f / "config.json").read_text())["config"]["seed"]
                     for f in (results / "primary").glob("*/seed*")}  # fmt: skip
    assert primary_seeds == set(plan["seeds"]) and not primary_seeds & {0, 1, 2}
    assert not set(confirm["seeds"]) & (primary_seeds | {0, 1, 2})


def _stored_run(stage: str, name: str, seed: int, rule: dict, lr: float, epochs: int, val: float):
    folder = decisive.run_folder(stage, name, seed)
    folder.mkdir(parents=True)
    config = {**rule, "lr": lr, "epochs": epochs, "seed": seed}
    report = {"val_knn_top1": val, "provenance": {"config": config}}
    (folder / "results.json").write_text(json.dumps(report))


def test_the_confirmation_chooses_by_the_mean_of_settings_with_enough_runs(tiny_experiment):
    fixed = {"temperature": "fixed"}
    _stored_run("tuning", "fixed-0.1-lr0.1", 0, {**fixed, "tau": 0.1}, 0.1, 2, 60.0)  # 1 run
    for seed, val in enumerate((57.0, 57.5, 58.0)):  # tuning seed 0, then two more
        stage = "tuning" if seed == 0 else "spread"
        _stored_run(stage, "fixed-0.2-lr0.3", seed, {**fixed, "tau": 0.2}, 0.3, 2, val)
    for seed, val in ((0, 59.0), (3, 56.0), (4, 56.5)):  # a lucky tuning run, then two more
        stage = "tuning" if seed == 0 else "primary"
        _stored_run(stage, "fixed-0.5-lr0.1", seed, {**fixed, "tau": 0.5}, 0.1, 2, val)
    _stored_run("spread", "fixed-0.2-lr0.3", 9, {**fixed, "tau": 0.2}, 0.3, 4, 10.0)  # 4 epochs
    dystress = {"temperature": "dystress", "tau_min": 0.1, "tau_max": 0.2}
    _stored_run("tuning", "dystress-0.1-0.2-lr0.3", 0, dystress, 0.3, 2, 57.0)
    table = decisive.settings_on_validation(2)
    rows = {(r["candidate"], r["lr"]): r for r in table["simclr"]["settings"]}
    assert rows["fixed-0.2", 0.3]["val_knn_top1"] == [57.0, 57.5, 58.0]  # not the 4-epoch run
    assert rows["fixed-0.5", 0.1]["mean"] == pytest.approx(57.1667, abs=1e-4)
    assert rows["fixed-0.1", 0.1]["runs"] == 1  # the highest mean, but one run: not eligible
    assert (table["simclr"]["best"]["candidate"], table["simclr"]["best"]["lr"]) == (
        "fixed-0.2",
        0.3,
    )
    assert table["dystress"]["best"] is None  # one run only


@pytest.mark.parametrize(
    ("dystress", "simclr", "verdict"),
    [
        ([57.0, 57.2, 56.9, 57.1], [55.0, 55.3, 55.1, 54.9], "DySTreSS better"),
        ([55.0, 55.3, 55.1, 54.9], [57.0, 57.2, 56.9, 57.1], "SimCLR better"),
        ([56.0, 56.2, 55.9, 56.1], [56.1, 55.9, 56.0, 56.2], "equivalent within +-1 point"),
        ([54.0, 58.0, 55.0, 57.5], [56.0, 53.5, 58.5, 55.0], "inconclusive"),
    ],
)
def test_the_plan_rule_gives_the_verdict(tiny_experiment, dystress, simclr, verdict):
    plan = {
        "epochs": 2,
        "seeds": [3, 4, 5, 6],
        "arms": {
            "simclr": {"candidate": "fixed-0.2", "lr": 0.3},
            "dystress": {"candidate": "dystress-0.1-0.2", "lr": 0.3},
        },
    }
    for arm, values in (("dystress", dystress), ("simclr", simclr)):
        best = plan["arms"][arm]
        for seed, value in zip(plan["seeds"], values, strict=True):
            cfg = decisive.primary_config(best["candidate"], best["lr"], 2, seed)
            folder = Path(cfg.out)
            folder.mkdir(parents=True)
            (folder / "config.json").write_text(json.dumps({"config": cfg.as_dict()}))
            (folder / "metrics.jsonl").write_text(json.dumps({"epoch": 2}) + "\n")
            (folder / "results.json").write_text(json.dumps({"knn_top1": value, "epochs": 2}))
    result = decisive.primary_result(plan)
    assert result["complete"] and result["verdict"] == verdict
    assert result["values"]["dystress"] == dystress
    sentence = decisive.verdict_sentence(result)
    low, high = result["interval"]
    assert f"[{low:+.2f}, {high:+.2f}]" in sentence and sentence.startswith("At this scale")
    expected = {
        "DySTreSS better": "DySTreSS beats SimCLR",
        "SimCLR better": "the opposite of the paper's claim",
        "equivalent within +-1 point": "are equivalent within ±1 point",
        "inconclusive": "cannot tell",
    }[verdict]
    assert expected in sentence
    paper = decisive.paper_gain()  # 85.68 - 83.65, the paper's CIFAR-10 numbers
    assert paper == pytest.approx(2.03)
    if verdict != "SimCLR better":  # where the paper's gain lies, as the interval says
        side = "inside" if low <= paper <= high else "above" if high < paper else "below"
        assert "the paper's +2.03 points (its ResNet-18 after 200 epochs" in sentence
        assert f"SimCLR) lie {side}" in sentence
    incomplete = {**result, "complete": False}
    assert "no verdict" in decisive.verdict_sentence(incomplete)


def test_primary_runs_refuse_another_package_commit(tiny_experiment, monkeypatch):
    target = tiny_experiment / "decisive" / "plan.json"
    target.parent.mkdir(parents=True)
    target.write_text(json.dumps({"package_commit": "0" * 12, "seeds": [3], "arms": {}}))
    assert decisive.main(["primary"]) == 2


def test_the_long_tailed_family_compares_dystress_with_each_rule(tiny_experiment):
    values = {"dystress-0.1-0.2": 36.0, "fixed-0.2": 34.0, "schedule-paper": 36.1,
              "schedule-source": 35.9}  # fmt: skip
    for name, value in values.items():
        for seed in decisive.LONG_TAIL_SEEDS:
            folder = decisive.run_folder("longtail", name, seed)
            folder.mkdir(parents=True)
            entry = {"top1": value + 0.1 * seed, "head": 50.0, "medium": 30.0, "tail": 10.0}
            classifiers = {m: entry for m in ("majority 1-NN", "majority 10-NN")}
            (folder / "longtail.json").write_text(json.dumps({"classifiers": classifiers}))
    table = decisive.long_tail_table()
    assert table["fixed-0.2"]["seeds"] == 3
    assert table["fixed-0.2"]["majority 1-NN"]["top1"] == pytest.approx([34.0, 34.1, 34.2])
    family = decisive.long_tail_family(table)
    assert len(family) == 3 * 2
    against_fixed = [row for row in family if row["against"] == "fixed-0.2"]
    assert all(row["gap"]["difference"] == pytest.approx(2.0) for row in against_fixed)
    adjusted = stats.holm([row["gap"]["p_value"] for row in family])
    assert [row["adjusted_p"] for row in family] == adjusted
