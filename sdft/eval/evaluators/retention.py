"""Retention: how far the tuned model drifted from the seed on general prompts.

The seed answers each general prompt once (greedy). On those (prompt, seed response) sequences:
- ``kl``: mean over response tokens of KL(p_seed || p_model) over the whole vocabulary;
- ``nll``: mean negative log-likelihood of the seed's own response tokens under the model.
For the seed itself ``kl`` is 0 and ``nll`` is its own (low) surprise; a model that forgot its
general behaviour scores higher on both.
"""

from __future__ import annotations

from pathlib import Path

from sdft.data.examples import Example
from sdft.data.scoring import retention_metrics
from sdft.data.tokenize import tokenize_rows
from sdft.eval.evaluators.base import EvalContext, Evaluator, Metric, general_template
from sdft.utils.io import read_jsonl, write_jsonl


def seed_responses(ctx: EvalContext, prompts: list[Example], cache: Path) -> list[dict]:
    """The seed's greedy answers to the general prompts, cached (keyed by settings) in ``cache``."""
    cfg = ctx.cfg
    length = {"max_new_tokens": cfg.eval.retention_max_new_tokens, "do_sample": False}
    template = general_template(ctx.tok)
    key = {"model": cfg.model.path, **ctx.prompt_key(template), **ctx.generation_key(**length)}
    if cache.exists():
        rows = read_jsonl(cache)
        if rows and rows[0].get("key") == key and [r["id"] for r in rows] == [p.id for p in prompts]:
            return rows
    enc = {p.id: ctx.prompt(template, p.instruction, system=p.system, history=p.history) for p in prompts}
    answers = ctx.generate(ctx.seed_model, enc, 0, desc="seed responses", **length)
    rows = [{**p.to_dict(), "response": answers[p.id], "key": key} for p in prompts]
    write_jsonl(cache, rows)
    return rows


class RetentionEvaluator(Evaluator):
    name = "retention"
    metrics = {"retention_kl": Metric("retention KL(seed ‖ model)", False, se="retention_kl_se"),
               "retention_nll": Metric("NLL of seed responses", False, se="retention_nll_se"),
               "retention_kl_se": Metric("standard error of retention KL", None),
               "retention_nll_se": Metric("standard error of retention NLL", None),
               "retention_tokens": Metric("response tokens", None)}
    version = 2  # 2: standard errors over prompts
    sampled = False  # the seed's responses are greedy and scoring is deterministic

    def prepare(self, ctx: EvalContext) -> None:
        cfg = ctx.cfg
        prompts = ctx.read(cfg.data.general_prompts, cfg.data, limit=cfg.eval.limit, response_required=False)
        self.rows = seed_responses(ctx, prompts, ctx.files.seed_responses)
        # No cutoff: retention is measured on every token of the seed's responses, for every model.
        self.data = tokenize_rows(self.rows, ctx.tok, general_template(ctx.tok), layout=cfg.prompt.layout)

    def key(self, ctx: EvalContext) -> dict:
        return {"data": ctx.cfg.data.general_prompts, "seed_responses": self.rows[0]["key"],
                "prompts": [r["id"] for r in self.rows]}

    def run(self, model, model_name: str, ctx: EvalContext, seed: int) -> dict[str, float]:
        r = retention_metrics(model, ctx.seed_model, self.data, ctx.tok.pad_token_id, ctx.cfg.eval.batch_size)
        return {"retention_kl": r["kl"], "retention_nll": r["nll"], "retention_tokens": r["tokens"],
                "retention_kl_se": r["kl_se"], "retention_nll_se": r["nll_se"]}
