"""Stopping at a step boundary when the cluster asks: SIGTERM (SLURM's preemption, ``scancel``,
torchrun passing on its own SIGTERM, the sbatch script before the time limit) and SIGUSR1
(``sbatch --signal=B:USR1@<seconds>`` before the time limit).

Inside ``on_signals()`` (the training loop, distillation's batches, and the pipeline around those stages
until their completion record is written) either signal only records itself: the loop finishes the
optimizer step it is in, every rank learns at the step's end whether any rank was signalled (one small
collective a step, so all stop at the same step), a checkpoint is written and ``Stopped`` ends the
command with ``STOPPED_EXIT``: rerunning the command resumes from that step. A signal after the last
step stops the command once the stage is recorded, before the next stage. More signals while stopping
change nothing: on preemption SLURM signals every process of the job while the launcher passes its own
signal on, so a rank gets two at once (the cluster's SIGKILL after its grace time is what ends a rank
that takes too long). Elsewhere in a command (``for_command()``) the signals end the process at once, as
by default (the stages that write example by example resume exactly). Either way the first signal
leaves ``$SDFT_STOP_MARKER``, so a launcher requeues the job.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator

from sdft.errors import SdftError

STOPPED_EXIT = 75
"""The exit code of a command stopped by a signal with its progress saved (sysexits' EX_TEMPFAIL)."""
SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
MARKER_ENV = "SDFT_STOP_MARKER"
"""Names a file a command creates on its first SIGTERM or SIGUSR1 (``leave_marker``): a launcher whose
ranks got the signal without it (``scancel --signal=TERM <job>`` and preemption reach the job step, not
the batch script) learns from it that the cluster stopped the job, which a rerun resumes; torchrun's own
exit code (1) does not tell a stop from a crash."""

_received: list[int] = []


class Stopped(SdftError):
    """A signal stopped the command at a boundary after saving its progress; rerun it to resume."""

    kind = "stopped"
    exit_code = STOPPED_EXIT


def _record(signum: int, frame) -> None:
    if not _received:
        leave_marker()
    _received.append(signum)


def _end(signum: int, frame) -> None:
    """The default action (the process ends by the signal), after leaving the marker."""
    leave_marker()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def requested() -> str | None:
    """The name of the signal that asked this process to stop (SIGTERM, SIGUSR1), or None."""
    return signal.Signals(_received[0]).name if _received else None


@contextlib.contextmanager
def _handled_by(handler) -> Iterator[None]:
    """Within this block ``handler`` takes SIGTERM and SIGUSR1; the previous handlers come back after."""
    previous = {s: signal.signal(s, handler) for s in SIGNALS}
    try:
        yield
    finally:
        for s, old in previous.items():
            signal.signal(s, old)


def on_signals() -> contextlib.AbstractContextManager[None]:
    """Within this block SIGTERM and SIGUSR1 are recorded for ``requested()`` instead of acted on."""
    return _handled_by(_record)


@contextlib.contextmanager
def for_command() -> Iterator[None]:
    """Around a whole command: SIGTERM and SIGUSR1 end the process at once, as by default, but leave
    the marker first (a launcher then requeues: a signal between two stages is a preemption too, not a
    crash). ``on_signals()`` blocks inside it record them instead. A no-op off the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _received.clear()  # a signal to an earlier command of this process is not this one's
    with _handled_by(_end):
        yield


def leave_marker() -> None:
    """Create the file named by ``$SDFT_STOP_MARKER`` (if set): the cluster asked this command to stop
    (it stops at a boundary, or ends at once where it has none); a rerun resumes."""
    path = os.environ.get(MARKER_ENV)
    if path:
        with contextlib.suppress(OSError):  # the exit code and message still say it; the marker is a hint
            open(path, "a").close()
