"""Retention: how far the tuned model drifted from the seed on general prompts.

The seed answers each general prompt once (greedy). On those (prompt, seed response) sequences:
- ``kl``: mean over response tokens of KL(p_seed || p_model) over the whole vocabulary;
- ``nll``: mean negative log-likelihood of the seed's own response tokens under the model.
For the seed itself ``kl`` is 0 and ``nll`` is its own (low) surprise; a model that forgot its
general behaviour scores higher on both.
"""

from __future__ import annotations

import torch

from sdft.train.data import TokenizedSet, collate


@torch.no_grad()
def retention_metrics(model, seed_model, data: TokenizedSet, pad_id: int, batch_size: int = 4) -> dict:
    """Mean per-token KL(seed || model) and NLL of the labelled (response) tokens of ``data``.

    ``seed_model`` may be ``model`` itself (then kl is 0). Sums are in float64 so the mean does not
    depend on batch size.
    """
    device = next(model.parameters()).device
    kl_sum = nll_sum = 0.0
    n = 0
    for start in range(0, len(data), batch_size):
        b = collate(data, list(range(start, min(start + batch_size, len(data)))), pad_id)
        b = {k: v.to(device) for k, v in b.items()}
        labels = b["labels"][:, 1:]
        keep = labels != -100                                   # [B, T-1] response positions
        logp = torch.log_softmax(model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits[:, :-1].float(), -1)
        logp = logp[keep]                                       # [N, V]
        target = labels[keep]                                   # [N]
        nll_sum += float(-logp.gather(1, target[:, None]).double().sum())
        if seed_model is model:
            seed_logp = logp
        else:
            seed_out = seed_model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
            seed_logp = torch.log_softmax(seed_out[:, :-1].float(), -1)[keep]
        kl_sum += float((seed_logp.exp() * (seed_logp - logp)).sum(-1).double().sum())
        n += int(keep.sum())
    return {"kl": kl_sum / max(n, 1), "nll": nll_sum / max(n, 1), "tokens": n}
