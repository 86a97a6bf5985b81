"""Step 1: the seed model rewrites every reference answer in its own words, on one rank or many.

Output (``<output_dir>/distill``):
- ``rewrites.jsonl``: one ``{id, rewrite, prompt_tokens}`` record per example, in data-set order
  (``rewrite`` is None with a ``skipped`` reason when the prompt exceeds ``distill.cutoff_len``).
- ``generation_config.json``: template, sampling settings and model, written before the first batch;
  a restart with different settings is refused rather than mixing two distributions.

Several ranks: examples are split into one shard per rank, balanced by prompt length (longest first,
each to the least-loaded rank). Each rank appends finished batches to ``rewrites.part-<rank>.jsonl``
(fsync'd). A restart, at any world size, repairs torn last lines, takes every id found in any part as
done, and generates only the rest; when all ranks are through, rank 0 merges the parts into
``rewrites.jsonl`` in data-set order and removes them. So a kill loses at most the batches in flight
and duplicates nothing, and the ids and counts are the same whatever the world size.

Modes (``distill.mode``): ``replica``, each rank holds the whole model and never waits for another
until the final merge; ``zero3``, parameters are partitioned over ranks at load, and every rank runs
the same number of generate calls (a rank out of work runs a stand-in batch) because each call needs
all ranks: with ``zero3_gather`` the whole model is gathered once per batch and generation is local;
without it, generate runs with ``synced_gpus`` and ZeRO gathers each layer at every token.
"""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path

from sdft.config.schema import RunConfig
from sdft.data.examples import Example
from sdft.distributed import runtime
from sdft.distill.generation import GenerationSettings, generate_batches, generate_texts, plan_batches
from sdft.templates.prompts import DISTILL_TEMPLATE_NAMES, encode_prompt
from sdft.utils.faults import maybe_kill
from sdft.utils.io import append_jsonl, atomic_write_json, atomic_write_text, read_jsonl, repair_jsonl_tail

log = logging.getLogger(__name__)

REWRITES = "rewrites.jsonl"


def _record_of_settings(cfg: RunConfig, settings: GenerationSettings) -> dict:
    t = cfg.train
    precision = (f"4-bit {t.qlora_quant_type} (double quant {t.qlora_double_quant}, compute {t.qlora_compute_dtype})"
                 if cfg.distill.quantized else cfg.model.dtype)
    return {"model": cfg.model.path, "dtype": cfg.model.dtype, "precision": precision,
            "template": cfg.distill.template, "cutoff_len": cfg.distill.cutoff_len, **settings.to_dict()}


def balanced_shards(lengths: dict[str, int], world: int) -> list[list[str]]:
    """Split ids into ``world`` shards of about equal total length (longest first, to the lightest shard)."""
    shards: list[list[str]] = [[] for _ in range(world)]
    load = [0] * world
    for i in sorted(lengths, key=lambda i: (-lengths[i], i)):
        r = min(range(world), key=lambda k: (load[k], k))
        shards[r].append(i)
        load[r] += lengths[i]
    return shards


def _part(out_dir: Path, rank: int) -> Path:
    return out_dir / f"rewrites.part-{rank}.jsonl"


def read_done(out_dir: Path, repair: bool = False) -> dict[str, dict]:
    """Every record already written: the merged file and all part files. Duplicates are corruption."""
    files = ([out_dir / REWRITES] if (out_dir / REWRITES).exists() else []) + sorted(out_dir.glob("rewrites.part-*.jsonl"))
    done: dict[str, dict] = {}
    for f in files:
        if repair and (removed := repair_jsonl_tail(f)):
            log.warning("%s: dropped a torn last line (%d bytes) left by an interrupted run", f, removed)
        for rec in read_jsonl(f):
            if rec["id"] in done:
                raise RuntimeError(f"{f}: id {rec['id']!r} was written twice; the distill output is corrupt")
            done[rec["id"]] = rec
    return done


