"""Packing a global batch: its examples concatenated into full rows, the rows dealt to micro-batches.

A step still consumes exactly the examples of its global batch (``global_batch_order``) and the loss
is still normalised by their response tokens, so packing changes where tokens sit, not the update:
a packed run follows the padded run's loss curve (up to float rounding; dropout draws differ).

The global batch is packed into rows of at most ``train.cutoff_len`` tokens (``best_fit_decreasing``),
and the rows are dealt to the ``grad_accum x world`` micro-batches of the step, longest row first to the
micro-batch with the fewest tokens. Micro-batch ``a * world + r`` runs on rank ``r`` at micro-step ``a``,
as in the padded layout. With fewer rows than micro-batches, the
spare ones are empty (a DeepSpeed rank then runs a masked stand-in, see ``backends``), so packing pays when a
global batch holds many examples per micro-batch slot.

Attention: a [R, 1, L, L] block-diagonal causal mask (sdpa or eager attention) keeps every example
to itself; ``packing_blocker`` refuses the architectures and attention kernels where that is not
tested to hold (a test compares packed and one-by-one losses and gradients per architecture).

Rows: ``best_fit_decreasing`` assigns examples to rows of at most ``capacity`` tokens (longest
first, each into the fullest row it still fits, ties to the earliest row), deterministically. ``pack``
builds the batch: examples concatenated per row, ``position_ids`` restarting at 0 for each example, the
first token of every example unlabelled (so no example predicts from its neighbour), a block-diagonal
causal ``attention_mask`` ([R, 1, L, L] bool, which sdpa and eager attention take as is), and
``cu_seqlens`` for flash-attention's varlen kernels (which need no mask). Restarting ``position_ids``
alone are not enough: with sdpa, transformers 5.24 lets every token attend to the earlier examples of
its row (measured: logits off by 0.49 on the tiny model).
"""

from __future__ import annotations

import bisect
import heapq

import torch

from sdft.data.tokenize import TokenizedSet
from sdft.models.loading import mask_blocker

# Architectures whose attention takes the 4D block mask as given (tests/train/test_loss.py).
PACKABLE_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")


def packing_blocker(model) -> str | None:
    """Why packing is not safe for ``model`` (a transformers or peft model), or None."""
    return mask_blocker(model, PACKABLE_MODEL_TYPES, "the block-diagonal mask")


def best_fit_decreasing(lengths: list[int], capacity: int) -> list[list[int]]:
    """Indices of ``lengths`` grouped into rows of total length <= ``capacity``.

    Rows come out in creation order and each row lists its examples in the order they were placed.
    """
    too_long = [i for i, n in enumerate(lengths) if n > capacity]
    if too_long:
        raise ValueError(f"example {too_long[0]} is {lengths[too_long[0]]} tokens, longer than the pack "
                         f"length {capacity}")
    rows: list[list[int]] = []
    free: list[tuple[int, int]] = []  # sorted (space left, row index)
    for i in sorted(range(len(lengths)), key=lambda k: (-lengths[k], k)):
        pos = bisect.bisect_left(free, (lengths[i], -1))
        if pos < len(free):
            space, row = free.pop(pos)
            rows[row].append(i)
            bisect.insort(free, (space - lengths[i], row))
        else:
            rows.append([i])
            bisect.insort(free, (capacity - lengths[i], len(rows) - 1))
    return rows


def pack(input_ids: list[list[int]], labels: list[list[int]], rows: list[list[int]], pad_id: int,
         ignore_index: int = -100) -> dict[str, torch.Tensor]:
    """The packed batch of ``rows`` (lists of example indices).

    Returns ``input_ids``, ``labels``, ``position_ids`` (each [R, L], L the longest row, right-padded;
    padding has label ``ignore_index``), ``attention_mask`` ([R, 1, L, L] bool: token t sees token
    s <= t of its own example only; padding sees padding), ``cu_seqlens`` ([n_examples + 1] int32: example boundaries in the
    concatenation of all real tokens, row by row, the layout of flash-attention's varlen kernels) and
    ``n_tokens`` (real tokens, for packing efficiency: n_tokens / (R * L)).
    """
    width = max(sum(len(input_ids[i]) for i in row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    lab = torch.full((len(rows), width), ignore_index, dtype=torch.long)
    pos = torch.zeros((len(rows), width), dtype=torch.long)
    segment = torch.full((len(rows), width), -1, dtype=torch.long)  # -1: padding, a segment of its own
    cu = [0]
    for r, row in enumerate(rows):
        at = 0
        for k, i in enumerate(row):
            n = len(input_ids[i])
            ids[r, at:at + n] = torch.tensor(input_ids[i])
            lab[r, at:at + n] = torch.tensor(labels[i])
            lab[r, at] = ignore_index  # never predicted from the previous example's last token
            pos[r, at:at + n] = torch.arange(n)
            segment[r, at:at + n] = k
            cu.append(cu[-1] + n)
            at += n
        pos[r, at:] = torch.arange(width - at) + (pos[r, at - 1] + 1 if at else 0)
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    mask = (segment[:, :, None] == segment[:, None, :]) & causal  # [R, L, L]
    return {"input_ids": ids, "labels": lab, "position_ids": pos, "attention_mask": mask[:, None],
            "cu_seqlens": torch.tensor(cu, dtype=torch.int32), "n_tokens": cu[-1]}


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
