"""Stopping at a step boundary when the cluster asks: SIGTERM (SLURM's preemption, ``scancel``,
torchrun passing on its own SIGTERM, the sbatch script before the time limit) and SIGUSR1
(``sbatch --signal=B:USR1@<seconds>`` before the time limit).

Inside ``on_signals()`` (the training loop) either signal only records itself: the loop finishes the
optimizer step it is in, every rank learns at the step's end whether any rank was signalled (one small
collective a step, so all stop at the same step), a checkpoint is written and ``Stopped`` ends the
command with ``STOPPED_EXIT``: rerunning the command resumes from that step. More signals while
stopping change nothing: on preemption SLURM signals every process of the job while the launcher
passes its own signal on, so a rank gets two at once (the cluster's SIGKILL after its grace time is
what ends a rank that takes too long). Outside ``on_signals()`` the signals keep their default action
(the stages that write example by example resume exactly).
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator

from sdft.errors import SdftError

STOPPED_EXIT = 75
"""The exit code of a command stopped by a signal with its progress saved (sysexits' EX_TEMPFAIL)."""
SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
MARKER_ENV = "SDFT_STOP_MARKER"
"""Names a file a stopped command creates (``leave_marker``): a launcher whose ranks got the signal
without it (``scancel --signal=TERM <job>`` reaches the job step, not the batch script) learns from it
that the command stopped resumably; torchrun's own exit code (1) does not tell."""

_received: list[int] = []


class Stopped(SdftError):
    """A signal stopped the command at a boundary after saving its progress; rerun it to resume."""

    kind = "stopped"
    exit_code = STOPPED_EXIT


def _record(signum: int, frame) -> None:
    _received.append(signum)


def requested() -> str | None:
    """The name of the signal that asked this process to stop (SIGTERM, SIGUSR1), or None."""
    return signal.Signals(_received[0]).name if _received else None


@contextlib.contextmanager
def on_signals() -> Iterator[None]:
    """Within this block SIGTERM and SIGUSR1 are recorded for ``requested()`` instead of acted on."""
    previous = {s: signal.signal(s, _record) for s in SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def leave_marker() -> None:
    """Create the file named by ``$SDFT_STOP_MARKER`` (if set): this command stopped resumably."""
    path = os.environ.get(MARKER_ENV)
    if path:
        with contextlib.suppress(OSError):  # the exit code and message still say it; the marker is a hint
            open(path, "a").close()
