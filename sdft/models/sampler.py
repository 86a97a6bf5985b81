"""Per-example sampling: the token drawn for an example depends only on (seed, example id, step) and its
logits, never on which other examples share the batch, the slot order, the world size or a resume.

The filters are transformers' (temperature, then top-k, then top-p, the order ``generate`` applies
them), and the draw is the Gumbel-max trick: ``argmax(logits / T + g)`` over the tokens the filters keep,
with ``g = -log(-log(u))``, is a sample of ``softmax(logits / T)`` restricted to them. The uniform ``u``
comes from a counter-based hash (splitmix64) of (example key, step, token id) instead of a stateful
generator, so every row of a batch has its own reproducible stream, computed for all rows at once.
"""

from __future__ import annotations

import hashlib

import torch

from sdft.config.schema import SamplingConfig

# splitmix64's constants, as signed int64 (torch has no uint64 arithmetic).
_GOLDEN = -7046029254386353131      # 0x9E3779B97F4A7C15
_MIX1 = -4658895280553007687        # 0xBF58476D1CE4E5B9
_MIX2 = -7723592293110705685        # 0x94D049BB133111EB
_TOKEN = 0x632BE59BD9B4E019


def example_key(seed: int, example_id: str) -> int:
    """A 63-bit key for an example's random stream, from the run's seed and the example's id."""
    digest = hashlib.sha256(f"{seed}\0{example_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def _shr(z: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical right shift of int64 (``>>`` is arithmetic in torch)."""
    return (z >> bits) & ((1 << (64 - bits)) - 1)


def _mix(z: torch.Tensor) -> torch.Tensor:
    z = (z ^ _shr(z, 30)) * _MIX1
    z = (z ^ _shr(z, 27)) * _MIX2
    return z ^ _shr(z, 31)


def uniform(keys: torch.Tensor, steps: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Uniforms in (0, 1), float64, one per (row, candidate).

    Args:
        keys: [B] int64 example keys.
        steps: [B] int64 index of the token being drawn (0 for the first new token).
        tokens: [B, K] int64 candidate token ids.
    Returns:
        [B, K] float64.
    """
    z = _mix(keys[:, None] + (steps[:, None] + 1) * _GOLDEN) + tokens * _TOKEN
    return (_shr(_mix(z), 11).double() + 0.5) / float(2**53)


def filtered_candidates(logits: torch.Tensor, s: SamplingConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """The tokens temperature, top-k and top-p keep, as transformers' warpers would.

    Args:
        logits: [B, V] float.
    Returns:
        (scores [B, K] float32: the tempered logits, -inf where top-p removed the token;
         tokens [B, K] int64), K = min(top_k, V) (V when top_k is 0), sorted by score, highest first
         (in vocabulary order when nothing is filtered: top_k 0 and top_p 1).
    """
    scores = logits.float() / s.temperature
    k = min(s.top_k, scores.shape[-1]) if s.top_k > 0 else scores.shape[-1]
    if k == scores.shape[-1] and s.top_p >= 1.0:  # nothing is filtered: no sort of the whole vocabulary
        return scores, torch.arange(k, device=scores.device).expand_as(scores)
    top, tokens = torch.topk(scores, k, dim=-1)                            # [B, K] descending
    if s.top_p < 1.0:
        probs = top.softmax(dim=-1)
        above = probs.cumsum(dim=-1) - probs                              # mass of the tokens ranked above
        drop = above >= s.top_p
        drop[:, 0] = False                                                # transformers keeps at least one
        top = top.masked_fill(drop, float("-inf"))
    return top, tokens


def next_tokens(logits: torch.Tensor, s: SamplingConfig, keys: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
    """One token per row: greedy, or drawn from the row's own stream.

    Args:
        logits: [B, V] last-position logits.
        keys: [B] int64 example keys (``example_key``); steps: [B] int64 token index.
    Returns:
        [B] int64 token ids.
    """
    if not s.do_sample:
        return logits.argmax(dim=-1)
    scores, tokens = filtered_candidates(logits, s)
    gumbel = -torch.log(-torch.log(uniform(keys.to(tokens.device), steps.to(tokens.device), tokens)))
    choice = (scores.double() + gumbel).argmax(dim=-1)
    return tokens.gather(1, choice[:, None])[:, 0]
