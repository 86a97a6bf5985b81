"""Step 2: join rewrites to their examples by id, gate them, fall back to the original answer.

Stage entries: ``run_filter(ctx)`` (the SDFT arm) and ``keep_originals(ctx)`` (``sdft compare``'s
vanilla arm: no rewrites, every original answer kept, so training sees the task data as it is).

The output (``filter/train.jsonl``) has exactly one row per input example (the data set never
shrinks), with provenance: ``{id, instruction, system, response, original, rewrite, kept, reason,
detail}``; ``response`` is what training uses. ``reason`` is ``accepted``, ``rejected:<gate>``,
``no_rewrite`` or the distill skip reason (``prompt_too_long``); ``stats.json`` counts them.

A multi-turn conversation is one row too: each rewritten assistant turn is gated on its own, against its
own reference, and falls back to its original alone. The row's ``history`` holds the earlier turns as
training sees them, ``turns`` the provenance of every gated turn (``{turn, original, rewrite, kept,
reason, detail}``), and the top-level fields describe the last turn as for a single-turn example.
"""

from __future__ import annotations

import logging
from collections import Counter

from sdft.context import RunContext
from sdft.data.examples import Example, RewriteUnit, record_key, rewrite_units
from sdft.data.scoring import retention_metrics
from sdft.data.tokenize import tokenize_rows
from sdft.errors import StageError
from sdft.gates import resolve_gate, run_gate
from sdft.models.run_models import load_seed
from sdft.utils.io import atomic_write_json, read_jsonl, write_jsonl

log = logging.getLogger(__name__)


def run_filter(ctx: RunContext) -> dict:
    """The filter stage (rank 0): gate every rewrite of the distill stage; with ``filter.measure_gap``, also
    the seed's NLL of the training answers before and after."""
    rewrites = {record_key(r): r for r in read_jsonl(ctx.layout.rewrites)}
    examples = ctx.train_examples()[0]
    rows, stats = filter_rewrites(examples, rewrites, ctx.cfg.filter.gates, ctx.cfg.distill.turns)
    if ctx.cfg.filter.measure_gap:
        stats["gap"] = distribution_gap(ctx, [ex.to_dict() for ex in examples], rows)
        log.info("filter: the seed's NLL of the training answers: %.4f original -> %.4f after the filter",
                 stats["gap"]["original_nll"], stats["gap"]["filtered_nll"])
    return _write(ctx, rows, stats)


def distribution_gap(ctx: RunContext, original: list[dict], filtered: list[dict]) -> dict:
    """The gap SDFT closes: the seed's mean NLL per answer token of the original training answers and of
    those after the filter, each tokenized as training tokenizes it (``train.template``, its cutoff and
    loss turns), with the standard error over examples."""
    cfg, t = ctx.cfg, ctx.cfg.train
    model = load_seed(cfg, ctx.device, cfg.model.dtype)
    out = {}
    for name, rows in (("original", original), ("filtered", filtered)):
        data = tokenize_rows(rows, ctx.tok, t.template, t.cutoff_len, "skip" if t.overlength == "error" else t.overlength,
                             t.loss_turns, cfg.prompt.layout)
        r = retention_metrics(model, model, data, ctx.tok.pad_token_id, cfg.eval.batch_size)
        out.update({f"{name}_nll": r["nll"], f"{name}_nll_se": r["nll_se"], f"{name}_tokens": r["tokens"]})
    return out


def keep_originals(ctx: RunContext) -> dict:
    """The vanilla arm's filter stage: every example keeps its original answer."""
    return _write(ctx, *filter_rewrites(ctx.train_examples()[0], {}, []))


def _write(ctx: RunContext, rows: list[dict], stats: dict) -> dict:
    write_jsonl(ctx.layout.filtered, rows)
    atomic_write_json(ctx.layout.filter_stats, stats)
    log.info("filter: %d/%d rewrites kept (%.1f%%), %d fell back to the original; reasons %s",
             stats["accepted"], stats["total"], 100 * stats["accepted_rate"], stats["fallback"], stats["reasons"])
    return stats


def filter_rewrites(examples: list[Example], rewrites: dict[str, dict], gate_names: list[str],
                    turns: str = "all") -> tuple[list[dict], dict]:
    """Gate each rewritten answer (joined by unit key: the id, or id and turn). Returns (rows, stats).

    ``rewrites`` maps a unit key -> a distill record ({"rewrite": str | None, "skipped": reason?}).
    Every example yields a row; an answer without a usable rewrite keeps its original. ``stats`` counts
    answers (one per example for single-turn data).
    """
    gates = [(name, resolve_gate(name)) for name in gate_names]
    units = rewrite_units(examples, turns)
    unknown = sorted(set(rewrites) - {u.key for u in units})
    if unknown:
        raise StageError(f"{len(unknown)} rewrite(s) have ids not in the training data (e.g. {unknown[0]!r}): "
                         "the distill output belongs to another data set, or distill.turns changed; delete it or "
                         "use another output_dir")
    by_example: dict[str, list[dict]] = {}
    reasons: Counter[str] = Counter()
    for u in units:
        verdict = _gate(u, rewrites.get(u.key), gates)
        reasons[verdict["reason"]] += 1
        by_example.setdefault(u.id, []).append(verdict)
    rows = [_row(ex, by_example[ex.id]) for ex in examples]
    accepted, total = reasons.get("accepted", 0), len(units)
    stats = {"total": total, "accepted": accepted, "fallback": total - accepted,
             "accepted_rate": accepted / total if total else 0.0, "gates": gate_names,
             "reasons": dict(reasons.most_common())}
    if total != len(rows):
        stats["examples"] = len(rows)
    return rows, stats


def _gate(u: RewriteUnit, rec: dict | None, gates) -> dict:
    """One answer's verdict: ``{turn, original, rewrite, kept, reason, detail, response}``."""
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
            res = run_gate(gate, name, rewrite, u.reference.strip())
            if not res.passed:
                kept, reason, detail = False, f"rejected:{name}", res.detail
                break
    return {"turn": u.turn, "original": u.reference, "rewrite": rewrite, "kept": kept, "reason": reason,
            "detail": detail, "response": rewrite if kept else u.reference}


def _row(ex: Example, verdicts: list[dict]) -> dict:
    """The training row of an example: its last answer's verdict at the top level; for a conversation,
    the earlier turns with their kept answers and every gated turn's provenance."""
    last = {k: v for k, v in verdicts[-1].items() if k != "turn"}
    row = {**ex.to_dict(), **last}
    if ex.history:
        answers = {v["turn"]: v["response"] for v in verdicts}
        row["history"] = [[user, answers.get(k, answer)] for k, (user, answer) in enumerate(ex.history)]
        row["turns"] = [{k: v for k, v in verdict.items() if k != "response"} for verdict in verdicts]
    return row
