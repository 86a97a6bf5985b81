"""SIGTERM / SIGUSR1 are recorded inside ``on_signals()`` (the training loop), the first one named, more
of them ignored (SLURM and the launcher both signal a rank on preemption), and keep their default action
outside it."""

import os
import subprocess
import sys

from tests.conftest import REPO

_SCRIPT = """
import os, signal, sys
from sdft.utils import stop
with stop.on_signals():
    os.kill(os.getpid(), signal.SIGUSR1)
    print("recorded", stop.requested(), flush=True)
    if sys.argv[1] == "twice":
        os.kill(os.getpid(), signal.SIGTERM)
        print("still", stop.requested(), flush=True)
print("left the block", signal.getsignal(signal.SIGTERM) is signal.SIG_DFL, flush=True)
os.kill(os.getpid(), signal.SIGTERM)
print("not reached either", flush=True)
"""


def _run(mode: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-c", _SCRIPT, mode], env=env, capture_output=True, text=True, timeout=60)


def test_a_signal_is_recorded_inside_the_block_and_acts_as_before_outside_it():
    res = _run("once")
    assert res.stdout.splitlines() == ["recorded SIGUSR1", "left the block True"]
    assert res.returncode == -15  # outside the block SIGTERM terminates, as it always did


def test_a_second_signal_while_stopping_changes_nothing():
    res = _run("twice")
    assert res.stdout.splitlines() == ["recorded SIGUSR1", "still SIGUSR1", "left the block True"]
    assert res.returncode == -15
