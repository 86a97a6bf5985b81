import copy
import math

import torch

from sdft.data.tokenize import tokenize_rows
from sdft.eval.evaluators.retention import retention_metrics
from sdft.models.loading import load_model
from tests.numerics import budget

ROWS = [{"id": "a", "instruction": "Say hi.", "response": "Hi there!"},
        {"id": "b", "instruction": "Name a colour, please.", "response": "Blue."},
        {"id": "c", "instruction": "Count.", "response": "One two three."}]


def _reference(model, seed_model, data):
    """Per-token float64 KL(seed || model) and NLL, one example at a time, no padding; and the
    standard error of each token-weighted mean from the per-example means (ratio estimator)."""
    per_example = []  # (kl sum, nll sum, tokens)
    for ids, labels in zip(data.input_ids, data.labels):
        x = torch.tensor([ids])
        lp = torch.log_softmax(model(x).logits[0, :-1].double(), -1)
        ls = torch.log_softmax(seed_model(x).logits[0, :-1].double(), -1)
        kl = nll = 0.0
        n = 0
        for t, y in enumerate(labels[1:]):
            if y != -100:
                kl += float((ls[t].exp() * (ls[t] - lp[t])).sum())
                nll -= float(lp[t, y])
                n += 1
        per_example.append((kl, nll, n))
    n = sum(e[2] for e in per_example)
    kl, nll = sum(e[0] for e in per_example) / n, sum(e[1] for e in per_example) / n
    k = len(per_example)

    def se(i, mean):
        return math.sqrt(sum((e[i] - e[2] * mean) ** 2 for e in per_example) * k / (k - 1)) / n

    return kl, nll, n, se(0, kl), se(1, nll)


@torch.no_grad()
def test_kl_and_nll_match_a_float64_reference(tiny_model_dir, tiny_tok):
    seed = load_model(str(tiny_model_dir), "float32", torch.device("cpu"))
    other = copy.deepcopy(seed)
    torch.manual_seed(1)
    for p in other.parameters():
        p.add_(0.05 * torch.randn_like(p))
    data = tokenize_rows(ROWS, tiny_tok, "chat")
    got = retention_metrics(other, seed, data, tiny_tok.pad_token_id, batch_size=2)  # padding in play
    kl, nll, n, kl_se, nll_se = _reference(other, seed, data)
    assert got["tokens"] == n
    # Every figure is computed from float32 log-probabilities of size ~NLL: one float32 budget of that scale.
    tol = budget(torch.float32, nll)
    assert abs(got["kl"] - kl) <= tol and got["kl"] > 10 * tol
    assert abs(got["nll"] - nll) <= tol
    assert abs(got["kl_se"] - kl_se) <= tol and got["kl_se"] > 10 * tol
    assert abs(got["nll_se"] - nll_se) <= tol and got["nll_se"] > 10 * tol
    same = retention_metrics(seed, seed, data, tiny_tok.pad_token_id)
    assert same["kl"] == 0.0 and abs(same["nll"] - _reference(seed, seed, data)[1]) <= tol
