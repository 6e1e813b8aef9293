"""Every number that the prose of the chapters quotes from a computation is in an output.

Each entry is (chapter, the text as the prose quotes it, the text a stored output or an
assert of that chapter shows). The test fails when the prose no longer says it, or when no
output or assert of the chapter backs it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "notebooks"

QUOTED = [
    ("10_decisive_comparison", "gains $+0.07$ points", "L = 16: doubling gains +0.07"),
    ("10_decisive_comparison", "train for 16 epochs", "chosen L = 16"),
    ("10_decisive_comparison", "budget's 24 epochs", "at most L = 24 epochs"),
    ("10_decisive_comparison", "stopped at 10 epochs", "would have chosen L = 10"),
    ("10_decisive_comparison", "at its end, 56.13 %", "(recorded, chooses nothing): 56.13 %"),
    ("10_decisive_comparison", "at learning rate 0.6 (57.58 %)", "fixed-0.1 at lr 0.6 (57.58 %)"),
    ("10_decisive_comparison", "at 0.3 (57.60 %)", "dystress-0.1-0.2 at lr 0.3 (57.60 %)"),
    ("10_decisive_comparison", "spread of about\nhalf a point", "sized for the spread 0.49"),
    ("10_decisive_comparison", "0.02 points apart", "best: fixed-0.1 at lr 0.6 (57.58 %)"),
    ("10_decisive_comparison", "up to $+0.90$ at 28 epochs", "L = 28: doubling gains +0.90"),
    ("10_decisive_comparison", "(5,616 SGD steps", "(5,616 SGD steps a run)"),
    ("10_decisive_comparison", "only $+0.42$ points apart", "epoch 10: +0.42 points"),
    ("10_decisive_comparison", "the paper claims about 2", "+2.03 points (its numbers"),
    ("10_decisive_comparison", "about 70 % by majority 1-NN", "70.64 ± 0.23"),
    ("10_decisive_comparison", "about 10 % by 1-NN", "10.20 ± 0.72"),
    ("10_decisive_comparison", "2-3 % by 10-NN", "2.66 ± 0.18"),
    (
        "10_decisive_comparison",
        "$+1.86$ and $+2.04$ points of majority 1-NN",
        "schedule-paper, majority 1-NN: +1.86 points",
    ),
    (
        "10_decisive_comparison",
        "$+1.86$ and $+2.04$ points of majority 1-NN",
        "schedule-source, majority 1-NN: +2.04 points",
    ),
    (
        "10_decisive_comparison",
        "(Holm-adjusted $p = 0.013$ and $0.003$)",
        "Holm-adjusted p = 0.013",
    ),
    (
        "10_decisive_comparison",
        "(Holm-adjusted $p = 0.013$ and $0.003$)",
        "Holm-adjusted p = 0.003",
    ),
    (
        "10_decisive_comparison",
        "$+1.24$ and $+1.79$ points of 10-NN",
        "schedule-paper, majority 10-NN: +1.24 points",
    ),
    (
        "10_decisive_comparison",
        "$+1.24$ and $+1.79$ points of 10-NN",
        "schedule-source, majority 10-NN: +1.79 points",
    ),
    ("10_decisive_comparison", "($p = 0.055$ each)", "Holm-adjusted p = 0.055"),
    ("10_decisive_comparison", "the paper's $+2.07$ points", "(+2.07 points)"),
    (
        "10_decisive_comparison",
        "($+0.15$ and $-0.04$ points)",
        "fixed-0.2, majority 1-NN: +0.15 points",
    ),
    (
        "10_decisive_comparison",
        "($+0.15$ and $-0.04$ points)",
        "fixed-0.2, majority 10-NN: -0.04 points",
    ),
    (
        "10_decisive_comparison",
        "gains $+2.12$ points of validation $k$-NN",
        "doubling gains +2.12 points of validation k-NN",
    ),
    ("10_decisive_comparison", "from 57.26 % at 16 epochs", "16 epochs: validation k-NN 57.26 %"),
    ("10_decisive_comparison", "to 59.38 % at 32", "32 epochs: validation k-NN 59.38 %"),
    ("10_decisive_comparison", "capped $L$ at 24 epochs", "at most L = 24 epochs"),
    ("10_decisive_comparison", "with the 5 seeds the plan needed", "5 seeds a side (seeds 3-7)"),
    ("10_decisive_comparison", "57.39 % over\n3 runs", "mean validation k-NN 57.39 % over 3 runs"),
    ("10_decisive_comparison", "56.62 % over 6", "mean validation k-NN 56.62 % over 6 runs"),
    ("10_decisive_comparison", "57.70 % over 6", "mean validation k-NN 57.70 % over 6 runs"),
    ("10_decisive_comparison", "334,512 of the 400,000 SGD steps", "334,512 of 400,000"),
    ("10_decisive_comparison", "58.01 ± 0.10 %", "DySTreSS 58.01 ± 0.10"),
    ("10_decisive_comparison", "56.69 ± 0.19 %", "SimCLR 56.69 ± 0.19"),
    (
        "10_decisive_comparison",
        "$+1.32$ points with a 95 % interval of $[+1.09, +1.55]$",
        "= +1.32 points, 95 % interval [+1.09, +1.55]",
    ),
    ("10_decisive_comparison", "(Welch, $p < 0.001$)", "[+1.09, +1.55], p < 0.001"),
    ("10_decisive_comparison", "its $p = 0.993$ agrees", "TOST p = 0.993"),
    (
        "10_decisive_comparison",
        "half-width is\n0.23 points",
        "half-width of the interval: 0.23 points",
    ),
    (
        "10_decisive_comparison",
        "not the 0.72 the plan expected",
        "0.72 expected at the planning spread",
    ),
    ("10_decisive_comparison", "0.10 and 0.19 points against 0.49", "sized for the spread 0.49"),
    (
        "10_decisive_comparison",
        "57.58 % on validation in the tuning run",
        "validation k-NN 57.58 % in the tuning run",
    ),
    (
        "10_decisive_comparison",
        "56.43 % on average over the five",
        "56.43 ± 0.57 (5 seeds) on the primary seeds",
    ),
    ("10_decisive_comparison", "held up (57.72 %)", "57.72 ± 0.40 (5 seeds)"),
    ("10_decisive_comparison", "scores 57.39 % on validation", "validation 57.39 ± 0.13"),
    ("10_decisive_comparison", "57.66 % on the\ntest set", "test k-NN 57.66 ± 0.28 (3 seeds)"),
    ("10_decisive_comparison", "only $+0.35$ points above it", "test kNN: +0.35 points, p = 0.152"),
    (
        "10_decisive_comparison",
        "($p = 0.152$, Holm-adjusted 0.277)",
        "p = 0.152 (Welch, 5 vs 3 seeds; Holm-adjusted p = 0.277)",
    ),
    ("10_decisive_comparison", "much of its 1.32 points", "= +1.32 points"),
    (
        "10_decisive_comparison",
        "by $+1.32$ points of test $k$-NN, 95 % interval $[+1.09, +1.55]$",
        "= +1.32 points, 95 % interval [+1.09, +1.55]",
    ),
    (
        "10_decisive_comparison",
        "dropped by 1.15 points (57.58 % to 56.43 %)",
        "on the primary seeds (-1.15)",
    ),
    (
        "10_decisive_comparison",
        "second-best tuning run",
        "| simclr | fixed-0.2 | 57.10 | 57.26 | 56.80 |",
    ),
    # the confirmation, 32 epochs
    ("10_decisive_comparison", "scores 59.71 ± 0.27 %", "DySTreSS 59.71 ± 0.27 (5 seeds)"),
    ("10_decisive_comparison", "SimCLR 59.64 ± 0.60 %", "SimCLR 59.64 ± 0.60 (5 seeds)"),
    ("10_decisive_comparison", "58.01 % and 57.66 % at 16 epochs", "DySTreSS 58.01 ± 0.10"),
    ("10_decisive_comparison", "58.01 % and 57.66 % at 16 epochs", "test k-NN 57.66 ± 0.28"),
    (
        "10_decisive_comparison",
        "$+0.07$ points, with a 95 % interval\nof $[-0.66, +0.80]$",
        "= +0.07 points, 95 % interval [-0.66, +0.80]",
    ),
    ("10_decisive_comparison", "(Welch, $p = 0.824$)", "[-0.66, +0.80], p = 0.824"),
    ("10_decisive_comparison", "Its $p = 0.011$ says", "TOST p = 0.011: equivalent"),
    (
        "10_decisive_comparison",
        "half-width, 0.73 points",
        "half-width of the interval: 0.73 points",
    ),
    ("10_decisive_comparison", "by 0.60 points against DySTreSS's 0.27", "SimCLR 59.64 ± 0.60"),
    ("10_decisive_comparison", "by 0.60 points against DySTreSS's 0.27", "DySTreSS 59.71 ± 0.27"),
    ("10_decisive_comparison", "led there by\nonly $+0.35$ points", "test kNN: +0.35 points"),
    (
        "10_decisive_comparison",
        "$+0.07$ points, 95 % interval $[-0.66, +0.80]$",
        "= +0.07 points, 95 % interval [-0.66, +0.80]",
    ),
    (
        "10_decisive_comparison",
        "lie above both intervals",
        "+2.03 points (its ResNet-18 after 200 epochs",
    ),
    ("09_results", "come from two commits of the package", "from 2 package commits"),
    ("08_ablations", "within a tenth\nof a point", "NeurIPS-2023 code   55.57 ± 0.31 (3 seeds)"),
    ("08_ablations", "within a tenth\nof a point", "+0.09 points, p = 0.785"),
    ("08_ablations", "$-1.17$ points ($p = 0.051$ alone)", "-1.17 points, p = 0.051"),
    ("08_ablations", "$+1.11$ points\n($p = 0.039$ alone", "+1.11 points, p = 0.039"),
    ("08_ablations", "Holm-adjusted $0.706$", "Holm-adjusted p = 0.706"),
    ("08_ablations", "from $0.1$ to about $0.16$", "epoch 8: 0.162 ± 0.008"),
    ("08_ablations", "from $0.1$ to about $0.16$", "epoch 8: 0.165 ± 0.008"),
    ("08_ablations", "stays below $0.01$", "largest spread of any epoch 0.0086"),
    ("01_contrastive_learning", "-2.080", "-2.080"),
    ("01_contrastive_learning", "$8/\\pi^2 \\approx 0.81$", "4: 0.811"),
    ("01_contrastive_learning", "about $0.987$", "16: 0.987"),
    ("01_contrastive_learning", "$0.86$ to $0.89$", "0.864"),
    ("01_contrastive_learning", "$0.86$ to $0.89$", "0.886"),
    ("01_contrastive_learning", "about one in four", "ratio 0.2471"),
    ("01_contrastive_learning", "a ratio of $0.2471$", "ratio 0.2471"),
    ("01_contrastive_learning", "within $0.03$ of the\nuniformity", "best_uniformity < 0.03"),
    ("01_contrastive_learning", "between $0.86$ and $0.89$", '0.85 < m["tolerance"] < 0.9'),
    ("02_gradients_of_ntxent", "\\approx 17$", "pushed 17.4 times harder"),
    ("02_gradients_of_ntxent", "\\approx 1.2$", "pushed 1.2 times harder"),
    ("02_gradients_of_ntxent", "$e^2 \\approx 7.4$", "(e^2 = 7.39)"),
    ("02_gradients_of_ntxent", "about 10%", "25/255 = 9.8%"),
    ("02_gradients_of_ntxent", "about 15 at $\\tau = 0.05$", "0.05: 15.2"),
    ("02_gradients_of_ntxent", "68 at $\\tau = 0.2$", "0.2: 68.0"),
    ("02_gradients_of_ntxent", "246 of the 255", "1.0: 246.3"),
    ("03_dynamic_temperature", "67 % of the push", "67.3% of the push"),
    ("03_dynamic_temperature", "77 % at $\\tau = 0.2$", "76.6% of the push"),
    ("03_dynamic_temperature", "99 % at $\\tau = 0.1$", "98.8% of the push"),
    ("03_dynamic_temperature", "$\\tau(0)$ is $0.139$", "'shifted': 0.1389"),
    ("03_dynamic_temperature", "$1/\\tau_{\\min} = 10$", "slope 10.000"),
    ("03_dynamic_temperature", "at most $1/2$", "0.49983"),
    ("03_dynamic_temperature", "larger than\n$1/2$", "between 0.502 and 4.451"),
    ("03_dynamic_temperature", "Five give every", '["dystress", "dystress-neurips", "shifted"'),
    ("03_dynamic_temperature", "more than a thousand times\nhigher", "> 1000 * paths[True][1]"),
    ("03_dynamic_temperature", "\\approx 4.504", "r* = 4.5038"),
    ("04_the_loss_in_code", "a cosine of about $0.45$", "mean cosine of the two views 0.45"),
    ("04_the_loss_in_code", "a cosine of about $0.96$", "mean cosine of the two views 0.96"),
    ("04_the_loss_in_code", "204 against 404 MiB", "4096  dyntemp ntxent, DySTreSS(0.1, 0.2)"),
    ("04_the_loss_in_code", "204 against 404 MiB", "122.4 ms    204.2 MiB"),
    ("04_the_loss_in_code", "204 against 404 MiB", "372.5 ms    403.9 MiB"),
    ("04_the_loss_in_code", "142 against 278 MiB", "86.9 ms    142.2 MiB"),
    ("04_the_loss_in_code", "142 against 278 MiB", "302.0 ms    277.8 MiB"),
    ("04_the_loss_in_code", "about half of the same loss's", "of plain autograd's: 0.51"),
    ("04_the_loss_in_code", "about half of the same loss's", "of lightly's: 0.51"),
    ("04_the_loss_in_code", "The benchmark measures 204 and\n142 MiB", "204.2 MiB"),
    ("04_the_loss_in_code", "at least five times", '> 5 * nearly_solved[n, "ntxent"]'),
    ("05_data_and_views", "8103", "['8103', '6982']"),
    ("05_data_and_views", "6982", "['8103', '6982']"),
    ("05_data_and_views", "by $e^{4}$", "54.6 times the vote"),
    ("05_data_and_views", "about four times faster", "all cores: 4.3x"),
    ("05_data_and_views", "50 000 images, 5 000 per class", "[5000, 5000, 5000"),
]


def _texts(chapter: str) -> tuple[str, str]:
    cells = json.loads((ROOT / f"{chapter}.ipynb").read_text())["cells"]
    prose = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
    backing = []
    for cell in cells:
        if cell["cell_type"] != "code":
            continue
        backing.append("".join(cell["source"]))  # the asserts
        for output in cell.get("outputs", []):
            backing.append("".join(output.get("text", "")))
            backing.append("".join(output.get("data", {}).get("text/plain", "")))
            backing.append("".join(output.get("data", {}).get("text/latex", "")))
            backing.append("".join(output.get("data", {}).get("text/markdown", "")))
    return prose, "\n".join(backing)


@pytest.mark.parametrize(("chapter", "quoted", "shown"), QUOTED)
def test_a_quoted_number_is_computed(chapter: str, quoted: str, shown: str) -> None:
    prose, backing = _texts(chapter)
    assert quoted in prose, f"{chapter}: the prose no longer quotes {quoted!r}"
    assert shown in backing, f"{chapter}: no output or assert shows {shown!r}"
