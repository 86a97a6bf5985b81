"""Cutting an over-long example to ``cutoff`` tokens and keeping it, as the authors' preprocessing does.

An example is a list of ``(prompt part, answer part)`` pairs, one per assistant turn. Two rules, one
per LLaMA-Factory version the authors ran:

- ``proportional`` (the reproduce branch, the paper's Llama-2 runs; sdft's rule for every other
  layout): each pair is cut on its own, its answer to ``max(int(cutoff * a / (p + a)), 1)`` tokens and
  its prompt to what is left of ``cutoff`` (a pair that fits is untouched), keeping the first tokens of
  each; then the whole sequence is cut to ``cutoff``. A generation prompt is cut to its first ``cutoff``
  tokens.
- ``budget`` (the authors' later LLaMA-Factory, their Llama-3 runs): pairs in order share what is left
  of ``cutoff``: the same proportional split within the remaining budget, the prompt part getting
  ``budget - min(answer share, answer length)``; once the budget is spent, later pairs are dropped. A
  generation prompt is cut the same way, its last pair's answer part being the reference answer.
"""

from __future__ import annotations

Pair = tuple[list[int], list[int]]


def _split(source: int, target: int, budget: int) -> tuple[int, int]:
    """(most prompt tokens, most answer tokens) of a pair within ``budget``."""
    max_target = max(int(budget * (target / (source + target))), 1) if source + target else 1
    return budget - max_target, max_target


def fit_pairs(pairs: list[Pair], cutoff: int, rule: str) -> tuple[list[Pair], bool]:
    """``pairs`` cut to ``cutoff`` tokens in all; returns (pairs, whether anything was cut)."""
    if sum(len(s) + len(t) for s, t in pairs) <= cutoff:
        return pairs, False
    out: list[Pair] = []
    if rule == "budget":
        used = 0
        for source, target in pairs:
            if used >= cutoff:
                break
            budget = cutoff - used
            max_target = _split(len(source), len(target), budget)[1]
            source, target = source[:budget - min(max_target, len(target))], target[:max_target]
            used += len(source) + len(target)
            out.append((source, target))
        return out, True
    room = cutoff
    for source, target in pairs:
        max_source, max_target = _split(len(source), len(target), cutoff)
        source, target = source[:max_source], target[:max_target]
        take_s = min(len(source), room)
        take_t = min(len(target), room - take_s)
        room -= take_s + take_t
        out.append((source[:take_s], target[:take_t]))
    return out, True


def fit_prompt(history: list[Pair], prompt: list[int], target: list[int], cutoff: int,
               rule: str) -> tuple[list[int], bool]:
    """A generation prompt (``history`` pairs, then the last ``prompt`` part) within ``cutoff``; ``target``
    is the answer it is generated for where known (the reference, when distilling), which the ``budget``
    rule weighs. Returns (ids, whether anything was cut)."""
    pairs = [*history, (prompt, target)]
    if rule == "budget":  # as the authors' encode_oneturn: every fitted pair whole, the last one's prompt part
        fitted, cut = fit_pairs(pairs, cutoff, rule)
        return [t for s, a in fitted[:-1] for t in s + a] + fitted[-1][0], cut
    ids = [t for s, a in history for t in s + a] + prompt
    return ids[:cutoff], len(ids) > cutoff
