import copy

import pytest
import torch

from sdft.eval.retention import retention_metrics
from sdft.models.loading import load_model
from sdft.train.data import tokenize_rows

ROWS = [{"id": "a", "instruction": "Say hi.", "response": "Hi there!"},
        {"id": "b", "instruction": "Name a colour, please.", "response": "Blue."},
        {"id": "c", "instruction": "Count.", "response": "One two three."}]


def _reference(model, seed_model, data):
    """Per-token float64 KL(seed || model) and NLL, one example at a time, no padding."""
    kl = nll = 0.0
    n = 0
    for ids, labels in zip(data.input_ids, data.labels):
        x = torch.tensor([ids])
        lp = torch.log_softmax(model(x).logits[0, :-1].double(), -1)
        ls = torch.log_softmax(seed_model(x).logits[0, :-1].double(), -1)
        for t, y in enumerate(labels[1:]):
            if y != -100:
                kl += float((ls[t].exp() * (ls[t] - lp[t])).sum())
                nll -= float(lp[t, y])
                n += 1
    return kl / n, nll / n, n


@torch.no_grad()
def test_kl_and_nll_match_a_float64_reference(tiny_model_dir, tiny_tok):
    seed = load_model(str(tiny_model_dir), "float32", torch.device("cpu"))
    other = copy.deepcopy(seed)
    torch.manual_seed(1)
    for p in other.parameters():
        p.add_(0.05 * torch.randn_like(p))
    data = tokenize_rows(ROWS, tiny_tok, "chat", cutoff_len=10**6, overlength="skip")
    got = retention_metrics(other, seed, data, tiny_tok.pad_token_id, batch_size=2)  # padding in play
    kl, nll, n = _reference(other, seed, data)
    assert got["tokens"] == n
    assert got["kl"] == pytest.approx(kl, rel=1e-4) and got["kl"] > 0
    assert got["nll"] == pytest.approx(nll, rel=1e-5)
    same = retention_metrics(seed, seed, data, tiny_tok.pad_token_id)
    assert same["kl"] == 0.0 and same["nll"] == pytest.approx(_reference(seed, seed, data)[1], rel=1e-5)
