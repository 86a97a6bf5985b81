"""Step 1: the seed model rewrites every reference answer in its own words.

Output (``<output_dir>/distill``):
- ``rewrites.jsonl``: one ``{id, rewrite, prompt_tokens}`` record per example (``rewrite`` is None
  with a ``skipped`` reason when the prompt exceeds ``distill.cutoff_len``), appended and fsync'd
  as each batch finishes. A restarted run drops a torn last line and skips ids already written, so a
  kill loses at most the batch in flight and duplicates nothing.
- ``generation_config.json``: template, sampling settings and model, written before the first batch;
  a restart with different settings is refused rather than mixing two distributions.
- ``COMPLETE.json``: written last; ``sdft run`` skips the stage when it is present.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from sdft.config.schema import RunConfig
from sdft.data.examples import Example
from sdft.distill.generation import GenerationSettings, generate_batches
from sdft.templates.prompts import DISTILL_TEMPLATE_NAMES, encode_prompt
from sdft.utils.faults import maybe_kill
from sdft.utils.io import append_jsonl, atomic_write_json, read_jsonl, repair_jsonl_tail

log = logging.getLogger(__name__)

REWRITES = "rewrites.jsonl"


def distill_settings(cfg: RunConfig) -> GenerationSettings:
    d = cfg.distill
    return GenerationSettings(max_new_tokens=d.max_new_tokens, do_sample=d.do_sample, temperature=d.temperature,
                              top_p=d.top_p, top_k=d.top_k, seed=d.seed, batch_size=d.batch_size)


def _record_of_settings(cfg: RunConfig, settings: GenerationSettings) -> dict:
    return {"model": cfg.model.path, "dtype": cfg.model.dtype, "template": cfg.distill.template,
            "cutoff_len": cfg.distill.cutoff_len, **settings.to_dict()}


def read_done(out_file: Path) -> dict[str, dict]:
    """Records already written (after repairing a torn tail); duplicates would be a bug, so refuse them."""
    if not out_file.exists():
        return {}
    removed = repair_jsonl_tail(out_file)
    if removed:
        log.warning("%s: dropped a torn last line (%d bytes) left by an interrupted run", out_file, removed)
    done: dict[str, dict] = {}
    for rec in read_jsonl(out_file):
        if rec["id"] in done:
            raise RuntimeError(f"{out_file}: id {rec['id']!r} appears twice; the file is corrupt")
        done[rec["id"]] = rec
    return done


def distill(cfg: RunConfig, examples: list[Example], out_dir: Path, model, tok) -> dict:
    """Generate a rewrite for every example not yet in ``out_dir/rewrites.jsonl``. Returns a summary."""
    out_dir.mkdir(parents=True, exist_ok=True)
    out_file = out_dir / REWRITES
    settings = distill_settings(cfg)
    record = _record_of_settings(cfg, settings)
    gen_cfg = out_dir / "generation_config.json"
    if gen_cfg.exists() and json.loads(gen_cfg.read_text()) != record:
        raise RuntimeError(f"{gen_cfg}: the existing rewrites were generated with other settings "
                           f"({json.loads(gen_cfg.read_text())}); use another output_dir or delete {out_dir}")
    atomic_write_json(gen_cfg, record)

    done = read_done(out_file)
    template = DISTILL_TEMPLATE_NAMES[cfg.distill.template]
    prompts, too_long = {}, []
    for ex in examples:
        ids = encode_prompt(tok, template, ex.instruction, reference=ex.response, system=ex.system)
        if len(ids) > cfg.distill.cutoff_len:
            too_long.append({"id": ex.id, "rewrite": None, "prompt_tokens": len(ids),
                             "skipped": f"prompt_too_long ({len(ids)} > distill.cutoff_len={cfg.distill.cutoff_len})"})
        else:
            prompts[ex.id] = ids
    append_jsonl(out_file, [r for r in too_long if r["id"] not in done])
    if too_long:
        log.warning("distill: %d prompt(s) longer than distill.cutoff_len=%d keep their original answer",
                    len(too_long), cfg.distill.cutoff_len)
    if done:
        log.info("distill: resuming, %d/%d examples already done", len(done), len(examples))
    for batch in generate_batches(model, tok, prompts, settings, skip=set(done), desc="distill"):
        append_jsonl(out_file, [{"id": i, "rewrite": text, "prompt_tokens": len(prompts[i])} for i, text in batch.items()])
        maybe_kill("distill_batch")
    final = read_done(out_file)
    missing = [ex.id for ex in examples if ex.id not in final]
    if missing:
        raise RuntimeError(f"distill finished with {len(missing)} examples missing (e.g. {missing[0]!r})")
    summary = {"examples": len(examples), "generated": len(prompts), "prompt_too_long": len(too_long),
               "generation_config": record}
    return summary