def distill(cfg: RunConfig, examples: list[Example], out_dir: Path, model, tok) -> dict:
    """Generate a rewrite for every example not done yet; call on every rank. Returns a summary."""
    world, rank = runtime.world_size(), runtime.rank()
    settings = GenerationSettings.from_section(cfg.distill)
    record = _record_of_settings(cfg, settings)
    gen_cfg = out_dir / "generation_config.json"
    if gen_cfg.exists() and json.loads(gen_cfg.read_text()) != record:
        raise RuntimeError(f"{gen_cfg}: the existing rewrites were generated with other settings "
                           f"({json.loads(gen_cfg.read_text())}); use another output_dir or delete {out_dir}")
    runtime.barrier()  # every rank has compared before rank 0 writes
    if rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(gen_cfg, record)
        read_done(out_dir, repair=True)
    runtime.barrier()
    done = read_done(out_dir)

    template = DISTILL_TEMPLATE_NAMES[cfg.distill.template]
    prompts, too_long = {}, []
    for ex in examples:
        ids = encode_prompt(tok, template, ex.instruction, reference=ex.response, system=ex.system)
        if len(ids) > cfg.distill.cutoff_len:
            too_long.append({"id": ex.id, "rewrite": None, "prompt_tokens": len(ids),
                             "skipped": f"prompt_too_long ({len(ids)} > distill.cutoff_len={cfg.distill.cutoff_len})"})
        else:
            prompts[ex.id] = ids
    if rank == 0:
        append_jsonl(_part(out_dir, 0), [r for r in too_long if r["id"] not in done])
        if too_long:
            log.warning("distill: %d prompt(s) longer than distill.cutoff_len=%d keep their original answer",
                        len(too_long), cfg.distill.cutoff_len)
        if done:
            log.info("distill: resuming, %d/%d examples already done", len(done), len(examples))
    shards = balanced_shards({i: len(p) for i, p in prompts.items()}, world)
    mine = {i: prompts[i] for i in shards[rank]}
    if cfg.distill.mode == "zero3" and world > 1:
        _generate_zero3(cfg, model, tok, shards, prompts, settings, set(done), out_dir)
    else:
        for batch in generate_batches(model, tok, mine, settings, skip=set(done), desc="distill"):
            append_jsonl(_part(out_dir, rank), _records(batch, prompts))
            maybe_kill("distill_batch")
    runtime.barrier()
    if rank == 0:
        _merge(out_dir, examples)
    runtime.barrier()
    return {"examples": len(examples), "generated": len(prompts), "prompt_too_long": len(too_long),
            "world_size": world, "mode": cfg.distill.mode if world > 1 else "single", "generation_config": record}


def _records(batch: dict[str, str], prompts: dict[str, list[int]]) -> list[dict]:
    return [{"id": i, "rewrite": text, "prompt_tokens": len(prompts[i])} for i, text in batch.items()]


def _merge(out_dir: Path, examples: list[Example]) -> None:
    """Rank 0: all parts -> ``rewrites.jsonl`` in data-set order (atomic), then drop the parts."""
    done = read_done(out_dir)
    missing = [ex.id for ex in examples if ex.id not in done]
    if missing:
        raise RuntimeError(f"distill finished with {len(missing)} examples missing (e.g. {missing[0]!r})")
    atomic_write_text(out_dir / REWRITES, "".join(json.dumps(done[ex.id], ensure_ascii=False) + "\n" for ex in examples))
    for part in out_dir.glob("rewrites.part-*.jsonl"):
        part.unlink()


def _generate_zero3(cfg: RunConfig, model, tok, shards, prompts, settings: GenerationSettings, done: set[str],
                    out_dir: Path) -> None:
    """ZeRO-3: every rank makes the same number of generate calls (stand-ins when out of work)."""
    import deepspeed
    import torch

    rank = runtime.rank()
    # Every rank knows every shard and the done set, so all agree on the number of calls without talking.
    plans = [[[i for i in b if i not in done] for b in plan_batches({i: prompts[i] for i in s}, settings.batch_size)]
             for s in shards]
    plans = [[b for b in p if b] for p in plans]
    calls = max(len(p) for p in plans)
    gather = cfg.distill.zero3_gather
    for index in range(calls):
        batch = plans[rank][index] if index < len(plans[rank]) else None
        torch.manual_seed(settings.seed + index)
        with (deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None) if gather
              else contextlib.nullcontext()):
            if batch:
                texts = generate_texts(model, tok, [prompts[i] for i in batch], settings, synced_gpus=not gather)
            elif not gather:  # a stand-in prompt keeps this rank in every per-layer gather
                generate_texts(model, tok, [[tok.eos_token_id]], settings, synced_gpus=True)
        if batch:
            append_jsonl(_part(out_dir, rank), _records(dict(zip(batch, texts)), prompts))
            maybe_kill("distill_batch")
