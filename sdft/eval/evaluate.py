"""Step 4: evaluate the seed and the tuned model side by side; writes ``eval.json``.

- Task accuracy on the held-out split (``data.test``): the model answers each question with the
  task template; the checker gate (``eval.checker``, default the filter's task gate) compares the
  answer with the reference. Predictions go to ``predictions_<model>.jsonl``.
- Retention on ``data.general_prompts`` (see ``retention``); the seed's responses are cached in
  ``seed_responses.jsonl`` so a rerun does not regenerate them.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from sdft.config.schema import RunConfig
from sdft.data.examples import Example, load_examples
from sdft.distill.generation import GenerationSettings, generate_batches
from sdft.eval.retention import retention_metrics
from sdft.filter.gates import resolve_gate, run_gate
from sdft.models.loading import load_seed, load_tuned
from sdft.templates.prompts import encode_prompt
from sdft.train.data import tokenize_rows
from sdft.utils.io import atomic_write_json, atomic_write_text, read_jsonl

log = logging.getLogger(__name__)


def task_accuracy(model, tok, examples: list[Example], template: str, checker: str,
                  settings: GenerationSettings, predictions_path: Path) -> dict:
    """Generate an answer per held-out example and judge it with the checker gate."""
    gate = resolve_gate(checker, option="eval.checker")
    prompts = {ex.id: encode_prompt(tok, template, ex.instruction, system=ex.system) for ex in examples}
    answers: dict[str, str] = {}
    for batch in generate_batches(model, tok, prompts, settings, desc=f"eval {predictions_path.stem}"):
        answers.update(batch)
    rows, correct = [], 0
    for ex in examples:
        res = run_gate(gate, checker, answers[ex.id], ex.response)
        correct += res.passed
        rows.append({"id": ex.id, "prediction": answers[ex.id], "reference": ex.response, "correct": res.passed,
                     "detail": res.detail})
    atomic_write_text(predictions_path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return {"task_accuracy": correct / len(examples), "task_correct": correct, "task_total": len(examples)}


def retention_template(tok) -> str:
    return "chat" if getattr(tok, "chat_template", None) else "alpaca"


def seed_responses(cfg: RunConfig, seed_model, tok, prompts: list[Example], out_dir: Path) -> list[dict]:
    """The seed's greedy answers to the general prompts, cached (keyed by settings) in the eval folder."""
    settings = GenerationSettings.from_section(cfg.eval, max_new_tokens=cfg.eval.retention_max_new_tokens,
                                               do_sample=False)
    template = retention_template(tok)
    key = {"model": cfg.model.path, "template": template, **settings.to_dict()}
    cache = out_dir / "seed_responses.jsonl"
    if cache.exists():
        rows = read_jsonl(cache)
        if rows and rows[0].get("key") == key and [r["id"] for r in rows] == [p.id for p in prompts]:
            return rows
    enc = {p.id: encode_prompt(tok, template, p.instruction, system=p.system) for p in prompts}
    answers: dict[str, str] = {}
    for batch in generate_batches(seed_model, tok, enc, settings, desc="seed responses"):
        answers.update(batch)
    rows = [{"id": p.id, "instruction": p.instruction, "system": p.system, "response": answers[p.id], "key": key}
            for p in prompts]
    atomic_write_text(cache, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return rows


def evaluate(cfg: RunConfig, out_dir: Path, tok, device: torch.device) -> dict:
    """Evaluate seed and tuned models; write and return the ``eval.json`` content."""
    out_dir.mkdir(parents=True, exist_ok=True)
    limit = cfg.eval.limit
    test = load_examples(cfg.data.test, cfg.data, limit=limit)[0] if cfg.data.test else []
    general = (load_examples(cfg.data.general_prompts, cfg.data, limit=limit, response_required=False)[0]
               if cfg.data.general_prompts else [])
    if not test and not general:
        raise ValueError("nothing to evaluate: set data.test and/or data.general_prompts")
    template = cfg.eval.template or cfg.train.template
    checker = cfg.task_checker()
    settings = GenerationSettings.from_section(cfg.eval)
    seed_model = load_seed(cfg, device)
    results: dict[str, dict] = {"seed": {}, "tuned": {}}
    retention_set = None
    if general:
        rows = seed_responses(cfg, seed_model, tok, general, out_dir)
        # Keep every seed response, however long: retention is measured on the same tokens for both models.
        retention_set = tokenize_rows(rows, tok, retention_template(tok), cutoff_len=10**9, overlength="skip")
    models = [("seed", seed_model), ("tuned", None)]
    for name, model in models:
        if model is None:
            model = load_tuned(cfg, device)
        if test:
            results[name].update(task_accuracy(model, tok, test, template, checker, settings,
                                               out_dir / f"predictions_{name}.jsonl"))
        if retention_set is not None:
            r = retention_metrics(model, seed_model, retention_set, tok.pad_token_id, cfg.eval.batch_size)
            results[name].update({"retention_kl": r["kl"], "retention_nll": r["nll"], "retention_tokens": r["tokens"]})
    report = {**results,
              "delta": {k: results["tuned"][k] - results["seed"][k] for k in results["seed"]
                        if isinstance(results["seed"][k], float)},
              "settings": {"task_template": template, "checker": checker if test else None,
                           "task_examples": len(test), "general_prompts": len(general),
                           "retention_template": retention_template(tok) if general else None,
                           "generation": settings.to_dict()}}
    atomic_write_json(out_dir / "eval.json", report)
    log.info("eval: %s", json.dumps({k: report[k] for k in ("seed", "tuned")}))
    return report
