"""Retention: how far the tuned model drifted from the seed on general prompts.

The seed answers each general prompt once (greedy). On those (prompt, seed response) sequences:
- ``kl``: mean over response tokens of KL(p_seed || p_model) over the whole vocabulary;
- ``nll``: mean negative log-likelihood of the seed's own response tokens under the model.
For the seed itself ``kl`` is 0 and ``nll`` is its own (low) surprise; a model that forgot its
general behaviour scores higher on both.
"""

from __future__ import annotations

from pathlib import Path

import torch

from sdft.data.examples import Example, load_examples
from sdft.data.tokenize import TokenizedSet, collate, tokenize_rows
from sdft.eval.evaluators.base import EvalContext, Evaluator, Metric, general_template
from sdft.utils.io import read_jsonl, write_jsonl


@torch.no_grad()
def retention_metrics(model, seed_model, data: TokenizedSet, pad_id: int, batch_size: int = 4) -> dict:
    """Mean per-token KL(seed || model) and NLL of the labelled (response) tokens of ``data``, and the
    standard error of each mean over the examples (``kl_se``, ``nll_se``; the token-weighted mean is a
    ratio estimator, so se = sqrt(sum_i n_i^2 (m_i - M)^2 * k / (k - 1)) / sum_i n_i over k examples).

    ``seed_model`` may be ``model`` itself (then kl is 0). Sums are in float64 so the means do not
    depend on batch size.
    """
    device = next(model.parameters()).device
    kl_ex = torch.zeros(len(data), dtype=torch.float64)
    nll_ex = torch.zeros(len(data), dtype=torch.float64)
    tokens_ex = torch.zeros(len(data), dtype=torch.float64)
    for start in range(0, len(data), batch_size):
        rows = list(range(start, min(start + batch_size, len(data))))
        b = collate(data, rows, pad_id)
        b = {k: v.to(device) for k, v in b.items()}
        labels = b["labels"][:, 1:]
        keep = labels != -100                                   # [B, T-1] response positions
        example = torch.tensor(rows)[keep.nonzero()[:, 0].cpu()]  # [N] example index of each token
        logp = torch.log_softmax(model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits[:, :-1].float(), -1)
        logp = logp[keep]                                       # [N, V]
        target = labels[keep]                                   # [N]
        nll_ex.index_add_(0, example, -logp.gather(1, target[:, None])[:, 0].double().cpu())
        if seed_model is model:
            seed_logp = logp
        else:
            seed_out = seed_model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
            seed_logp = torch.log_softmax(seed_out[:, :-1].float(), -1)[keep]
        kl_ex.index_add_(0, example, (seed_logp.exp() * (seed_logp - logp)).sum(-1).double().cpu())
        tokens_ex.index_add_(0, example, torch.ones(len(example), dtype=torch.float64))
    n = float(tokens_ex.sum())
    kl, nll = float(kl_ex.sum()) / max(n, 1), float(nll_ex.sum()) / max(n, 1)
    return {"kl": kl, "nll": nll, "tokens": int(n),
            "kl_se": _ratio_se(kl_ex, tokens_ex, kl), "nll_se": _ratio_se(nll_ex, tokens_ex, nll)}


def _ratio_se(sums: torch.Tensor, counts: torch.Tensor, mean: float) -> float:
    k = int((counts > 0).sum())
    if k < 2:
        return 0.0
    resid = sums - counts * mean  # n_i (m_i - M)
    return float(torch.sqrt((resid ** 2).sum() * k / (k - 1)) / counts.sum())


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
        prompts = load_examples(cfg.data.general_prompts, cfg.data, limit=cfg.eval.limit, response_required=False)[0]
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
