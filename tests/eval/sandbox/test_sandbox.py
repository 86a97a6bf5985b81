"""The sandbox that runs generated code: it must contain what a completion may do, not just time it.

The escape attempts run twice: with the audit hook (the second layer: the program is stopped at the
attempt) and without it, so that the OS layer (bubblewrap's read-only mounts and namespaces) is shown
to hold on its own. Either way nothing outside the program's folder may change."""

import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest

from sdft.errors import EvalError
from sdft.eval.sandbox import isolation, run_program, runner

needs_bwrap = pytest.mark.usefixtures("bubblewrap")


@needs_bwrap
def test_passing_and_failing_programs(tmp_path):
    assert run_program("assert sum([1, 2]) == 3", timeout=10, work_root=tmp_path).status == "passed"
    res = run_program("assert sum([1, 2]) == 4, 'wrong sum'", timeout=10, work_root=tmp_path)
    assert res.status == "failed" and "AssertionError: wrong sum" in res.detail
    res = run_program("def f(:\n  pass", timeout=10, work_root=tmp_path)
    assert res.status == "failed" and "SyntaxError" in res.detail
    assert list(tmp_path.iterdir()) == []  # every sandbox folder is removed


@needs_bwrap
@pytest.mark.parametrize("code", ["while True:\n    pass", "import time\nwhile True:\n    time.sleep(0.1)"])
def test_a_program_that_never_ends_is_killed_at_the_timeout(tmp_path, code):
    start = time.monotonic()
    res = run_program(code, timeout=2, work_root=tmp_path)
    assert res.status == "timeout"
    assert time.monotonic() - start < 8


def _state(root: Path) -> dict:
    """Every path under ``root`` with its content (or its kind)."""
    out = {}
    for p in sorted(root.rglob("*")):
        out[str(p)] = p.read_bytes() if p.is_file() and not p.is_symlink() else ("dir" if p.is_dir() else "other")
    return out


def _escapes(outside: Path) -> dict[str, str]:
    """Programs that try to change something outside their folder, each a different way."""
    victim, d = outside / "victim.txt", str(outside)
    return {
        "open": f"open({str(outside / 'new.txt')!r}, 'w').write('x')",
        "pathlib": f"import pathlib\npathlib.Path({str(outside / 'new.txt')!r}).write_text('x')",
        "os.open": f"import os\nos.open({str(outside / 'new.txt')!r}, os.O_WRONLY | os.O_CREAT)",
        "catch and go on": f"try:\n    open({str(victim)!r}, 'a').write('x')\nexcept Exception:\n    pass\nprint('on')",
        "rmtree": f"import shutil\nshutil.rmtree({d!r})",
        "relative path": "open('../escaped.txt', 'w').write('x')",
        "directory descriptor": f"import os\nfd = os.open({d!r}, os.O_RDONLY)\nos.open('new.txt', os.O_WRONLY | os.O_CREAT, dir_fd=fd)",
        "unlink by descriptor": f"import os\nfd = os.open({d!r}, os.O_RDONLY)\nos.unlink('victim.txt', dir_fd=fd)",
        "hard link": f"import os\nos.link({str(victim)!r}, 'hl')\nopen('hl', 'a').write('x')",
        "symlink": f"import os\nos.symlink({str(victim)!r}, 'sl')\nopen('sl', 'a').write('x')",
        "rename": f"import os\nos.rename({str(victim)!r}, 'moved.txt')",
        "sqlite3": f"import sqlite3\nsqlite3.connect({str(outside / 'x.db')!r}).execute('create table t(a)')",
        "fifo": f"import os\nos.mkfifo({str(outside / 'fifo')!r})",
        "shared memory": "from multiprocessing import shared_memory\nshared_memory.SharedMemory(create=True, size=64, name='sdft-escape')",
        "host /tmp": "open('/tmp/sdft-escape.txt', 'w').write('x')",
    }


