"""Run the configured evaluators on a set of named models (the seed first), with per-model caching.

``sdft eval`` evaluates {seed, tuned}; ``sdft compare`` evaluates {seed, vanilla, sdft}. Each model's
results are written to ``<out_dir>/results/<model>.json`` with the settings they depend on (the
model's identity and every evaluator's key); a rerun reuses a result whose key matches, so a killed
evaluation resumes at the model it was on, and a changed setting redoes what it affects.
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
    keys = {ev.name: ev.key(ctx) for ev in evaluators}
    results = {}
    for name, spec in models.items():
        path = out_dir / "results" / f"{name}.json"
        key = {"model": spec.identity, "evaluators": keys, "seeds": cfg.eval.seeds, "do_sample": cfg.eval.do_sample}
        if path.exists():
            cached = json.loads(path.read_text())
            if cached.get("key") == key:
                log.info("eval: %s: reusing %s", name, path)
                results[name] = cached["result"]
                continue
        model = spec.load()
        results[name] = _evaluate_one(model, name, evaluators, ctx)
        atomic_write_json(path, {"key": key, "result": results[name]})
        log.info("eval: %s: %s", name, json.dumps(results[name]["metrics"]))
        if model is not seed_model:
            del model
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    return results, evaluators


def _evaluate_one(model, name: str, evaluators: list[Evaluator], ctx: EvalContext) -> dict:
    ev_cfg = ctx.cfg.eval
    per_seed: dict[int, dict[str, float]] = {s: {} for s in ev_cfg.seeds}
    sampled_metrics: set[str] = set()
    for ev in evaluators:
        seeds = ev_cfg.seeds if ev.sampled and ev_cfg.do_sample else ev_cfg.seeds[:1]
        for seed in seeds:
            values = ev.run(model, name, ctx, seed)
            per_seed[seed].update(values)
            if len(seeds) > 1:
                sampled_metrics.update(values)
    metrics, std = {}, {}
    for metric in dict.fromkeys(k for values in per_seed.values() for k in values):
        vals = [values[metric] for values in per_seed.values() if metric in values]
        mean = statistics.fmean(vals)
        metrics[metric] = int(mean) if all(isinstance(v, int) for v in vals) and mean.is_integer() else mean
        if metric in sampled_metrics:
            std[metric] = statistics.stdev(vals)
    return {"metrics": metrics, "std": std, "per_seed": {str(s): v for s, v in per_seed.items() if v}}
