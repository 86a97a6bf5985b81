"""Holding an output folder: one run at a time, leftovers of a killed run removed, inputs checked and
output failures reported before they can do harm."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sdft.layout import RunLayout
from sdft.run_folder import hold
from tests.conftest import EXAMPLES, REPO, run_cli, snapshot


def _tiny(out: Path, *more: str) -> tuple[str, ...]:
    return ("run", str(EXAMPLES / "tiny.yaml"), f"output_dir={out}", *more)


def test_holding_a_folder_removes_what_a_killed_run_left(tmp_path):
    left = [tmp_path / "filter" / ".train.jsonl.tmp-4242", tmp_path / "distill" / ".rewrites.jsonl.tmp-77",
            tmp_path / "eval" / "outputs" / ".task_seed.jsonl.tmp-9", tmp_path / "export" / ".model.tmp-x1y2" / "w",
            tmp_path / "train" / "checkpoints" / ".step-000002.tmp-save" / "state.json",
            tmp_path / "train" / ".final.tmp-old-12" / "adapter_model.safetensors"]
    kept = [tmp_path / "filter" / "train.jsonl", tmp_path / "train" / "checkpoints" / "step-000002" / "state.json",
            tmp_path / "notes.tmp.txt"]
    for p in left + kept:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("x")
    hold(RunLayout(tmp_path), "run")
    assert all(p.exists() for p in kept)
    assert not any(p.exists() for p in left)
    assert not (tmp_path / "export" / ".model.tmp-x1y2").exists()
    holder = json.loads((tmp_path / ".sdft.lock").read_text())
    assert holder["pid"] == os.getpid() and holder["command"] == "run"


@pytest.mark.slow
def test_a_second_run_stops_at_once_naming_the_holder_and_a_killed_holder_never_blocks(tmp_path):
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from sdft.layout import RunLayout; "
                               "from sdft.run_folder import hold; hold(RunLayout(sys.argv[1]), 'train'); "
                               "print('held', flush=True); time.sleep(120)", str(out)],
                              stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert holder.stdout.readline().strip() == "held"
        started = time.monotonic()
        res = run_cli(*_tiny(out), env={"SDFT_CACHE": str(tmp_path / "cache")})
        assert res.returncode == 1 and time.monotonic() - started < 60
        assert f"is in use by another sdft run (sdft train, pid {holder.pid} on " in res.stderr
        assert not (out / "distill").exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # The kernel released the lock: the next command holds the folder (one stage is enough to show it).
    res = run_cli("distill", *_tiny(out)[1:], env={"SDFT_CACHE": str(tmp_path / "cache")})
    assert res.returncode == 0, res.stderr[-3000:]


@pytest.mark.slow
def test_two_runs_started_together_on_one_folder_leave_one_clean_run(tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "SDFT_CACHE": str(tmp_path / "c")}
    procs = [subprocess.Popen([sys.executable, "-m", "sdft", *_tiny(out)], stderr=subprocess.PIPE, text=True,
                              env=env, cwd=REPO) for _ in range(2)]
    results = [(p.wait(timeout=600), p.stderr.read()) for p in procs]
    codes = sorted(rc for rc, _ in results)
    assert codes == [0, 1], [err[-2000:] for _, err in results]
    assert "is in use by another sdft run" in next(err for rc, err in results if rc == 1)
    ids = [json.loads(x)["id"] for x in (out / "distill" / "rewrites.jsonl").read_text().splitlines()]
    assert len(ids) == len(set(ids)) == 32
    steps = [json.loads(x)["step"] for x in (out / "train" / "train_log.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps))
    before = snapshot(out)
    again = run_cli(*_tiny(out), env={"SDFT_CACHE": str(tmp_path / "c")})
    assert again.returncode == 0 and snapshot(out) == before


def test_an_output_dir_that_is_a_file_is_one_clear_line(tmp_path):
    out = tmp_path / "a-file"
    out.write_text("not a folder")
    res = run_cli(*_tiny(out))
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert f"sdft: output error: {out}: output_dir is a file, not a folder" in res.stderr


@pytest.mark.parametrize("override, option", [("data.test=/no/such/test.jsonl", "data.test"),
                                              ("data.general_prompts=/no/such/g.jsonl", "data.general_prompts"),
                                              ("data.train=/no/such/train.jsonl", "data.train"),
                                              ("eval.safety_prompts=/no/such/harm.csv", "eval.safety_prompts")])
def test_every_input_is_checked_before_the_first_stage(tmp_path, override, option):
    out = tmp_path / "run"
    res = run_cli(*_tiny(out, override))
    assert res.returncode == 2 and f"{option}=" in res.stderr and "nothing has run" in res.stderr
    assert not out.exists()  # not even the output folder


def test_humaneval_without_isolation_is_refused_before_any_work(tmp_path, monkeypatch, capsys):
    from sdft import cli
    from sdft.eval import evaluate

    monkeypatch.setattr(evaluate, "isolation", lambda: "none")
    out = tmp_path / "run"
    code = cli.main(list(_tiny(out, "eval.evaluators=[task,humaneval]")))
    assert code == 2 and "bubblewrap (bwrap) cannot run here" in capsys.readouterr().err
    assert not out.exists()


def _mount_tmpfs(path: Path, options: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True).returncode == 0


needs_mount = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("mount") is None, reason="needs root to mount")


@needs_mount
def test_a_read_only_output_folder_is_one_clear_line(tmp_path):
    ro = tmp_path / "ro"
    if not _mount_tmpfs(ro, "ro,size=1m"):
        pytest.skip("mount is not permitted here")
    try:
        res = run_cli(*_tiny(ro / "run"))
        assert res.returncode == 1 and "Traceback" not in res.stderr
        assert f"sdft: output error: {ro / 'run'}: cannot write it: Read-only file system" in res.stderr
    finally:
        subprocess.run(["umount", str(ro)])


@pytest.fixture(scope="module")
def unbroken_tiny_eval(tmp_path_factory) -> dict:
    """The tiny example's tuned evaluation from a run nothing interrupted (shared by the full-disk cases)."""
    root = tmp_path_factory.mktemp("unbroken")
    res = run_cli(*_tiny(root / "run"), env={"SDFT_CACHE": str(root / "cache")})
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads((root / "run" / "eval" / "eval.json").read_text())["tuned"]


