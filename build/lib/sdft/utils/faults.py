"""Fault injection for crash-safety tests: ``SDFT_KILL_AT=<point>:<n>`` SIGKILLs this process the
n-th time ``<point>`` is reached (e.g. ``distill_batch:2`` or ``train_step:3``). A real SIGKILL, so
no cleanup code runs: exactly what a node failure or an OOM killer does."""

from __future__ import annotations

import os
import signal
from collections import Counter

_hits: Counter[str] = Counter()


def maybe_kill(point: str) -> None:
    spec = os.environ.get("SDFT_KILL_AT")
    if not spec:
        return
    name, _, n = spec.partition(":")
    if name != point:
        return
    _hits[point] += 1
    if _hits[point] >= int(n or 1):
        os.kill(os.getpid(), signal.SIGKILL)