@pytest.fixture
def outside():
    """A folder outside the system temp folder, where the sandbox folders live: any place must hold."""
    path = Path(tempfile.mkdtemp(prefix="sdft-outside-", dir="/var/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@needs_bwrap
@pytest.mark.parametrize("guard", [True, False], ids=["with audit hook", "os layer alone"])
def test_escape_attempts_change_nothing_outside(outside, guard):
    (outside / "victim.txt").write_text("keep me")
    boxes = outside / "boxes"  # the sandbox folders live next to the victim, the hardest case
    boxes.mkdir()
    before = _state(outside)
    for name, code in _escapes(outside).items():
        res = run_program(code, timeout=10, work_root=boxes, guard=guard)
        if guard or name not in ("shared memory", "catch and go on"):  # a private copy; an error caught
            assert res.status in ("blocked", "failed"), (name, res)
        assert _state(outside) == before, name
        assert not Path("/dev/shm/sdft-escape").exists() and not Path("/tmp/sdft-escape.txt").exists(), name
    # Inside its own folder a program may write and delete freely.
    ok = "open('scratch.txt', 'w').write('x')\nimport os\nos.remove('scratch.txt')"
    assert run_program(ok, timeout=10, work_root=boxes).status == "passed"


@needs_bwrap
@pytest.mark.parametrize("code, what", [
    ("import socket\nsocket.create_connection(('127.0.0.1', 9), timeout=1)", "socket"),
    ("import subprocess\nsubprocess.run(['true'])", "_posixsubprocess"),
    ("import os\nos.system('true')", "os.system"),
    ("import os\nos.fork()", "os.fork"),
    ("import ctypes\nctypes.CDLL(None)", "ctypes.dlopen"),  # importable (numpy, preloaded, loads it), not usable
    ("import ctypes\nctypes.string_at(id(1), 8)", "ctypes."),
    ("import os, signal\nos.kill(1, signal.SIGTERM)", "os.kill"),
    ("import resource\nresource.setrlimit(resource.RLIMIT_CPU, (10**6, 10**6))", "resource.setrlimit"),
])
def test_network_processes_and_native_code_are_blocked(tmp_path, code, what):
    res = run_program(code, timeout=10, work_root=tmp_path)
    assert res.status == "blocked" and what in res.detail


@needs_bwrap
def test_home_folders_and_the_hugging_face_cache_and_token_are_hidden(tmp_path, monkeypatch):
    """A program running as nobody lists the home folders and reads the Hugging Face cache and token
    wherever their variables point (canaries anyone could read): it finds nothing but the path down to
    the interpreter it runs on. The control: with nothing hidden, it reads the canaries."""
    import json
    import shutil
    import tempfile

    from sdft.eval.sandbox import runner

    shared = Path(tempfile.mkdtemp(prefix="sdft-canary-", dir="/tmp"))
    try:
        shared.chmod(0o755)
        (shared / "hf-home" / "hub").mkdir(parents=True)
        for path in (shared / "hf-home", shared / "hf-home" / "hub"):
            path.chmod(0o755)
        (shared / "hf-home" / "hub" / "model.bin").write_text("weights")
        token = shared / "my-token"
        token.write_text("hf_secret")
        for f in (token, shared / "hf-home" / "hub" / "model.bin"):
            f.chmod(0o644)
        monkeypatch.setenv("HF_HOME", str(shared / "hf-home"))
        monkeypatch.setenv("HF_TOKEN_PATH", str(token))
        hidden = runner.hidden_paths()
        assert {(shared / "hf-home").resolve(), token.resolve()} <= set(hidden)
        assert Path("/root") in hidden or not Path("/root").exists()
        # What may show: the folders on the way to the interpreter, nothing beside them.
        allowed = {}
        for need in runner._needed():
            for h in hidden:
                if h in need.parents:
                    parts = need.relative_to(h).parts
                    for i in range(len(parts)):
                        allowed.setdefault(str(h.joinpath(*parts[:i])), set()).add(parts[i])
        code = f"""import json, os
allowed = {{k: set(v) for k, v in json.loads({json.dumps(json.dumps({k: sorted(v) for k, v in allowed.items()}))}).items()}}
needed = set({json.dumps([str(n) for n in runner._needed()])})
found = {{}}
for top in {json.dumps([str(h) for h in hidden if h.is_dir()])}:
    for root, dirs, files in os.walk(top):
        if root in needed:  # the interpreter's own folder, shown on purpose
            dirs[:] = []
            continue
        extra = set(dirs + files) - allowed.get(root, set())
        if extra:
            found[root] = sorted(extra)
        dirs[:] = [d for d in dirs if d in allowed.get(root, set())]
secret = open({json.dumps(str(token))}).read()
if found or secret:
    raise SystemExit("visible: " + repr(found) + " " + repr(secret))
"""
        res = run_program(code, timeout=20, work_root=tmp_path)
        assert res.status == "passed", res
        monkeypatch.setattr(runner, "hidden_paths", lambda: [])
        exposed = run_program(code, timeout=20, work_root=tmp_path)
        assert exposed.status == "failed" and "hf_secret" in exposed.detail and "hf-home': ['hub']" in exposed.detail
    finally:
        shutil.rmtree(shared, ignore_errors=True)


@needs_bwrap
def test_numpy_imports_inside_the_sandbox(tmp_path):
    """The HumanEval harness puts ``import numpy`` before every program: it must run, not be blocked."""
    res = run_program("import numpy as np\nassert np.arange(3).sum() == 3", timeout=20, work_root=tmp_path)
    assert res.status == "passed", res


@needs_bwrap
def test_the_os_layer_alone_has_no_network_and_a_private_user(tmp_path):
    code = ("import os, socket\nassert os.getuid() == 65534\n"
            "try:\n    socket.create_connection(('127.0.0.1', 22), timeout=2)\nexcept OSError:\n    pass\n"
            "else:\n    raise SystemExit('reached the network')\n"
            "assert [i for i in socket.if_nameindex() if i[1] != 'lo'] == []")
    res = run_program(code, timeout=10, work_root=tmp_path, guard=False)
    assert res.status == "passed", res


@needs_bwrap
def test_output_and_memory_are_bounded(tmp_path):
    res = run_program("while True:\n    print('x' * 4096)", timeout=20, work_root=tmp_path)
    assert res.status == "failed" and "File too large" in res.detail
    res = run_program("x = bytearray(16 * 2**30)", timeout=10, work_root=tmp_path)
    assert res.status == "failed" and "MemoryError" in res.detail


def test_without_isolation_generated_code_is_refused_unless_allowed(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "isolation", lambda: "none")
    with pytest.raises(EvalError, match="needs bubblewrap.*eval.humaneval_unisolated=true"):
        run_program("print('hi')", timeout=10, work_root=tmp_path)
    assert run_program("print('hi')", timeout=10, work_root=tmp_path, allow_unisolated=True).status == "passed"
    assert os.listdir(tmp_path) == []


@needs_bwrap
def test_the_probe_finds_bubblewrap():
    assert isolation() == "bubblewrap"
