"""The engine's decode step at fixed shapes, replayed as CUDA graphs (``generation.cuda_graphs``).

A decode step launches hundreds of small kernels per layer; on a GPU at batch 64-256 the launches, not
the math, set its pace. A CUDA graph records the step's kernels once and replays them in one launch,
which needs every shape and address to stay fixed:

    buckets    the busy rows [0, n) are padded to the next bucket (1, 2, 4, ... up to the slot count,
               and the slot count): one graph per bucket, captured the first time it is needed
    width      every step attends the whole cache (``capacity`` positions); the mask hides what is
               not the row's, so the width no longer follows the longest row
    buffers    token ids, position ids, write positions and the mask live in buffers allocated once;
               each step copies its values in, replays, and reads the [bucket, V] logits out
    padding    a padded row is a free slot: it reads and writes only its own last cache position,
               ``capacity - 1``, which no real row reaches (a row's last K/V go to at most the longest
               prompt + max_new_tokens - 2) and which a prefill overwrites before using

Capture runs the step once eagerly on a side stream (the warm-up cuBLAS and the allocator need), then
records it; both write the very K/V the replay writes, so capturing in the middle of a run changes
nothing. ``StaticDecode(capture=False)`` runs the same fixed shapes eagerly: the CPU tests check it
against ``generate``, so only the capture itself needs a GPU to test. A capture that fails (a model
whose forward synchronises with the host, say) is logged and the run goes on with eager steps.
"""

from __future__ import annotations

import logging

import torch

from sdft.models.loading import attention_mask_for

log = logging.getLogger(__name__)


def buckets(slots: int) -> list[int]:
    """Row counts a step is padded to: powers of two below ``slots``, then ``slots``."""
    out, b = [], 1
    while b < slots:
        out.append(b)
        b *= 2
    return [*out, slots]


class StaticDecode:
    """Decode steps for ``engine`` at fixed shapes over ``cache`` and ``rows`` (see the module docstring)."""

    def __init__(self, engine, cache, rows, capture: bool):
        self.engine, self.cache, self.rows = engine, cache, rows
        self.capture = capture
        slots, cap, dev = cache.slots, cache.capacity, engine.device
        self.buckets = buckets(slots)
        self.ids = torch.full((slots, 1), engine.pad, dtype=torch.long, device=dev)
        self.positions = torch.zeros(slots, 1, dtype=torch.long, device=dev)
        self.writes = torch.full((slots,), cap - 1, dtype=torch.long, device=dev)
        self.mask = torch.zeros(slots, 1, 1, cap, dtype=torch.bool, device=dev)
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        # One memory pool for every bucket's graph. Safe in any replay order here: a graph's inputs (the
        # buffers above, the cache) live outside the pool, and its logits are read before the next replay.
        self.pool = torch.cuda.graph_pool_handle() if capture else None

    def step(self) -> torch.Tensor:
        """One step over the busy slots [0, n); returns [n, V] logits and advances their lengths."""
        rows, n, cap = self.rows, self.rows.n, self.cache.capacity
        b = next(k for k in self.buckets if k >= n)
        rows.valid[torch.arange(n, device=rows.valid.device), rows.length[:n]] = True
        self.ids[:n, 0] = rows.last[:n]
        self.ids[n:b] = self.engine.pad
        self.positions[:n, 0] = rows.next_pos[:n]
        self.positions[n:b] = 0
        self.writes[:n] = rows.length[:n]
        self.writes[n:b] = cap - 1
        self.mask[:n, 0, 0] = rows.valid[:n]
        self.mask[n:b] = False
        self.mask[n:b, 0, 0, cap - 1] = True
        logits = self._replay(b) if self.capture else self._forward(b)
        rows.length[:n] += 1
        rows.next_pos[:n] += 1
        return logits[:n]

    def _forward(self, b: int) -> torch.Tensor:
        """The model's forward on the first ``b`` rows of the buffers: [b, V] logits."""
        self.cache.pos, self.cache.width = self.writes[:b], self.cache.capacity
        model = self.engine.model
        out = model(input_ids=self.ids[:b], attention_mask=attention_mask_for(model, self.mask[:b]),
                    position_ids=self.positions[:b], cache=self.cache, use_cache=True)
        return out.logits[:, -1]

    def _replay(self, b: int) -> torch.Tensor:
        if b not in self.graphs:
            try:
                self.graphs[b] = self._capture(b)
            except Exception as err:  # noqa: BLE001 - any capture failure: eager steps from here on
                torch.cuda.synchronize()
                log.warning("generation.cuda_graphs: capturing the decode step for %d rows failed (%s: %s); "
                            "decoding without CUDA graphs", b, type(err).__name__, err)
                self.capture = False
                return self._forward(b)
        graph, logits = self.graphs[b]
        graph.replay()
        return logits

    def _capture(self, b: int) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            self._forward(b)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            logits = self._forward(b)
        log.debug("generation.cuda_graphs: captured the decode step for %d rows", b)
        return graph, logits
