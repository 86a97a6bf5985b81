import json
import math

import pytest

from sdft.compare.report import mcnemar_p, spread, verdict, write_report
from sdft.eval.evaluators import Evaluator, Metric
from sdft.layout import EvalFiles


class Fake(Evaluator):
    name = "task"
    metrics = {"acc": Metric("accuracy", True, "total"), "kl": Metric("KL", False), "total": Metric("n", None)}


def _result(acc, kl, std=None):
    return {"metrics": {"acc": acc, "kl": kl, "total": 100}, "std": std or {}, "per_seed": {}}


def test_spread_is_seed_std_else_binomial_standard_error():
    info = Fake.metrics["acc"]
    assert spread(_result(0.5, 0.0), "acc", info) == math.sqrt(0.25 / 100)
    assert spread(_result(0.5, 0.0, {"acc": 0.2}), "acc", info) == 0.2
    assert spread(_result(0.5, 0.0), "kl", Fake.metrics["kl"]) is None
    measured = _result(0.5, 0.3)
    measured["metrics"]["kl_se"] = 0.01
    assert spread(measured, "kl", Metric("KL", False, se="kl_se")) == 0.01


def test_verdict_uses_direction_and_noise():
    acc, kl = Fake.metrics["acc"], Fake.metrics["kl"]
    results = {"vanilla": _result(0.50, 0.30), "sdft": _result(0.52, 0.10)}
    assert verdict(results, "acc", acc) == "within noise"  # 2 points on 100 examples
    assert verdict(results, "kl", kl) == "sdft better"  # lower KL, no spread known
    results = {"vanilla": _result(0.80, 0.1), "sdft": _result(0.50, 0.1)}
    assert verdict(results, "acc", acc) == "vanilla better" and verdict(results, "kl", kl) == "equal"


def test_report_files(tmp_path):
    results = {"seed": _result(0.3, 0.0), "vanilla": _result(0.6, 0.4), "sdft": _result(0.55, 0.1)}
    report = write_report(EvalFiles(tmp_path), results, [Fake()], {"model": "m"}, {"sdft": {"rewrites_kept": "5/10"}})
    assert report["baseline"] == "vanilla" and report["verdict"] == {"sdft": {"acc": "within noise", "kl": "sdft better"}}
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["delta_vs_seed"]["vanilla"]["acc"] == report["delta_vs_seed"]["vanilla"]["acc"]
    assert saved["delta_vs_seed"]["sdft"]["kl"] == 0.1 and "total" not in saved["delta_vs_seed"]["sdft"]
    md = (tmp_path / "report.md").read_text()
    assert "| metric | better | seed | vanilla | sdft | vanilla − seed | sdft − seed | sdft vs vanilla |" in md
    assert "| accuracy | ↑ | 0.3 ± 0.046 | 0.6 ± 0.049 | 0.55 ± 0.05 | 0.3 | 0.25 | within noise |" in md
    assert "| KL | ↓ | 0 | 0.4 | 0.1 | 0.4 | 0.1 | sdft better |" in md
    assert "rewrites_kept: 5/10" in md
    png = tmp_path / "plots" / "task.png"
    assert saved["plots"] == ["plots/task.png"] and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_three_arms_are_each_judged_against_vanilla(tmp_path):
    results = {"seed": _result(0.3, 0.0), "vanilla": _result(0.6, 0.4), "sdft": _result(0.55, 0.1),
               "on_policy": _result(0.9, 0.4)}
    report = write_report(EvalFiles(tmp_path), results, [Fake()], {"model": "m"}, {})
    assert list(report["delta_vs_seed"]) == ["vanilla", "sdft", "on_policy"]
    assert report["verdict"] == {"sdft": {"acc": "within noise", "kl": "sdft better"},
                                 "on_policy": {"acc": "on_policy better", "kl": "equal"}}
    md = (tmp_path / "report.md").read_text()
    assert "| on_policy − seed | sdft vs vanilla | on_policy vs vanilla |" in md
    assert "| accuracy | ↑ | 0.3 ± 0.046 | 0.6 ± 0.049 | 0.55 ± 0.05 | 0.9 ± 0.03 | 0.3 | 0.25 | 0.6 | within noise | " \
           "on_policy better |" in md
    # Without vanilla the first arm is the baseline.
    no_vanilla = {k: v for k, v in results.items() if k != "vanilla"}
    report = write_report(EvalFiles(tmp_path / "b"), no_vanilla, [Fake()], {"model": "m"}, {})
    assert report["baseline"] == "sdft" and list(report["verdict"]) == ["on_policy"]
    assert verdict(results, "acc", Fake.metrics["acc"], pair=("sdft", "on_policy")) == "on_policy better"


