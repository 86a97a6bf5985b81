"""Per-example sampling: transformers' filters, a correct distribution, and streams that belong to the
example alone."""

import math

import pytest
import torch
from transformers.generation.logits_process import (
    LogitsProcessorList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from sdft.config.schema import SamplingConfig
from sdft.models.sampler import example_key, filtered_candidates, next_tokens, uniform


@pytest.mark.parametrize("temperature, top_k, top_p", [(0.95, 50, 0.7), (1.0, 0, 0.9), (0.5, 7, 1.0), (1.7, 0, 1.0)])
def test_filters_keep_what_transformers_keeps(temperature, top_k, top_p):
    torch.manual_seed(0)
    logits = torch.randn(16, 301) * 3
    warpers = LogitsProcessorList([TemperatureLogitsWarper(temperature)] + ([TopKLogitsWarper(top_k)] if top_k else [])
                                  + ([TopPLogitsWarper(top_p)] if top_p < 1 else []))
    want = torch.isfinite(warpers(None, logits.clone()))
    scores, tokens = filtered_candidates(logits, SamplingConfig(temperature=temperature, top_k=top_k, top_p=top_p))
    got = torch.zeros_like(want)
    got.scatter_(1, tokens, torch.isfinite(scores))
    assert torch.equal(got, want)


def test_draws_follow_the_filtered_distribution():
    """Each of 40,000 rows draws once from the same logits with its own key: the frequencies are the
    filtered softmax within 4 binomial standard deviations, and filtered tokens are never drawn."""
    s = SamplingConfig(temperature=0.8, top_k=4, top_p=0.95)
    logits = torch.tensor([[2.0, 1.5, 1.0, 0.2, -1.0, 3.0]]).repeat(40_000, 1)
    keys = torch.tensor([example_key(3, f"ex{i}") for i in range(40_000)])
    drawn = next_tokens(logits, s, keys, torch.zeros(40_000, dtype=torch.long))
    scores, tokens = filtered_candidates(logits[:1], s)
    probs = torch.zeros(6, dtype=torch.float64)
    probs[tokens[0]] = torch.softmax(scores[0].double(), -1)
    counts = torch.bincount(drawn, minlength=6).double()
    n = counts.sum()
    for p, c in zip(probs.tolist(), counts.tolist()):
        assert abs(c - n * p) <= 4 * math.sqrt(n * p * (1 - p)) + 1e-9, (p, c / n)
    assert counts[probs == 0].sum() == 0


def test_streams_depend_on_key_step_and_token_only():
    keys = torch.tensor([example_key(1, "a"), example_key(1, "b"), example_key(2, "a")])
    steps = torch.tensor([0, 0, 0])
    tokens = torch.arange(1000).repeat(3, 1)
    u = uniform(keys, steps, tokens)
    assert ((u > 0) & (u < 1)).all() and abs(float(u.mean()) - 0.5) < 0.02
    alone = uniform(keys[1:2], steps[1:2], tokens[1:2])
    assert torch.equal(alone[0], u[1])  # a row's numbers do not depend on the other rows
    assert not torch.equal(u[0], u[1]) and not torch.equal(u[0], u[2])
    assert not torch.equal(uniform(keys[:1], torch.tensor([1]), tokens[:1])[0], u[0])  # nor repeat across steps
