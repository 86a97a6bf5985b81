"""Run untrusted generated code (HumanEval completions) in a separate, confined process.

Never in the framework's own process. Each program runs:
- in a fresh interpreter (``python -I``: no user site, no PYTHON* variables), in its own empty
  folder that is deleted afterwards, with a minimal environment (HOME and TMPDIR point into it);
- under ``guard.py``: hard limits on CPU time, memory and file size, and an audit hook that
  kills it on any write outside its folder, socket, process start, signal or ctypes use;
- in a network namespace of its own (``unshare -rn``) when the machine allows unprivileged user
  namespaces, so that even native code has no network; ``network_isolation()`` says which applies;
- in its own session, killed as a whole process group when ``timeout`` seconds of wall time pass.
"""

from __future__ import annotations

import functools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from sdft.eval.sandbox.guard import BLOCKED_EXIT

GUARD = Path(__file__).with_name("guard.py")
BLOCK_MARK = "SANDBOX-BLOCKED:"


@dataclass(frozen=True)
class RunResult:
    status: str
    """``passed`` (exit 0), ``failed`` (non-zero exit), ``timeout`` or ``blocked`` (sandbox violation)."""
    detail: str = ""
    """The last lines of stderr, or what was blocked."""


@functools.cache
def network_isolation() -> str:
    """``namespace`` when ``unshare -rn`` works here, else ``audit-hook`` (sockets blocked in Python only)."""
    if shutil.which("unshare") is None:
        return "audit-hook"
    try:
        ok = subprocess.run(["unshare", "-rn", "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        ok = False
    return "namespace" if ok else "audit-hook"


def run_program(code: str, timeout: float, work_root: str | Path | None = None,
                memory_bytes: int = 2 * 2**30) -> RunResult:
    """Run ``code`` as ``__main__`` in a fresh sandbox folder under ``work_root`` (default: the
    system temp folder). The folder is removed afterwards."""
    box = Path(tempfile.mkdtemp(prefix="sdft-box-", dir=work_root))
    try:
        program = box / "program.py"
        program.write_text(code, encoding="utf-8")
        cmd = [sys.executable, "-I", str(GUARD), str(program), str(box), str(int(timeout) + 1), str(memory_bytes)]
        if network_isolation() == "namespace":
            cmd = ["unshare", "-rn", *cmd]
        env = {"PATH": "/usr/bin:/bin", "HOME": str(box), "TMPDIR": str(box), "LANG": "C.UTF-8",
               "PYTHONDONTWRITEBYTECODE": "1", "PYTHONHASHSEED": "0"}
        # Output goes to files inside the box (capped by the file-size limit), so a program that
        # prints without end cannot fill this process's memory.
        with open(box / "stdout", "wb") as out, open(box / "stderr", "wb") as err:
            proc = subprocess.Popen(cmd, cwd=box, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                    start_new_session=True)
            try:
                rc = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                _kill_group(proc)
                return RunResult("timeout", f"killed after {timeout:g} s")
            finally:
                _kill_group(proc)  # anything the program left behind in its session
        stderr = (box / "stderr").read_bytes()[-4000:].decode("utf-8", "replace")
        if rc == 0:
            return RunResult("passed")
        if rc == BLOCKED_EXIT and BLOCK_MARK in stderr:
            return RunResult("blocked", stderr[stderr.rindex(BLOCK_MARK):].strip())
        if rc == -signal.SIGXCPU:
            return RunResult("timeout", "CPU time limit reached")
        if rc < 0:
            return RunResult("failed", f"killed by signal {signal.Signals(-rc).name}; " + _tail(stderr))
        return RunResult("failed", _tail(stderr))
    finally:
        shutil.rmtree(box, ignore_errors=True)


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def _tail(text: str, lines: int = 3) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])