def test_paired_outcomes_decide_with_an_exact_mcnemar_test():
    acc = Fake.metrics["acc"]
    # 24 vs 14 correct of 60 looks like noise to the independent standard errors, but the 10
    # discordant items all favour one arm: a paired test sees it (p = 2 / 2**10).
    results = {"vanilla": _result(24 / 60, 0), "sdft": _result(14 / 60, 0)}
    for r in results.values():
        r["metrics"]["total"] = 60
    assert verdict(results, "acc", acc) == "within noise"
    vanilla = [True] * 24 + [False] * 36
    sdft = [True] * 14 + [False] * 46
    assert mcnemar_p(vanilla, sdft) == pytest.approx(2 / 2 ** 10)
    assert verdict(results, "acc", acc, {"vanilla": vanilla, "sdft": sdft}) == "vanilla better (McNemar p=0.002)"
    mixed = [True] * 14 + [False] * 10 + [True] * 5 + [False] * 31  # 10 discordant one way, 5 the other
    assert verdict(results, "acc", acc, {"vanilla": vanilla, "sdft": mixed}) == "within noise (McNemar p=0.3)"
    assert mcnemar_p([True, False], [True, False]) == 1.0


class FakeBench(Evaluator):
    name = "gsm8k"
    metrics = {"gsm8k": Metric("gsm8k score", True, "gsm8k_total"), "gsm8k_total": Metric("items", None)}

    def columns(self):
        return [("gsm8k", "gsm8k")]


class FakeAlpacaEval(Evaluator):
    name = "alpaca_eval"
    metrics = {"alpaca_eval": Metric("alpaca_eval win rate", True)}

    def columns(self):
        return [("alpaca_eval", "alpaca_eval")]


def test_the_paper_table_sets_ours_beside_the_papers_numbers(tmp_path):
    """Rows = models, columns = benchmarks, percent; the paper's number and the difference where it reports one;
    AlpacaEval without a judge reads "not judged"."""
    results = {name: {"metrics": {"gsm8k": acc, "gsm8k_total": 100}, "std": {}, "per_seed": {}}
               for name, acc in (("seed", 0.30), ("vanilla", 0.25), ("sdft", 0.33))}
    paper = {"seed": {"gsm8k": 29.4, "alpaca_eval": 66.04}, "sdft": {"gsm8k": 34.4}}
    report = write_report(EvalFiles(tmp_path), results, [FakeBench(), FakeAlpacaEval()], {}, {}, None, paper)
    table = report["paper_table"]
    assert table["columns"] == ["gsm8k", "alpaca_eval"] and list(table["rows"]) == ["seed", "vanilla", "sdft"]
    assert table["rows"]["sdft"]["gsm8k"] == {"ours": 33.0, "paper": 34.4, "diff": pytest.approx(-1.4)}
    assert table["rows"]["vanilla"]["gsm8k"] == {"ours": 25.0, "paper": None, "diff": None}
    md = (tmp_path / "report.md").read_text()
    assert "## The paper's table" in md and "| model | gsm8k | alpaca_eval |" in md
    assert "| seed | 30.00 (29.40, +0.60) | not judged (66.04, -) |" in md
    assert "| sdft | 33.00 (34.40, -1.40) | not judged |" in md
