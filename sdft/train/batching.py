"""Which examples each optimizer step takes, and what a step's token slots held.

One optimizer step consumes a *global batch* of ``micro_batch_size x grad_accum x world`` examples,
taken in order from a per-epoch permutation seeded by (seed, epoch): the same on every rank and at
every world size, and a pure function of the step, so a resumed run takes exactly the steps of an
unbroken one. The objective turns a global batch into this rank's micro-batches (``objective``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from sdft.config.schema import TrainConfig


def global_batch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The order in which one epoch visits the ``n`` examples: a permutation seeded by (seed, epoch),
    the same on every rank and at every world size."""
    g = torch.Generator().manual_seed(seed + epoch)
    return torch.randperm(n, generator=g).tolist()


class GlobalBatches:
    """Step -> the example indices of its global batch."""

    def __init__(self, t: TrainConfig, n_examples: int, world: int):
        self.seed, self.n = t.seed, n_examples
        self.size = t.micro_batch_size * t.grad_accum * world
        self.per_epoch = math.ceil(n_examples / self.size)
        self.total_steps = t.max_steps or max(1, math.ceil(t.epochs * self.per_epoch))
        self._order: tuple[int, list[int]] | None = None  # (epoch, permutation), the current epoch's

    def __getitem__(self, step: int) -> list[int]:
        epoch, k = divmod(step, self.per_epoch)
        if self._order is None or self._order[0] != epoch:
            self._order = (epoch, global_batch_order(self.n, self.seed, epoch))
        return self._order[1][k * self.size:(k + 1) * self.size]

    def epoch(self, steps_done: int) -> float:
        return round(steps_done / self.per_epoch, 4)


@dataclass
class TokenSlots:
    """Token accounting over steps, all ranks together: a slot is one position of a [rows, width]
    micro-batch. ``real`` tokens, slots ``run`` as batched, and slots ``padded`` batches would use."""

    real: int = 0
    run: int = 0
    padded: int = 0

    def __add__(self, other: TokenSlots) -> TokenSlots:
        return TokenSlots(self.real + other.real, self.run + other.run, self.padded + other.padded)

    def summary(self) -> dict:
        return {"real": self.real, "run": self.run, "padded": self.padded,
                "efficiency": round(self.real / self.run, 4) if self.run else None,
                "padded_efficiency": round(self.real / self.padded, 4) if self.padded else None}


def step_token_slots(lengths: list[int], batch_ids: list[int], n_micro: int, micro_batch_size: int,
                     plan: list[list[list[int]]] | None) -> TokenSlots:
    """The token slots of one step, over all ranks (the same on every rank). ``plan``: the packed
    rows of each micro-batch (``packing.plan_packed_step``), or None for padded micro-batches."""
    real = sum(lengths[i] for i in batch_ids)
    padded = 0
    for m in range(n_micro):
        mine = batch_ids[m * micro_batch_size:(m + 1) * micro_batch_size]
        padded += len(mine) * max((lengths[i] for i in mine), default=0)
    if plan is None:
        return TokenSlots(real, padded, padded)
    packed = sum(len(rows) * max(sum(lengths[i] for i in row) for row in rows) for rows in plan if rows)
    return TokenSlots(real, packed, padded)
