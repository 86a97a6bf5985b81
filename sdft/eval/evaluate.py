"""Step 4: evaluate the seed and the tuned model side by side. Stage entry: ``run_eval(ctx)``.

The evaluators of ``eval.evaluators`` and ``eval.benchmarks`` run on both models (``evaluation``). ``eval.json`` holds, per
model, every metric (mean over ``eval.seeds`` when sampling), the tuned-minus-seed ``delta``, the
spread over seeds (``std``) and the settings the numbers were made with. Per-example outputs are in
``outputs/``; the seed's retention responses are cached in ``seed_responses.jsonl``.
"""

from __future__ import annotations

import json
import logging

from sdft.config.schema import RunConfig
from sdft.config.validate import require_files
from sdft.context import RunContext
from sdft.data.tokenize import check_renders
from sdft.errors import ConfigError, DataError
from sdft.eval.benchmarks import benchmark_evaluators
from sdft.eval.evaluation import describe, eval_settings, evaluate_runs
from sdft.eval.evaluators.benchmark import BenchmarkEvaluator
from sdft.eval.sandbox import isolation
from sdft.utils.io import atomic_write_json

log = logging.getLogger(__name__)


def eval_preflight(ctx: RunContext) -> None:
    """What evaluation needs, checked before any work: the evaluators' input files, the held-out sets
    read whole (a bad record, or a conversation the chat template rejects, named), and a sandbox that
    isolates generated code (``humaneval``) unless ``eval.humaneval_unisolated`` allows running without.
    Runs once per command (``sdft compare`` asks for it per arm)."""
    ctx.check_once(("eval",), lambda: _eval_checks(ctx))


def _eval_checks(ctx: RunContext) -> None:
    cfg = ctx.cfg
    require_files(eval_input_files(cfg), "the evaluation")
    _check_held_out_data(ctx)
    humaneval = "humaneval" in cfg.eval.evaluators or "humaneval" in cfg.eval.benchmarks
    if humaneval and not cfg.eval.humaneval_unisolated and isolation() != "bubblewrap":
        raise ConfigError("eval.evaluators or eval.benchmarks has humaneval, but bubblewrap (bwrap) cannot run here "
                          "to isolate the generated programs: install it (Debian: apt-get install bubblewrap), or set "
                          "eval.humaneval_unisolated=true to run them under an audit hook alone (a hostile "
                          "program could then write wherever this user can)")


def _check_held_out_data(ctx: RunContext) -> None:
    """Read ``data.test`` and ``data.general_prompts`` as the task and retention evaluators will."""
    cfg, on = ctx.cfg, set(ctx.cfg.eval.evaluators)
    if cfg.data.test and "task" in on:
        examples = ctx.read_examples(cfg.data.test, cfg.data, limit=cfg.eval.limit)
        check_renders(examples, [cfg.eval.template or cfg.train.template], lambda: ctx.tok)
    if cfg.data.general_prompts and "retention" in on:
        prompts = ctx.read_examples(cfg.data.general_prompts, cfg.data, limit=cfg.eval.limit, response_required=False)
        check_renders(prompts, ["chat"], lambda: ctx.tok, needs_template=False)
    for ev in benchmark_evaluators(cfg):  # every benchmark's records, read as it reads them
        if isinstance(ev, BenchmarkEvaluator):
            try:
                ev.load(cfg, ctx.read_examples)
            except DataError as e:
                raise DataError(f"eval.benchmarks: {ev.name}: {e}") from None


def eval_input_files(cfg: RunConfig) -> list[tuple[str, str]]:
    """The files the configured evaluators read, as (option, path); the unset optional ones are left out
    (an evaluator whose data is not set is skipped, and the shipped sets need no file)."""
    ev, on = cfg.eval, set(cfg.eval.evaluators)
    wanted = [("task", "data.test", cfg.data.test), ("retention", "data.general_prompts", cfg.data.general_prompts),
              ("safety", "eval.safety_prompts", ev.safety_prompts),
              ("humaneval", "eval.humaneval_problems", ev.humaneval_problems),
              ("lm_eval", "eval.lm_eval_include_path", ev.lm_eval_include_path)]
    return [(option, path) for evaluator, option, path in wanted if evaluator in on and path]


def run_eval(ctx: RunContext) -> dict:
    """The eval stage (rank 0): seed vs this run's tuned model -> ``eval/eval.json``; returns the metrics."""
    files = ctx.layout.eval
    results, evaluators = evaluate_runs(ctx, files, {"tuned": ctx.layout})
    seed, tuned = results["seed"]["metrics"], results["tuned"]["metrics"]
    report = {"seed": seed, "tuned": tuned,
              "delta": {k: tuned[k] - seed[k] for k in seed
                        if k in tuned and describe(evaluators, k).higher_is_better is not None},
              "std": {name: r["std"] for name, r in results.items() if r["std"]},
              "settings": eval_settings(ctx.cfg, ctx.tok, evaluators)}
    atomic_write_json(files.eval_json, report)
    log.info("eval: %s", json.dumps({k: report[k] for k in ("seed", "tuned")}))
    return {k: report[k] for k in ("seed", "tuned")}
