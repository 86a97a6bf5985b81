"""Packing a global batch: its examples concatenated into full rows, the rows dealt to micro-batches.

A step still consumes exactly the examples of its global batch (``global_batch_order``) and the loss
is still normalised by their response tokens, so packing changes where tokens sit, not the update:
a packed run follows the padded run's loss curve (up to float rounding; dropout draws differ).

The global batch is packed into rows of at most ``train.cutoff_len`` tokens (best-fit-decreasing,
``sdft_kernels.packing``), and the rows are dealt to the ``grad_accum x world`` micro-batches of the
step, longest row first to the micro-batch with the fewest tokens. Micro-batch ``a * world + r`` runs
on rank ``r`` at micro-step ``a``, as in the padded layout. With fewer rows than micro-batches, the
spare ones are empty (a rank then runs a masked stand-in, see the recipe), so packing pays when a
global batch holds many examples per micro-batch slot.

Attention: a [R, 1, L, L] block-diagonal causal mask (sdpa or eager attention) keeps every example
to itself; ``packing_blocker`` refuses the architectures and attention kernels where that is not
tested to hold (a test compares packed and one-by-one losses and gradients per architecture).
"""

from __future__ import annotations

import heapq

import torch

from sdft.train.data import TokenizedSet
from sdft.train.loss import causal_lm
from sdft_kernels.packing import best_fit_decreasing, pack

# Architectures whose attention takes the 4D block mask as given (tests/train/test_loss.py).
PACKABLE_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")
PACKABLE_ATTENTION = ("sdpa", "eager")


def packing_blocker(model) -> str | None:
    """Why packing is not safe for ``model`` (a transformers or peft model), or None."""
    cfg = causal_lm(model).config
    if cfg.model_type not in PACKABLE_MODEL_TYPES:
        return f"model_type {cfg.model_type!r} is not among the tested {', '.join(PACKABLE_MODEL_TYPES)}"
    attn = getattr(cfg, "_attn_implementation", None) or "eager"
    if attn not in PACKABLE_ATTENTION:
        return f"attention {attn!r} does not take the block-diagonal mask (use sdpa or eager)"
    window = getattr(cfg, "sliding_window", None)
    if window and getattr(cfg, "use_sliding_window", True):
        return f"sliding-window attention (sliding_window={window})"
    return None


def plan_packed_step(lengths: list[int], batch_ids: list[int], n_micro: int, capacity: int) -> list[list[list[int]]]:
    """The rows of each micro-batch of one step.

    Args:
        lengths: token count of every example of the data set.
        batch_ids: the step's examples (indices into ``lengths``), in global-batch order.
        n_micro: micro-batches in the step (grad_accum x world).
        capacity: tokens per row (train.cutoff_len).
    Returns:
        ``n_micro`` lists of rows; a row is a list of example indices; a list may be empty.
    """
    rows = [[batch_ids[k] for k in row] for row in best_fit_decreasing([lengths[i] for i in batch_ids], capacity)]
    size = [sum(lengths[i] for i in row) for row in rows]
    plan: list[list[list[int]]] = [[] for _ in range(n_micro)]
    heap = [(0, m) for m in range(n_micro)]  # (tokens so far, micro-batch): ties go to the lowest index
    for j in sorted(range(len(rows)), key=lambda j: (-size[j], j)):
        tokens, m = heapq.heappop(heap)
        plan[m].append(rows[j])
        heapq.heappush(heap, (tokens + size[j], m))
    return plan


def collate_packed(data: TokenizedSet, rows: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """``input_ids``, ``labels``, ``position_ids`` [R, L] and ``attention_mask`` [R, 1, L, L] of the rows."""
    b = pack(data.input_ids, data.labels, rows, pad_id)
    return {k: b[k] for k in ("input_ids", "labels", "position_ids", "attention_mask")}


def step_token_slots(lengths: list[int], batch_ids: list[int], n_micro: int, micro_batch_size: int,
                     plan: list[list[list[int]]] | None) -> tuple[int, int, int]:
    """(real tokens, token slots as run, token slots padded batches would use) of one step, over all
    ranks: a slot is one position of a [rows, width] micro-batch. The same on every rank."""
    real = sum(lengths[i] for i in batch_ids)
    padded = 0
    for m in range(n_micro):
        mine = batch_ids[m * micro_batch_size:(m + 1) * micro_batch_size]
        padded += len(mine) * max((lengths[i] for i in mine), default=0)
    if plan is None:
        return real, padded, padded
    packed = sum(len(rows) * max(sum(lengths[i] for i in row) for row in rows) for rows in plan if rows)
    return real, packed, padded
