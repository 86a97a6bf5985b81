"""Fault injection for crash-safety tests. A real SIGKILL, so no cleanup code runs: exactly what a
node failure or an OOM killer does.

- ``SDFT_KILL_AT=<point>:<n>`` kills this process the n-th time ``<point>`` is reached (with
  ``SDFT_KILL_RANK=<r>`` only rank r's; with ``SDFT_KILL_ONCE=<file>`` only while ``<file>`` does not
  exist, which the kill creates: a restarted process is not killed again). Points are
  the named places of the stages (``distill_batch``, ``train_step``) and the write boundaries of
  ``sdft.utils.io`` and the checkpoints (``boundary``): ``write`` counts every boundary, a boundary's
  own kind (``renamed``, ``appended``, ...) counts only those.
- ``SDFT_SIGNAL_AT=<point>:<n>:<SIGNAL>`` sends this process ``SIGNAL`` (``SIGTERM``, ``SIGUSR1``) the
  n-th time it reaches ``<point>``: a preemption that lands exactly there. Besides the points above,
  ``train_end`` (the last step done, ``train/final`` not yet written) and ``stage:<name>`` (a stage
  about to run).
- ``SDFT_HANG_AT=<point>:<n>:<rank>`` makes the process of ``<rank>`` stop responding (sleep for
  good) the n-th time it reaches ``<point>``: a rank stuck before a collective.
- ``SDFT_TRACE_WRITES=<file>`` appends the kind of every write boundary reached to ``<file>``, so a
  test can count the boundaries of an unbroken run and then kill a run at each of them.
"""

from __future__ import annotations

import os
import signal
import time
from collections import Counter

_hits: Counter[str] = Counter()


def maybe_kill(point: str) -> None:
    """Kill this process when ``SDFT_KILL_AT`` names ``point`` and this is its n-th time (or send it the
    signal ``SDFT_SIGNAL_AT`` names there)."""
    maybe_signal(point)
    spec = os.environ.get("SDFT_KILL_AT")
    if not spec:
        return
    name, _, n = spec.partition(":")
    if name != point:
        return
    rank = os.environ.get("SDFT_KILL_RANK")
    if rank is not None and rank != os.environ.get("RANK", "0"):
        return
    _hits[point] += 1
    if _hits[point] >= int(n or 1):
        once = os.environ.get("SDFT_KILL_ONCE")
        if once:
            if os.path.exists(once):
                return
            open(once, "w").close()
        os.kill(os.getpid(), signal.SIGKILL)


def maybe_signal(point: str) -> None:
    """Send this process the signal of ``SDFT_SIGNAL_AT`` when it names ``point`` and this is its n-th time."""
    spec = os.environ.get("SDFT_SIGNAL_AT")
    if not spec:
        return
    name, n, signame = spec.rsplit(":", 2)
    if name != point:
        return
    _hits["signal:" + point] += 1
    if _hits["signal:" + point] == int(n):
        os.kill(os.getpid(), signal.Signals[signame])


def maybe_hang(point: str) -> None:
    """Sleep for good when ``SDFT_HANG_AT`` names ``point``, this rank and this is its n-th time."""
    spec = os.environ.get("SDFT_HANG_AT")
    if not spec:
        return
    name, n, rank = spec.split(":")
    if name != point or int(rank) != int(os.environ.get("RANK", "0")):
        return
    _hits["hang:" + point] += 1
    if _hits["hang:" + point] >= int(n):
        while True:
            time.sleep(3600)


def boundary(kind: str) -> None:
    """A write boundary (a file written but not yet renamed into place, a rename, an append, an unlink,
    a checkpoint saved): traced with ``SDFT_TRACE_WRITES``, and a place ``SDFT_KILL_AT`` can kill at."""
    trace = os.environ.get("SDFT_TRACE_WRITES")
    if trace:
        with open(trace, "a") as f:
            f.write(kind + "\n")
    maybe_kill("write")
    maybe_kill(kind)
