"""Step 1: the seed model rewrites every reference answer in its own words, on one rank or many.

Stage entry: ``run_distill(ctx)``. Output (``<output_dir>/distill``, paths from ``RunLayout``):
- ``rewrites.jsonl``: one ``{id, rewrite, prompt_tokens}`` record per example, in data-set order; a
  multi-turn conversation has one ``{id, turn, rewrite, prompt_tokens}`` record per rewritten assistant
  turn (``distill.turns``), each prompted with the conversation before it
  (a prompt longer than ``distill.cutoff_len`` is cut to it and still generated, as the authors did; with
  ``distill.overlength=skip``, ``rewrite`` is None with a ``skipped`` reason instead; with
  ``generation.engine=hf`` also ``batch``, the batch it was sampled in by its first id, and ``batch_size``).
- ``generation_config.json``: template, sampling settings and model, written before the first batch;
  a restart with different settings is refused rather than mixing two distributions.

Several ranks: examples are split into one shard per rank, balanced by prompt length (longest first,
each to the least-loaded rank). Each rank appends finished batches to ``rewrites.part-<rank>.jsonl``
(fsync'd). A restart, at any world size, repairs torn last lines, drops the records of an ``hf`` batch
that is not all there (its texts were sampled together; it is generated again whole), takes every id found
in any part as done, and generates only the rest; when all ranks are through, rank 0 merges the parts
into ``rewrites.jsonl`` in data-set order and removes them; records of a part that are already in the
merged file are leftovers of a kill during that removal, which a restart ignores and removes. So a
kill loses at most the batches in flight and duplicates nothing, and the ids and counts are the same
whatever the world size.

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

from sdft.config.schema import RunConfig
from sdft.context import RunContext
from sdft.data.examples import Example, RewriteUnit, record_key, rewrite_units
from sdft.distributed import runtime
from sdft.errors import StageError
from sdft.layout import RunLayout
from sdft.models.generation import choose_engine, generate_batches, generate_texts, generation_record, plan_batches
from sdft.models.run_models import load_distill_seed
from sdft.templates.prompts import DISTILL_TEMPLATE_NAMES, encode_prompt_fit
from sdft.utils import stop
from sdft.utils.faults import maybe_kill
from sdft.utils.io import append_jsonl, atomic_write_json, read_jsonl, remove, repair_jsonl_tail, write_jsonl
from sdft.utils.switches import resolve_switch

log = logging.getLogger(__name__)


def run_distill(ctx: RunContext) -> dict:
    """The distill stage (every rank): load the seed, rewrite every training example not done yet."""
    examples, report = ctx.train_examples()
    model = load_distill_seed(ctx.cfg, ctx.device)
    summary = distill(ctx.cfg, examples, ctx.layout, model, ctx.tok)
    return {**summary, "skipped_records": report.skipped}


def _generation_config(cfg: RunConfig, engine: str) -> dict:
    """What the rewrites depend on, written to ``generation_config.json`` before the first batch."""
    q = cfg.quantization
    precision = (f"4-bit {q.quant_type} (double quant {q.double_quant}, compute {q.compute_dtype})"
                 if cfg.distill.quantized else cfg.generation_dtype)
    d = cfg.distill
    return {"model": cfg.model.path, "dtype": cfg.generation_dtype, "precision": precision, "template": d.template,
            "cutoff_len": d.cutoff_len, **generation_record(d.sampling, d.batch_size, d.seed, engine),
            **({"prompt_layout": cfg.prompt.layout, "overlength": d.overlength} if d.template != "chat" else
               {"overlength": d.overlength})}


def balanced_shards(lengths: dict[str, int], world: int) -> list[list[str]]:
    """Split ids into ``world`` shards of about equal total length (longest first, to the lightest shard)."""
    shards: list[list[str]] = [[] for _ in range(world)]
    load = [0] * world
    for i in sorted(lengths, key=lambda i: (-lengths[i], i)):
        r = min(range(world), key=lambda k: (load[k], k))
        shards[r].append(i)
        load[r] += lengths[i]
    return shards


def read_done(layout: RunLayout, repair: bool = False) -> dict[str, dict]:
    """Every record already written: the merged file, then the parts' records not in it (a part's
    record that is already merged is a leftover of a kill during the merge). An id twice in the merged
    file or in the parts is corruption. ``repair`` (rank 0, before the others read): drop torn last
    lines and interrupted batches, and remove parts whose every record is merged."""
    if repair:
        for f in [layout.rewrites, *layout.rewrites_parts()]:
            if removed := repair_jsonl_tail(f):
                log.warning("%s: dropped a torn last line (%d bytes) left by an interrupted run", f, removed)
            if f.exists() and len(whole := _whole_batches(records := read_jsonl(f), f)) < len(records):
                write_jsonl(f, whole)
    merged = {record_key(r): r for r in read_jsonl(layout.rewrites)} if layout.rewrites.exists() else {}
    done: dict[str, dict] = dict(merged)
    for part in layout.rewrites_parts():
        records = read_jsonl(part)
        if repair and merged and all(record_key(r) in merged for r in records):
            log.warning("%s: removing a part already merged into %s", part, layout.rewrites.name)
            remove(part)
            continue
        for rec in records:
            key = record_key(rec)
            if key in merged:
                continue
            if key in done:
                raise StageError(f"{part}: {key!r} was written twice; the distill output is corrupt")
            done[key] = rec
    return done


def distill(cfg: RunConfig, examples: list[Example], layout: RunLayout, model, tok) -> dict:
    """Generate a rewrite for every example not done yet; call on every rank. Returns a summary."""
    world, rank = runtime.world_size(), runtime.rank()
    units = rewrite_units(examples, cfg.distill.turns)
    by_key = {u.key: u for u in units}
    prompts, too_long, cut = _encode(cfg, units, tok)
    d = cfg.distill
    if d.mode == "zero3" and world > 1 and not d.zero3_gather:  # only generate's synced_gpus gathers per layer
        resolve_switch("generation.engine", cfg.generation.engine, "distill.zero3_gather=false gathers each layer at "
                       "every token, which only generate's synced_gpus does", on="continuous", off="hf")
        engine = "hf"
    else:
        engine = choose_engine(cfg.generation.engine, model, prompts, d.sampling)
    record = _generation_config(cfg, engine)
    gen_cfg = layout.generation_config
    if gen_cfg.exists() and json.loads(gen_cfg.read_text()) != record:
        raise StageError(f"{gen_cfg}: the existing rewrites were generated with other settings "
                         f"({json.loads(gen_cfg.read_text())}); use another output_dir or delete {gen_cfg.parent}")
    runtime.barrier()  # every rank has compared before rank 0 writes
    if rank == 0:
        atomic_write_json(gen_cfg, record)
        read_done(layout, repair=True)
    runtime.barrier()
    done = read_done(layout)
    if rank == 0:
        append_jsonl(layout.rewrites_part(0), [r for r in too_long if record_key(r) not in done])
        if too_long:
            log.warning("distill: %d prompt(s) longer than distill.cutoff_len=%d keep their original answer "
                        "(distill.overlength=skip)", len(too_long), cfg.distill.cutoff_len)
        if cut:
            log.warning("distill: cut %d prompt(s) longer than distill.cutoff_len=%d to that length (their tail, "
                        "the template's last line included, is lost; e.g. %s)", len(cut), cfg.distill.cutoff_len, cut[0])
        if done:
            log.info("distill: resuming, %d/%d answers already done", len(done), len(units))
    shards = balanced_shards({i: len(p) for i, p in prompts.items()}, world)
    mine = {i: prompts[i] for i in shards[rank]}
    with stop.on_signals():
        if d.mode == "zero3" and world > 1 and engine == "hf":
            _generate_zero3(cfg, model, tok, shards, prompts, set(done), layout, by_key)
        else:
            # ZeRO-3 with the continuous engine: the whole model is gathered once, on every rank (a
            # collective, so also on a rank with nothing left to do), for all of this rank's prompts.
            with _gathered(model) if d.mode == "zero3" and world > 1 else contextlib.nullcontext():
                for batch in generate_batches(model, tok, mine, d.sampling, batch_size=d.batch_size, seed=d.seed,
                                              engine=engine, skip=set(done), desc="distill",
                                              cuda_graphs=cfg.generation.cuda_graphs):
                    append_jsonl(layout.rewrites_part(rank), _records(batch, prompts, engine, by_key))
                    maybe_kill("distill_batch")
                    # No collective here: the ranks' batches differ in number; a rank that stops ends the
                    # launcher's group, and every rank keeps what it wrote.
                    _stop_if_asked(stop.requested(), layout, rank)
    runtime.barrier()
    if rank == 0:
        _merge(layout, units)
    runtime.barrier()
    return {"examples": len(examples), "turns": len(units), "generated": len(prompts), "prompt_too_long": len(too_long),
            "prompt_truncated": len(cut),
            "world_size": world, "mode": cfg.distill.mode if world > 1 else "single", "generation_config": record}


def _stop_if_asked(signal_name: str | None, layout: RunLayout, rank: int) -> None:
    """End the command after the batch just written when a signal asked to stop (``sdft.utils.stop``)."""
    if signal_name is None:
        return
    written = len(read_jsonl(layout.rewrites_part(rank))) if layout.rewrites_part(rank).exists() else 0
    raise stop.Stopped(f"distill: stopped by {signal_name} after a whole batch, {written} rewrite(s) of rank {rank} "
                       "written; rerun the same command to resume")


def _encode(cfg: RunConfig, units: list[RewriteUnit], tok) -> tuple[dict[str, list[int]], list[dict], list[str]]:
    """The rewrite prompts by unit key (a longer one cut to ``distill.cutoff_len``), the records of the
    units whose prompt is too long (``distill.overlength=skip``), and the keys of the cut prompts."""
    d = cfg.distill
    template = DISTILL_TEMPLATE_NAMES[d.template]
    prompts, too_long, cut = {}, [], []
    for u in units:
        ids, was_cut = encode_prompt_fit(tok, template, u.instruction, reference=u.reference, system=u.system,
                                         history=u.history, layout=cfg.prompt.layout,
                                         cutoff=d.cutoff_len if d.overlength == "truncate" else None)
        if len(ids) > d.cutoff_len:
            too_long.append({**_unit_fields(u), "rewrite": None, "prompt_tokens": len(ids),
                             "skipped": f"prompt_too_long ({len(ids)} > distill.cutoff_len={d.cutoff_len})"})
            continue
        prompts[u.key] = ids
        if was_cut:
            cut.append(u.key)
    return prompts, too_long, cut


def _unit_fields(u: RewriteUnit) -> dict:
    return {"id": u.id} if u.turn is None else {"id": u.id, "turn": u.turn}


def _gathered(model):
    import deepspeed

    return deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None)


def _records(batch: dict[str, str], prompts: dict[str, list[int]], engine: str, units: dict[str, RewriteUnit]) -> list[dict]:
    """A generated batch's records. With ``hf`` each names its batch (its first key) and the batch's size:
    the texts of a batch were sampled together, so a batch is kept whole or not at all
    (``_whole_batches``). The continuous engine's texts are each the unit's own."""
    if engine != "hf":
        return [{**_unit_fields(units[k]), "rewrite": text, "prompt_tokens": len(prompts[k])} for k, text in batch.items()]
    first = next(iter(batch))
    return [{**_unit_fields(units[k]), "rewrite": text, "prompt_tokens": len(prompts[k]), "batch": first,
             "batch_size": len(batch)} for k, text in batch.items()]


def _whole_batches(records: list[dict], path) -> list[dict]:
    """``records`` without those of a batch that is not all there (a kill tore the append that wrote it:
    regenerating only its missing members would sample them in another batch, so another text)."""
    counts: dict[str, int] = {}
    sizes: dict[str, int] = {}
    for r in records:
        if "batch" in r:
            counts[r["batch"]] = counts.get(r["batch"], 0) + 1
            sizes[r["batch"]] = r["batch_size"]
    partial = {b for b, n in counts.items() if n < sizes[b]}
    if partial:
        log.warning("%s: dropping %d record(s) of an interrupted batch; the batch is generated again",
                    path, sum(counts[b] for b in partial))
    return [r for r in records if r.get("batch") not in partial]


def _merge(layout: RunLayout, units: list[RewriteUnit]) -> None:
    """Rank 0: all parts -> ``rewrites.jsonl`` in data-set order (atomic), then drop the parts."""
    done = read_done(layout)
    missing = [u.key for u in units if u.key not in done]
    if missing:
        raise StageError(f"distill finished with {len(missing)} answers missing (e.g. {missing[0]!r})")
    write_jsonl(layout.rewrites, [done[u.key] for u in units])
    for part in layout.rewrites_parts():
        remove(part)


def _generate_zero3(cfg: RunConfig, model, tok, shards, prompts, done: set[str], layout: RunLayout,
                    units: dict[str, RewriteUnit]) -> None:
    """ZeRO-3: every rank makes the same number of generate calls (stand-ins when out of work)."""
    import deepspeed
    import torch

    rank, d = runtime.rank(), cfg.distill
    # Every rank knows every shard and the done set, so all agree on the number of calls without talking.
    plans = [[[i for i in b if i not in done] for b in plan_batches({i: prompts[i] for i in s}, d.batch_size)]
             for s in shards]
    plans = [[b for b in p if b] for p in plans]
    calls = max(len(p) for p in plans)
    gather = d.zero3_gather
    for index in range(calls):
        batch = plans[rank][index] if index < len(plans[rank]) else None
        torch.manual_seed(d.seed + index)
        with (deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None) if gather
              else contextlib.nullcontext()):
            if batch:
                texts = generate_texts(model, tok, [prompts[i] for i in batch], d.sampling, synced_gpus=not gather)
            elif not gather:  # a stand-in prompt keeps this rank in every per-layer gather
                generate_texts(model, tok, [[tok.eos_token_id]], d.sampling, synced_gpus=True)
        if batch:
            append_jsonl(layout.rewrites_part(rank), _records(dict(zip(batch, texts)), prompts, "hf", units))
            maybe_kill("distill_batch")
        if index + 1 < calls:  # every rank makes every call: they agree after each whether to stop
            signalled = runtime.any_rank(stop.requested() is not None, next(model.parameters()).device)
            _stop_if_asked(stop.requested() or ("a signal to another rank" if signalled else None), layout, rank)