@needs_mount
@pytest.mark.slow
@pytest.mark.parametrize("size, where", [("120k", "train/checkpoints/step-000002"), ("300k", "train/final")],
                         ids=["torch.save of a checkpoint", "safetensors of the final adapter"])
def test_a_full_disk_is_one_clear_line_and_the_rerun_finishes_once_space_is_freed(tmp_path, size, where,
                                                                                   unbroken_tiny_eval):
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, f"size={size}"):
        pytest.skip("mount is not permitted here")
    out, env = disk / "run", {"SDFT_CACHE": str(tmp_path / "cache")}
    no_trackers = "tracking.report_to=[]"  # the sizes are set for the stages' own files to fill the disk
    try:
        full = run_cli(*_tiny(out, no_trackers), env=env)
        assert full.returncode == 1 and "Traceback" not in full.stderr, full.stderr[-3000:]
        line = full.stderr.split("sdft: output error: ")[1].splitlines()[0]  # a progress bar may precede it
        assert line.startswith(f"{out / where}: cannot write it: No space left on device"), line
        subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)
        res = run_cli(*_tiny(out, no_trackers), env=env)
        assert res.returncode == 0, res.stderr[-3000:]
        assert not [p for p in out.rglob("*") if p.name.startswith(".") and ".tmp-" in p.name]
        assert json.loads((out / "eval" / "eval.json").read_text())["tuned"] == unbroken_tiny_eval
    finally:
        subprocess.run(["umount", "-l", str(disk)])
