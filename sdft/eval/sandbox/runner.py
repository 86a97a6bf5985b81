"""Run untrusted generated code (HumanEval completions) in a separate, confined process.

Never in the framework's own process. Each program runs:
- inside bubblewrap (``bwrap``): its own user, mount, PID, network, IPC and UTS namespaces, as uid
  65534 with no capabilities; the whole file system read-only except its own folder, with private,
  throw-away ``/dev`` and ``/dev/shm``; every home folder and the Hugging Face cache and token paths
  emptied (only what the interpreter needs is shown again); no network at all. Writes elsewhere fail in the
  kernel, whatever the program uses (a directory descriptor, a hard link, sqlite3, shared memory, a
  FIFO, native code). When sdft itself runs as root, the namespace's uid maps to root outside: the
  read-only mounts, not file permissions, are what stop writes;
- in a fresh interpreter (``python -I``: no user site, no PYTHON* variables), in its own empty
  folder that is deleted afterwards, with a minimal environment (HOME and TMPDIR point into it);
- under ``guard.py``, the second layer: hard limits on CPU time, memory and file size, and an audit
  hook that ends it at the first write outside its folder, socket, process start, signal or ctypes use;
- in its own session, killed as a whole process group when ``timeout`` seconds of wall time pass.

Where bubblewrap cannot run, ``isolation()`` is ``"none"`` and generated code is refused unless the
caller allows it (``eval.humaneval_unisolated``): then only the guard (and, where unprivileged user
namespaces work, a network namespace of its own) confines it, and a hostile program can write
wherever this user can.
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

from sdft.errors import EvalError
from sdft.eval.sandbox.guard import BLOCKED_EXIT

GUARD = Path(__file__).with_name("guard.py")
BLOCK_MARK = "SANDBOX-BLOCKED:"
NOBODY = "65534"


@dataclass(frozen=True)
class RunResult:
    status: str
    """``passed`` (exit 0), ``failed`` (non-zero exit), ``timeout`` or ``blocked`` (sandbox violation)."""
    detail: str = ""
    """The last lines of stderr, or what was blocked."""


def hidden_paths() -> list[Path]:
    """What a program never sees: every home folder, and the Hugging Face cache and token wherever their
    variables put them (tokens, caches, keys and shell histories live there)."""
    env = os.environ
    hf = [env.get(k) for k in ("HF_HOME", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "TRANSFORMERS_CACHE",
                                "HF_DATASETS_CACHE", "HF_TOKEN_PATH")]
    hf.append(str(Path(env.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "huggingface"))
    paths = [Path("/root"), Path("/home"), Path.home(), *(Path(h) for h in hf if h)]
    out: list[Path] = []
    for path in paths:
        path = path.resolve()
        if path.exists() and path != Path("/") and not any(path == o or o in path.parents for o in out):
            out = [o for o in out if path not in o.parents] + [path]
    return out


def _needed() -> list[Path]:
    """What the interpreter and the guard need to run, which may live under a hidden folder (a pyenv
    Python under /root, a virtual environment in a home folder)."""
    paths = sorted({Path(p).resolve() for p in (sys.base_prefix, sys.prefix, sys.exec_prefix,
                                                 os.path.dirname(os.path.realpath(sys.executable)), GUARD.parent)},
                   key=lambda p: len(p.parts))
    out: list[Path] = []
    for path in paths:  # a folder inside one already shown needs no mount of its own
        if not any(o == path or o in path.parents for o in out):
            out.append(path)
    return out


def _bwrap(box: Path) -> list[str]:
    """The bubblewrap command line that confines a program to ``box``: the file system read-only, home
    folders and the Hugging Face cache and token emptied (a tmpfs over each folder, an empty file over a
    file), then what the interpreter needs shown again, read-only."""
    # /tmp stays visible (read-only): the interpreter, sdft's guard script or the box may live there.
    cmd = ["bwrap", "--unshare-all", "--die-with-parent", "--new-session", "--ro-bind", "/", "/",
           "--dev", "/dev", "--tmpfs", "/dev/shm", "--proc", "/proc"]
    hidden = hidden_paths()
    empty = box / ".empty"  # not /dev/null: a device node bound into the namespace cannot be opened (nodev)
    empty.touch()
    for path in hidden:
        cmd += ["--tmpfs", str(path)] if path.is_dir() else ["--ro-bind", str(empty), str(path)]
    for path in _needed():
        if any(h in path.parents or h == path for h in hidden):
            cmd += ["--ro-bind", str(path), str(path)]
    return [*cmd, "--bind", str(box), str(box), "--uid", NOBODY, "--gid", NOBODY, "--chdir", str(box), "--"]


@functools.cache
def isolation() -> str:
    """``bubblewrap`` when bwrap can start a confined process here, else ``none``."""
    if shutil.which("bwrap") is None:
        return "none"
    box = Path(tempfile.mkdtemp(prefix="sdft-probe-"))
    try:
        ok = subprocess.run([*_bwrap(box), sys.executable, "-I", "-c", "pass"], capture_output=True,
                            timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        ok = False
    finally:
        shutil.rmtree(box, ignore_errors=True)
    return "bubblewrap" if ok else "none"


@functools.cache
def _network_namespace() -> bool:
    """Whether ``unshare -rn`` works here (the unisolated mode's network barrier)."""
    if shutil.which("unshare") is None:
        return False
    try:
        return subprocess.run(["unshare", "-rn", "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def run_program(code: str, timeout: float, work_root: str | Path | None = None, memory_bytes: int = 2 * 2**30,
                allow_unisolated: bool = False, guard: bool = True) -> RunResult:
    """Run ``code`` as ``__main__`` in a fresh sandbox folder under ``work_root`` (default: the
    system temp folder). The folder is removed afterwards. Without bubblewrap, ``EvalError`` unless
    ``allow_unisolated``. ``guard=False`` leaves the audit hook out (the tests use it to check the
    OS layer alone)."""
    isolated = isolation() == "bubblewrap"
    if not isolated and not allow_unisolated:
        raise EvalError("generated code needs bubblewrap to run isolated, and bwrap cannot run here: install "
                        "it (Debian: apt-get install bubblewrap), or set eval.humaneval_unisolated=true to run it "
                        "under the audit hook alone (a hostile program could then write wherever this user can)")
    box = Path(tempfile.mkdtemp(prefix="sdft-box-", dir=work_root))
    try:
        program = box / "program.py"
        program.write_text(code, encoding="utf-8")
        runner = [str(GUARD), str(program), str(box), str(int(timeout) + 1), str(memory_bytes)] if guard else [str(program)]
        cmd = [sys.executable, "-I", *runner]
        if isolated:
            cmd = [*_bwrap(box), *cmd]
        elif _network_namespace():
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
        try:  # the program may have deleted or replaced its own output files
            stderr = (box / "stderr").read_bytes()[-4000:].decode("utf-8", "replace")
        except OSError:
            stderr = ""
        if rc == 0:
            return RunResult("passed")
        if rc == BLOCKED_EXIT and BLOCK_MARK in stderr:
            return RunResult("blocked", stderr[stderr.rindex(BLOCK_MARK):].strip())
        if rc in (-signal.SIGXCPU, 128 + signal.SIGXCPU):
            return RunResult("timeout", "CPU time limit reached")
        if rc < 0 or rc > 128:
            sig = -rc if rc < 0 else rc - 128
            return RunResult("failed", f"killed by signal {signal.Signals(sig).name}; " + _tail(stderr))
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
