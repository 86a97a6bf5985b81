"""Run the configured evaluators on a set of named models (the seed first), with caching.

``sdft eval`` evaluates {seed, tuned}; ``sdft compare`` evaluates {seed, vanilla, sdft}. Each model's
results go to ``<out_dir>/results/<model>.json``, per evaluator, with the settings they depend on
(the model's identity, the evaluator's key, the seeds). A rerun reuses every run whose settings
match, so a killed evaluation resumes at the evaluator it was on and a changed setting redoes only
the evaluator it affects; a model is loaded only when something is left to run on it.
"""

from __future__ import annotations

import gc
import json
import logging
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from sdft.config.schema import RunConfig
from sdft.eval.base import EvalContext, EvalError, Evaluator, Metric
from sdft.utils.io import atomic_write_json

log = logging.getLogger(__name__)


def _evaluator_classes() -> dict[str, type[Evaluator]]:
    from sdft.eval.humaneval import HumanEvalEvaluator
    from sdft.eval.lm_eval_tasks import LmEvalEvaluator
    from sdft.eval.retention import RetentionEvaluator
    from sdft.eval.safety import SafetyEvaluator
    from sdft.eval.task import TaskEvaluator

    return {c.name: c for c in (TaskEvaluator, RetentionEvaluator, SafetyEvaluator, HumanEvalEvaluator,
                                LmEvalEvaluator)}


def build_evaluators(cfg: RunConfig) -> list[Evaluator]:
    """The evaluators of ``eval.evaluators``, without task/retention when their data is not set."""
    classes = _evaluator_classes()
    needs = {"task": ("data.test", cfg.data.test), "retention": ("data.general_prompts", cfg.data.general_prompts)}
    out = []
    for name in cfg.eval.evaluators:
        if name in needs and not needs[name][1]:
            log.info("eval: %s skipped: %s is not set", name, needs[name][0])
            continue
        out.append(classes[name]())
    if not out:
        raise EvalError(f"nothing to evaluate: eval.evaluators={cfg.eval.evaluators} and their data is not set "
                        "(data.test for task, data.general_prompts for retention)")
    return out


@dataclass
class ModelSpec:
    load: Callable[[], torch.nn.Module]
    identity: dict
    """What makes this model this model (its path, or its training record): part of the cache key."""


def describe(evaluators: list[Evaluator], metric: str) -> Metric:
    for ev in evaluators:
        d = ev.describe(metric)
        if d is not None:
            return d
    return Metric(metric, None)


def evaluate_models(cfg: RunConfig, tok, device: torch.device, seed_model, models: dict[str, ModelSpec],
                    out_dir: Path) -> tuple[dict[str, dict], list[Evaluator]]:
    """Evaluate each model with every evaluator; returns ``{model: result}`` and the evaluators.

    ``seed_model`` is the loaded seed (retention compares every model with it). A result is
    ``{"metrics": {name: mean over seeds}, "std": {name: sample std over seeds}, "per_seed": {seed: {...}}}``;
    ``std`` has the metrics of sampled evaluators when there are several seeds.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    ctx = EvalContext(cfg, tok, device, out_dir, seed_model)
    evaluators = build_evaluators(cfg)
    for ev in evaluators:
        ev.prepare(ctx)
    results = {}
    for name, spec in models.items():
        runs = _EvaluatorRuns(out_dir / "results" / f"{name}.json", spec.identity)
        model = None
        for ev in evaluators:
            seeds = cfg.eval.seeds if ev.sampled and cfg.eval.do_sample else cfg.eval.seeds[:1]
            key = {"evaluator": ev.key(ctx), "version": ev.version, "seeds": seeds}
            if runs.get(ev.name, key) is not None:
                log.info("eval: %s: reusing %s results from %s", name, ev.name, runs.path)
                continue
            if model is None:
                model = spec.load()
            runs.put(ev.name, key, {str(seed): ev.run(model, name, ctx, seed) for seed in seeds})
        results[name] = aggregate({ev.name: runs.get(ev.name) for ev in evaluators})
        log.info("eval: %s: %s", name, json.dumps(results[name]["metrics"]))
        if model is not None and model is not seed_model:
            del model
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    return results, evaluators


class _EvaluatorRuns:
    """One model's finished evaluator runs, ``{evaluator: {"key", "per_seed"}}``, saved after each
    evaluator so a kill loses at most the one in progress; a changed model identity drops them all."""

    def __init__(self, path: Path, identity: dict):
        self.path, self.identity = path, identity
        saved = json.loads(path.read_text()) if path.exists() else {}
        self.runs = saved.get("runs", {}) if saved.get("model") == identity else {}

    def get(self, evaluator: str, key: dict | None = None) -> dict | None:
        run = self.runs.get(evaluator)
        if run is None or (key is not None and run["key"] != key):
            return None
        return run["per_seed"]

    def put(self, evaluator: str, key: dict, per_seed: dict) -> None:
        self.runs[evaluator] = {"key": key, "per_seed": per_seed}
        atomic_write_json(self.path, {"model": self.identity, "runs": self.runs})


def aggregate(per_evaluator: dict[str, dict[str, dict]]) -> dict:
    """Mean over seeds of every metric, and the sample std of those measured with several seeds.

    ``per_evaluator``: ``{evaluator: {seed: {metric: value}}}``. Returns ``{"metrics", "std", "per_seed"}``.
    """
    metrics, std, per_seed = {}, {}, {}
    for runs in per_evaluator.values():
        for seed, values in runs.items():
            per_seed.setdefault(seed, {}).update(values)
        for metric in dict.fromkeys(k for values in runs.values() for k in values):
            vals = [values[metric] for values in runs.values() if metric in values]
            mean = statistics.fmean(vals)
            metrics[metric] = int(mean) if all(isinstance(v, int) for v in vals) and mean.is_integer() else mean
            if len(vals) > 1:
                std[metric] = statistics.stdev(vals)
    return {"metrics": metrics, "std": std, "per_seed": per_seed}
