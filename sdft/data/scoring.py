"""Scoring the response tokens of tokenized rows under a model: their NLL, and their KL to a reference
model, with standard errors over the rows. Retention evaluation scores the seed's answers under every
model; the filter stage scores the training answers under the seed (the distribution gap)."""

from __future__ import annotations

import torch

from sdft.data.tokenize import TokenizedSet, collate


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
