"""``sdft compare``: vanilla fine-tuning, SDFT and on-policy SDFT from one config (``compare.arms``),
and the forgetting report.

    <output_dir>/distill, filter, train       the sdft arm (the same folders as ``sdft run`` with
                                              ``train.objective=sft``, so a finished run is reused)
    <output_dir>/vanilla/filter, train        the vanilla arm: original answers, same train config,
                                              seed and data order (it simply skips distillation)
    <output_dir>/on_policy/train              the on_policy arm: on-policy self-distillation on the
                                              task data, same train config, seed and data order
    <output_dir>/compare/report.md, report.json, plots/*.png
    <output_dir>/compare/results/<model>.json, outputs/, seed_responses.jsonl

With trackers (``tracking.report_to``) each arm reports into a run of its own (the sdft arm's is the
output folder's), and the report's table goes to the output folder's run.

Each arm is a ``Pipeline`` run of its stage table with ``train.objective`` set for it, so arms resume
and skip like ``sdft run``'s; the evaluation (``sdft.eval.evaluate_runs``, as ``sdft eval``) caches
each model's results, so a rerun after a kill redoes only what is missing. Training runs on every
rank; evaluation and the report on rank 0 while the others wait.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import asdict, replace

from sdft.compare.report import write_report
from sdft.context import RunContext
from sdft.distributed import runtime
from sdft.eval import eval_preflight, eval_settings, evaluate_runs, paired_outcomes
from sdft.pipeline import METHODS, Method, Pipeline

log = logging.getLogger(__name__)

def _arms(ctx: RunContext) -> dict[str, Pipeline]:
    """The arms of ``compare.arms``, in that order, each in its run folder with its objective."""
    out = {}
    for name in ctx.cfg.compare.arms:
        method = METHODS[name]
        cfg = replace(ctx.cfg, train=replace(ctx.cfg.train, objective=method.objective))
        out[name] = Pipeline(ctx.for_arm(ctx.layout.arm(name), cfg), method.stages)
    return out


def check_compare(ctx: RunContext, force: bool = False) -> None:
    """Every input of both arms and of the evaluation, checked before the first stage of either arm."""
    for name, pipeline in _arms(ctx).items():
        pipeline.check_inputs(METHODS[name].trains, force)
    eval_preflight(ctx)


def run_compare(ctx: RunContext, force: bool = False) -> dict | None:
    """Train both arms, evaluate seed / vanilla / sdft, write the report. Returns it on rank 0."""
    check_compare(ctx, force)
    arms = _arms(ctx)
    for name, pipeline in arms.items():
        pipeline.run(METHODS[name].trains, force=force)
    report = None
    if runtime.is_main():
        if force:
            shutil.rmtree(ctx.layout.compare.root, ignore_errors=True)
        report = _evaluate_and_report(ctx, arms)
    runtime.barrier()
    return report


def _arm_facts(pipeline: Pipeline, method: Method) -> dict:
    """What the report says about an arm: its filter counts, final loss, objective and stage times."""
    facts = {}
    for stage in method.trains:
        record = pipeline.record(stage)
        facts[f"{stage}_seconds"] = record["seconds"]
        summary = record["summary"]
        if stage == "filter" and method.rewrites:
            facts["rewrites_kept"] = f"{summary['accepted']}/{summary['total']}"
            if "gap" in summary:  # the seed's NLL of the training answers, original -> after the filter
                facts["seed_nll_of_answers"] = (f"{summary['gap']['original_nll']:.4f} original -> "
                                                f"{summary['gap']['filtered_nll']:.4f} after the filter")
        if stage == "train":
            facts.update({k: summary[k] for k in ("objective", "steps", "final_loss", "examples") if k in summary})
    return facts


def _evaluate_and_report(ctx: RunContext, arms: dict[str, Pipeline]) -> dict:
    cfg, files = ctx.cfg, ctx.layout.compare
    results, evaluators = evaluate_runs(ctx, files, {name: pipeline.layout for name, pipeline in arms.items()})
    facts = {name: _arm_facts(pipeline, METHODS[name]) for name, pipeline in arms.items()}
    settings = {"model": cfg.model.path, "train_data": cfg.data.train, "train": {
        k: getattr(cfg.train, k) for k in ("method", "template", "epochs", "max_steps", "lr", "lora_r",
                                           "lora_targets", "micro_batch_size", "grad_accum", "seed")},
                "distill": {"template": cfg.distill.template, "seed": cfg.distill.seed,
                            **{k: getattr(cfg.distill.sampling, k) for k in ("do_sample", "temperature", "top_p")}},
                "filter_gates": cfg.filter.gates, "eval": eval_settings(cfg, ctx.tok, evaluators)}
    if "on_policy" in arms:
        settings["on_policy"] = asdict(cfg.train.on_policy)
    report = write_report(files, results, evaluators, settings, facts,
                          paired_outcomes(ctx, evaluators, files, list(arms)), cfg.compare.paper)
    log.info("compare: report in %s", files.report_md)
    _track(ctx, report["models"])
    for metric in next(iter(report["verdict"].values()), {}):
        values = "  ".join(f"{m} {v.get(metric, float('nan')):.4g}" for m, v in report["models"].items())
        verdicts = "; ".join(f"{arm}: {v[metric]}" for arm, v in report["verdict"].items())
        log.info("compare: %-28s %s  (vs %s: %s)", metric, values, report["baseline"], verdicts)
    return report


def _track(ctx: RunContext, models: dict[str, dict]) -> None:
    """The report's table (a row per model: the seed and each arm) and its numbers, to the output folder's
    trackers; each arm's own training and stage numbers went to its own tracker run."""
    metrics = list(dict.fromkeys(m for values in models.values() for m in values))
    ctx.trackers.log_table("compare/report", ["model", *metrics],
                           [[model, *(values.get(m) for m in metrics)] for model, values in models.items()])
    ctx.trackers.log_summary("compare", models)
