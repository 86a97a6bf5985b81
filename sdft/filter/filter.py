"""Step 2: join rewrites to their examples by id, gate them, fall back to the original answer.

Stage entries: ``run_filter(ctx)`` (the SDFT arm) and ``keep_originals(ctx)`` (``sdft compare``'s
vanilla arm: no rewrites, every original answer kept, so training sees the task data as it is).

The output (``filter/train.jsonl``) has exactly one row per input example (the data set never
shrinks), with provenance: ``{id, instruction, system, response, original, rewrite, kept, reason,
detail}``; ``response`` is what training uses. ``reason`` is ``accepted``, ``rejected:<gate>``,
``no_rewrite`` or the distill skip reason (``prompt_too_long``); ``stats.json`` counts them.
"""

from __future__ import annotations

import logging
from collections import Counter

from sdft.context import RunContext
from sdft.data.examples import Example
from sdft.errors import StageError
from sdft.gates import resolve_gate, run_gate
from sdft.utils.io import atomic_write_json, read_jsonl, write_jsonl

log = logging.getLogger(__name__)


def run_filter(ctx: RunContext) -> dict:
    """The filter stage (rank 0): gate every rewrite of the distill stage."""
    rewrites = {r["id"]: r for r in read_jsonl(ctx.layout.rewrites)}
    return _write(ctx, *filter_rewrites(ctx.train_examples()[0], rewrites, ctx.cfg.filter.gates))


def keep_originals(ctx: RunContext) -> dict:
    """The vanilla arm's filter stage: every example keeps its original answer."""
    return _write(ctx, *filter_rewrites(ctx.train_examples()[0], {}, []))


def _write(ctx: RunContext, rows: list[dict], stats: dict) -> dict:
    write_jsonl(ctx.layout.filtered, rows)
    atomic_write_json(ctx.layout.filter_stats, stats)
    log.info("filter: %d/%d rewrites kept (%.1f%%), %d fell back to the original; reasons %s",
             stats["accepted"], stats["total"], 100 * stats["accepted_rate"], stats["fallback"], stats["reasons"])
    return stats


def filter_rewrites(examples: list[Example], rewrites: dict[str, dict], gate_names: list[str]) -> tuple[list[dict], dict]:
    """Gate each example's rewrite (joined by id). Returns (rows, stats).

    ``rewrites`` maps id -> a distill record ({"rewrite": str | None, "skipped": reason?}).
    Every example yields a row; one without a usable rewrite keeps its original answer.
    """
    gates = [(name, resolve_gate(name)) for name in gate_names]
    ids = {ex.id for ex in examples}
    unknown = sorted(set(rewrites) - ids)
    if unknown:
        raise StageError(f"{len(unknown)} rewrite(s) have ids not in the training data (e.g. {unknown[0]!r}): "
                         "the distill output belongs to another data set; delete it or use another output_dir")
    rows, reasons = [], Counter()
    for ex in examples:
        rec = rewrites.get(ex.id)
        rewrite = None if rec is None else rec.get("rewrite")
        detail = ""
        if rec is None:
            kept, reason = False, "no_rewrite"
        elif rewrite is None:
            kept, reason = False, (rec.get("skipped") or "no_rewrite").split(" ")[0]
            detail = rec.get("skipped", "")
        else:
            rewrite = rewrite.strip()
            kept, reason = True, "accepted"
            for name, gate in gates:
                res = run_gate(gate, name, rewrite, ex.response.strip())
                if not res.passed:
                    kept, reason, detail = False, f"rejected:{name}", res.detail
                    break
        reasons[reason] += 1
        rows.append({**ex.to_dict(), "response": rewrite if kept else ex.response, "original": ex.response,
                     "rewrite": rewrite, "kept": kept, "reason": reason, "detail": detail})
    accepted = reasons.get("accepted", 0)
    stats = {"total": len(rows), "accepted": accepted, "fallback": len(rows) - accepted,
             "accepted_rate": accepted / len(rows) if rows else 0.0, "gates": gate_names,
             "reasons": dict(reasons.most_common())}
    return rows, stats
