"""The sandbox that runs generated code: it must contain what a completion may do, not just time it."""

import time

import pytest

from sdft.eval.sandbox import network_isolation, run_program


def test_passing_and_failing_programs(tmp_path):
    assert run_program("assert sum([1, 2]) == 3", timeout=10, work_root=tmp_path).status == "passed"
    res = run_program("assert sum([1, 2]) == 4, 'wrong sum'", timeout=10, work_root=tmp_path)
    assert res.status == "failed" and "AssertionError: wrong sum" in res.detail
    res = run_program("def f(:\n  pass", timeout=10, work_root=tmp_path)
    assert res.status == "failed" and "SyntaxError" in res.detail
    assert list(tmp_path.iterdir()) == []  # every sandbox folder is removed


@pytest.mark.parametrize("code", ["while True:\n    pass", "import time\nwhile True:\n    time.sleep(0.1)"])
def test_a_program_that_never_ends_is_killed_at_the_timeout(tmp_path, code):
    start = time.monotonic()
    res = run_program(code, timeout=2, work_root=tmp_path)
    assert res.status == "timeout"
    assert time.monotonic() - start < 8


def test_writing_outside_the_sandbox_is_blocked(tmp_path):
    target = tmp_path / "outside" / "escaped.txt"
    target.parent.mkdir()
    box_root = tmp_path / "boxes"
    box_root.mkdir()
    for code in (f"open({str(target)!r}, 'w').write('x')",
                 f"import pathlib\npathlib.Path({str(target)!r}).write_text('x')",
                 f"import os\nos.open({str(target)!r}, os.O_WRONLY | os.O_CREAT)",
                 # catching the error does not help: the process ends at the first violation
                 f"try:\n    open({str(target)!r}, 'a')\nexcept Exception:\n    pass\nprint('went on')",
                 f"import shutil\nshutil.rmtree({str(target.parent)!r})",
                 "open('../escaped.txt', 'w')"):
        res = run_program(code, timeout=10, work_root=box_root)
        assert res.status == "blocked", (code, res)
        assert "outside the sandbox" in res.detail
    assert not target.exists() and target.parent.exists()
    assert not (box_root / "escaped.txt").exists()
    # Inside its own folder a program may write and delete freely.
    ok = "open('scratch.txt', 'w').write('x')\nimport os\nos.remove('scratch.txt')"
    assert run_program(ok, timeout=10, work_root=box_root).status == "passed"


@pytest.mark.parametrize("code, what", [
    ("import socket\nsocket.create_connection(('127.0.0.1', 9), timeout=1)", "socket"),
    ("import subprocess\nsubprocess.run(['true'])", "_posixsubprocess"),
    ("import os\nos.system('true')", "os.system"),
    ("import os\nos.fork()", "os.fork"),
    ("import ctypes", "_ctypes"),
    ("import os, signal\nos.kill(1, signal.SIGTERM)", "os.kill"),
    ("import resource\nresource.setrlimit(resource.RLIMIT_CPU, (10**6, 10**6))", "resource.setrlimit"),
])
def test_network_processes_and_native_code_are_blocked(tmp_path, code, what):
    res = run_program(code, timeout=10, work_root=tmp_path)
    assert res.status == "blocked" and what in res.detail


def test_output_and_memory_are_bounded(tmp_path):
    res = run_program("while True:\n    print('x' * 4096)", timeout=20, work_root=tmp_path)
    assert res.status == "failed" and "File too large" in res.detail
    res = run_program("x = bytearray(16 * 2**30)", timeout=10, work_root=tmp_path)
    assert res.status == "failed" and "MemoryError" in res.detail


def test_network_isolation_is_reported():
    assert network_isolation() in ("namespace", "audit-hook")
