"""``sdft compare``: vanilla fine-tuning vs SDFT from one config, and the forgetting report.

    <output_dir>/distill, filter, train       the SDFT arm (the same folders as ``sdft run``, so a
                                              finished run is reused, not redone)
    <output_dir>/vanilla/filter, train        the vanilla arm: original answers, same train config,
                                              seed and data order (it simply skips distillation)
    <output_dir>/compare/report.md, report.json, plots/*.png
    <output_dir>/compare/results/<model>.json, outputs/, seed_responses.jsonl

Both arms' stages resume and skip like ``sdft run``'s; the evaluation caches each model's results,
so a rerun after a kill redoes only what is missing. Training runs on every rank; evaluation and
the report on rank 0 while the others wait.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import replace
from pathlib import Path

from sdft.config.schema import RunConfig
from sdft.pipeline import Stages

log = logging.getLogger(__name__)

SDFT_STAGES = ("distill", "filter", "train")
VANILLA_STAGES = ("filter", "train")


def arms(cfg: RunConfig, force: bool = False) -> dict[str, Stages]:
    """The two arms' stage runners: ``vanilla`` in ``<output_dir>/vanilla``, ``sdft`` in ``<output_dir>``."""
    vanilla_cfg = replace(cfg, output_dir=str(Path(cfg.output_dir) / "vanilla"))
    return {"vanilla": Stages(vanilla_cfg, force=force, vanilla=True), "sdft": Stages(cfg, force=force)}


def _arm_facts(stages: Stages, names: tuple[str, ...]) -> dict:
    """What the report says about an arm: its filter counts, final loss and stage times."""
    facts = {}
    for stage in names:
        record = json.loads((stages.root / stage / "COMPLETE.json").read_text())
        facts[f"{stage}_seconds"] = record["seconds"]
        summary = record["summary"]
        if stage == "filter" and not stages.vanilla:
            facts["rewrites_kept"] = f"{summary['accepted']}/{summary['total']}"
        if stage == "train":
            facts.update({k: summary[k] for k in ("steps", "final_loss", "examples") if k in summary})
    return facts


def compare(cfg: RunConfig, force: bool = False) -> dict | None:
    """Train both arms, evaluate seed / vanilla / sdft, write the report. Returns it on rank 0."""
    from sdft.distributed import runtime

    runners = arms(cfg, force)
    report_dir = Path(cfg.output_dir) / "compare"
    for name, names in (("sdft", SDFT_STAGES), ("vanilla", VANILLA_STAGES)):
        stages = runners[name]
        for stage in names:
            stages.run(stage)
            stages.force = False  # force clears the first stage and all after it; the rest then run fresh
    report = None
    if runtime.rank() == 0:
        if force and report_dir.exists():
            shutil.rmtree(report_dir)
        report = _evaluate_and_report(cfg, runners, report_dir)
    runtime.barrier()
    return report


def paired_outcomes(cfg: RunConfig, evaluators, report_dir: Path, tok, device) -> dict[str, dict[str, list[bool]]]:
    """``{metric: {arm: [yes/no per item]}}`` of both arms, items in the same order (seeds pooled)."""
    from sdft.eval.base import EvalContext

    ctx = EvalContext(cfg, tok, device, report_dir)
    paired: dict[str, dict[str, list[bool]]] = {}
    for ev in evaluators:
        seeds = cfg.eval.seeds if ev.sampled and cfg.eval.do_sample else cfg.eval.seeds[:1]
        for arm in ("vanilla", "sdft"):
            for seed in seeds:
                for metric, items in ev.paired_outcomes(ctx, arm, seed).items():
                    paired.setdefault(metric, {}).setdefault(arm, []).extend(items)
    return paired


def _evaluate_and_report(cfg: RunConfig, runners: dict[str, Stages], report_dir: Path) -> dict:
    from sdft.eval.engine import evaluate_models
    from sdft.eval.evaluate import eval_settings, seed_spec, tuned_spec
    from sdft.eval.report import write_report
    from sdft.models.loading import load_seed

    main = runners["sdft"]
    seed_model = load_seed(cfg, main.device)
    models = {"seed": seed_spec(cfg, seed_model),
              "vanilla": tuned_spec(runners["vanilla"].cfg, main.device),
              "sdft": tuned_spec(cfg, main.device)}
    results, evaluators = evaluate_models(cfg, main.tok, main.device, seed_model, models, report_dir)
    facts = {"vanilla": _arm_facts(runners["vanilla"], VANILLA_STAGES), "sdft": _arm_facts(main, SDFT_STAGES)}
    settings = {"model": cfg.model.path, "train_data": cfg.data.train, "train": {
        k: getattr(cfg.train, k) for k in ("method", "template", "epochs", "max_steps", "lr", "lora_r",
                                           "lora_targets", "micro_batch_size", "grad_accum", "seed")},
                "distill": {k: getattr(cfg.distill, k) for k in ("template", "do_sample", "temperature", "top_p",
                                                                  "seed")},
                "filter_gates": cfg.filter.gates, "eval": eval_settings(cfg, main.tok, evaluators)}
    report = write_report(report_dir, results, evaluators, settings, facts,
                          paired_outcomes(cfg, evaluators, report_dir, main.tok, main.device))
    log.info("compare: report in %s", report_dir / "report.md")
    for metric, verdict in report["verdict"].items():
        log.info("compare: %-28s seed %s  vanilla %s  sdft %s  (%s)", metric,
                 *(f"{report['models'][m].get(metric, float('nan')):.4g}" for m in ("seed", "vanilla", "sdft")),
                 verdict)
    return report
