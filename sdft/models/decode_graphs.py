"""The engine's decode step at fixed shapes, replayed as CUDA graphs (``generation.cuda_graphs``).

A decode step launches hundreds of small kernels per layer; on a GPU at batch 64-256 the launches, not
the math, set its pace. A CUDA graph records the step's kernels once and replays them in one launch,
which needs every shape and address to stay fixed:

    buckets    the busy rows [0, n) are padded to the next bucket (1, 2, 4, ... up to the slot count,
               and the slot count): one graph per bucket, captured the first time it is needed
    width      every step attends the whole cache (``capacity`` positions); the mask hides what is
               not the row's, so the width no longer follows the longest row
    inputs     the graph reads the slots' own state, allocated once per run and only ever updated in
               place (last tokens, positions, cache lengths, the [slots, capacity] mask), and the cache;
               it writes the [bucket, V] logits the step reads out
    padding    a padded row is a free slot, pointed at its own last cache position ``capacity - 1``
               (its length set there, that position unmasked): the only position it writes and reads,
               which no real row reaches (a row's last K/V go to at most the longest prompt +
               max_new_tokens - 2) and which a prefill resets before the slot is used again

Capture runs the step once eagerly on a side stream (the warm-up cuBLAS and the allocator need), then
records it; both write the very K/V the replay writes, so capturing in the middle of a run changes
nothing. ``StaticDecode(capture=False)`` runs the same fixed shapes eagerly: the CPU tests check it
against ``generate``, so only the capture itself needs a GPU to test. A capture that fails (a model
whose forward synchronises with the host, say) is logged and the run goes on with eager steps.
"""

from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)


def buckets(slots: int) -> list[int]:
    """Row counts a step is padded to: powers of two below ``slots``, then ``slots``."""
    out, b = [], 1
    while b < slots:
        out.append(b)
        b *= 2
    return [*out, slots]


class StaticDecode:
    """The forward of ``engine``'s decode steps at fixed shapes, over ``cache`` and ``rows`` (see the module
    docstring); the engine keeps the steps' bookkeeping."""

    def __init__(self, engine, cache, rows, capture: bool):
        self.engine, self.cache, self.rows = engine, cache, rows
        self.capture = capture
        self.buckets = buckets(cache.slots)
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        # One memory pool for every bucket's graph. Safe in any replay order here: a graph's inputs (the
        # slots' state, the cache) live outside the pool, and its logits are read before the next replay.
        self.pool = torch.cuda.graph_pool_handle() if capture else None

    def forward(self, n: int) -> torch.Tensor:
        """The forward of the busy slots [0, n), padded to a bucket: [n, V] logits."""
        b, last = next(k for k in self.buckets if k >= n), self.cache.capacity - 1
        self.rows.length[n:b] = last
        self.rows.valid[n:b, last] = True
        logits = self._replay(b) if self.capture else self._forward(b)
        return logits[:n]

    def _forward(self, b: int) -> torch.Tensor:
        return self.engine.step_forward(self.cache, self.rows, b, self.cache.capacity)

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
