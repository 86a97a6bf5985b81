"""One evaluation: seeds, spread, which evaluators run, and per-model caching."""

import statistics

import pytest
import torch

from sdft.config.schema import RunConfig
from sdft.errors import EvalError
from sdft.eval.evaluation import ModelSpec, build_evaluators, evaluate_models
from sdft.eval.evaluators import Evaluator, Metric
from sdft.layout import EvalFiles


class Counting(Evaluator):
    """Returns the seed as its score, so the aggregation is checkable; counts its runs."""

    name = "task"
    metrics = {"score": Metric("score")}

    def __init__(self, sampled=True, metric="score"):
        self.sampled, self.calls, self.metric = sampled, [], metric

    def key(self, ctx):
        return {"v": ctx.cfg.eval.sampling.max_new_tokens}

    def run(self, model, model_name, ctx, seed):
        self.calls.append((model_name, seed))
        return {self.metric: float(seed) + model, "n": 10}


def _run(tmp_path, monkeypatch, evaluators, **eval_values):
    import sdft.eval.evaluation as evaluation

    cfg = RunConfig()
    for k, v in eval_values.items():
        setattr(cfg.eval.sampling if k == "do_sample" else cfg.eval, k, v)
    monkeypatch.setattr(evaluation, "build_evaluators", lambda cfg: evaluators)
    models = {"seed": ModelSpec(lambda: 0, {"p": "seed"}), "tuned": ModelSpec(lambda: 100, {"p": "tuned"})}
    return evaluate_models(cfg, None, torch.device("cpu"), 0, models, EvalFiles(tmp_path))[0]


def test_sampled_evaluators_run_once_per_seed_with_mean_and_spread(tmp_path, monkeypatch):
    sampled, greedy = Counting(), Counting(sampled=False, metric="greedy_score")
    greedy.name = "retention"
    results = _run(tmp_path, monkeypatch, [sampled, greedy], do_sample=True, seeds=[1, 2, 6])
    assert [s for m, s in sampled.calls if m == "tuned"] == [1, 2, 6]
    assert [s for m, s in greedy.calls if m == "tuned"] == [1]
    tuned = results["tuned"]
    assert tuned["metrics"]["score"] == pytest.approx(103.0)
    assert tuned["std"]["score"] == pytest.approx(statistics.stdev([101.0, 102.0, 106.0]))
    assert tuned["metrics"]["greedy_score"] == 101.0 and "greedy_score" not in tuned["std"]
    assert tuned["metrics"]["n"] == 10 and isinstance(tuned["metrics"]["n"], int)
    assert set(tuned["per_seed"]) == {"1", "2", "6"}


def test_greedy_runs_once_and_has_no_spread(tmp_path, monkeypatch):
    ev = Counting()
    results = _run(tmp_path, monkeypatch, [ev])
    assert len(ev.calls) == 2 and results["seed"]["std"] == {} and results["seed"]["metrics"]["score"] == 42.0


def test_results_are_cached_per_evaluator_and_redone_when_a_setting_changes(tmp_path, monkeypatch):
    loads = []

    def run(evaluators, **eval_values):
        import sdft.eval.evaluation as evaluation

        cfg = RunConfig()
        for k, v in eval_values.items():
            setattr(cfg.eval, k, v)
        monkeypatch.setattr(evaluation, "build_evaluators", lambda cfg: evaluators)
        models = {"seed": ModelSpec(lambda: loads.append("seed") or 0, {"p": "seed"}),
                  "tuned": ModelSpec(lambda: loads.append("tuned") or 100, {"p": "tuned"})}
        return evaluate_models(cfg, None, torch.device("cpu"), 0, models, EvalFiles(tmp_path))[0]

    other = Counting(metric="other")
    other.name = "safety"
    run([Counting(), other])
    again, other_again = Counting(), Counting(metric="other")
    other_again.name = "safety"
    loads.clear()
    results = run([again, other_again])
    assert again.calls == other_again.calls == [] and loads == []  # nothing left to do: no model loaded
    assert results["tuned"]["metrics"]["other"] == 142.0
    # A setting of one evaluator changes (its key): only that evaluator reruns.
    again.key = lambda ctx: {"v": "changed"}
    run([again, other_again])
    assert again.calls == [("seed", 42), ("tuned", 42)] and other_again.calls == []
    # A lost result file: that model's evaluators rerun.
    (tmp_path / "results" / "tuned.json").unlink()
    run([again, other_again])
    assert again.calls[-1] == ("tuned", 42) and other_again.calls == [("tuned", 42)]


def test_evaluators_without_their_data_are_skipped(tmp_path):
    cfg = RunConfig()
    cfg.eval.evaluators = ["task", "retention", "safety"]
    assert [e.name for e in build_evaluators(cfg)] == ["safety"]
    cfg.data.general_prompts = "g.jsonl"
    assert [e.name for e in build_evaluators(cfg)] == ["retention", "safety"]
    only_task = RunConfig()
    only_task.eval.evaluators = ["task"]
    with pytest.raises(EvalError, match="nothing to evaluate"):
        build_evaluators(only_task)
