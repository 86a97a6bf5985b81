"""A preempted or time-limited training run (SIGTERM, or SLURM's SIGUSR1 before the limit) finishes the
step it is in, checkpoints, exits with ``STOPPED_EXIT``, and its rerun ends with the weights and the
log of a run nothing interrupted: no step lost or repeated. On two ranks, a signal to one rank stops
both at the same step."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sdft.utils.stop import STOPPED_EXIT
from tests.conftest import REPO, REPRODUCIBLE_ENV, free_port, run_cli, run_torchrun

pytestmark = pytest.mark.slow  # real training processes, signalled mid-run

STEPS = 40
OVER = [f"train.max_steps={STEPS}", "train.logging_steps=1", "train.save_every=0"]


def _logged_steps(out: Path) -> list[int]:
    log = out / "train" / "train_log.jsonl"
    return [json.loads(x)["step"] for x in log.read_text().splitlines()] if log.exists() else []


def _signal_when_training(proc: subprocess.Popen, out: Path, pids, signum: int) -> None:
    """Send ``signum`` to ``pids()`` once the run has logged its third step."""
    deadline = time.time() + 240
    while len(_logged_steps(out)) < 3:
        assert proc.poll() is None and time.time() < deadline, "the run ended or stalled before its third step"
        time.sleep(0.02)
    for pid in pids():
        os.kill(pid, signum)


def _adapter(out: Path) -> dict:
    return load_file(str(out / "train" / "final" / "adapter_model.safetensors"))


def _same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)


@pytest.fixture(scope="module")
def unbroken_one_rank(tmp_path_factory, tiny_model_dir, _distilled_once) -> dict:
    """The adapter of ``distilled``'s config trained for ``STEPS`` steps by one process, uninterrupted."""
    from tests.conftest import distilled_config

    path, out = distilled_config(tmp_path_factory.mktemp("unbroken"), tiny_model_dir, _distilled_once)
    ref = run_cli("train", str(path), *OVER, env=REPRODUCIBLE_ENV)
    assert ref.returncode == 0, ref.stderr[-3000:]
    return _adapter(out)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR1], ids=["SIGTERM", "SIGUSR1"])
def test_a_signalled_run_checkpoints_exits_resumable_and_resumes_to_the_unbroken_run(distilled, unbroken_one_rank,
                                                                                     signum):
    path, _, clone = distilled
    broken = clone("broken")
    marker = broken.parent / f"stopped-{broken.name}"  # a launcher's hint that the ranks stopped resumably
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "SDFT_STOP_MARKER": str(marker),
           **REPRODUCIBLE_ENV}
    proc = subprocess.Popen([sys.executable, "-m", "sdft", "train", str(path), f"output_dir={broken}", *OVER],
                            cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
    _signal_when_training(proc, broken, lambda: [proc.pid], signum)
    err = proc.communicate(timeout=240)[1]
    assert proc.returncode == STOPPED_EXIT, err[-3000:]
    stopped_at = len(_logged_steps(broken))
    assert f"sdft: stopped: train: stopped by {signal.Signals(signum).name} after step {stopped_at} of {STEPS}" in err
    assert [p.name for p in (broken / "train" / "checkpoints").glob("step-*")] == [f"step-{stopped_at:06d}"]
    assert not (broken / "train" / "COMPLETE.json").exists() and stopped_at < STEPS
    assert marker.exists()
    marker.unlink()
    resumed = run_cli("train", str(path), f"output_dir={broken}", *OVER,
                      env={**REPRODUCIBLE_ENV, "SDFT_STOP_MARKER": str(marker)})
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert not marker.exists()  # only a stopped command leaves it
    assert f"resuming from step-{stopped_at:06d}" in resumed.stderr
    _same(_adapter(broken), unbroken_one_rank)
    assert _logged_steps(broken) == list(range(1, STEPS + 1))


def _worker_pids(launcher: int, rank: int) -> list[int]:
    """The pid of torchrun's worker of ``rank`` (read from /proc: its parent and its RANK variable)."""
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            parent = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            env = (d / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if parent == launcher and f"RANK={rank}".encode() in env:
            found.append(int(d.name))
    assert found, f"no worker of rank {rank} under {launcher}"
    return found


@pytest.mark.distributed
def test_a_signal_to_one_rank_stops_both_at_the_same_step_and_the_rerun_resumes(distilled):
    path, _, clone = distilled
    broken, unbroken = clone("broken2"), clone("unbroken2")
    over = [*OVER, "train.deepspeed=zero2", "train.grad_accum=1"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "DS_ACCELERATOR": "cpu",
           **REPRODUCIBLE_ENV}
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                             f"--master_port={free_port()}", "-m", "sdft", "train", str(path), f"output_dir={broken}",
                             *over], cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
    _signal_when_training(proc, broken, lambda: _worker_pids(proc.pid, 1), signal.SIGUSR1)
    err = proc.communicate(timeout=240)[1]
    assert proc.returncode != 0, err[-3000:]
    stopped_at = len(_logged_steps(broken))  # rank 0 logs; it stopped after the same step as rank 1
    assert f"stopped by a signal to another rank after step {stopped_at} of {STEPS}" in err  # rank 0's line
    assert f"stopped by SIGUSR1 after step {stopped_at} of {STEPS}" in err  # rank 1's
    state = json.loads((broken / "train" / "checkpoints" / f"step-{stopped_at:06d}" / "state.json").read_text())
    assert state["world_size"] == 2
    resumed = run_torchrun(2, "train", str(path), f"output_dir={broken}", *over, env=REPRODUCIBLE_ENV)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    ref = run_torchrun(2, "train", str(path), f"output_dir={unbroken}", *over, env=REPRODUCIBLE_ENV)
    assert ref.returncode == 0, ref.stderr[-3000:]
    _same(_adapter(broken), _adapter(unbroken))
    assert _logged_steps(broken) == list(range(1, STEPS + 1))


@pytest.mark.distributed
def test_a_rank_stuck_before_a_collective_ends_the_job_within_the_timeout_naming_rank_and_stage(distilled):
    path, _, clone = distilled
    out = clone("hung")
    started = time.monotonic()
    res = run_torchrun(2, "train", str(path), f"output_dir={out}", *OVER, "train.deepspeed=zero2",
                       "train.grad_accum=1", "collective_timeout_s=15", env={"SDFT_HANG_AT": "train_step:2:1"},
                       timeout=240, retry=False)
    took = time.monotonic() - started
    assert res.returncode != 0
    assert ("sdft: stage error: train: rank 0 of 2 waited collective_timeout_s=15 s in a collective that another "
            "rank did not join") in res.stderr, res.stderr[-3000:]
    assert _logged_steps(out) == [1, 2]  # rank 1 hangs after step 2; rank 0 waits at step 2's end, then stops
    assert took < 120, took  # the timeout plus start-up and torchrun tearing the stuck rank down


def test_on_policy_training_stops_on_the_signal_and_resumes_to_the_unbroken_run(tiny_config, tmp_path):
    """The on-policy loop is the same loop: its samples are keyed by (seed, example, step), so the resumed
    run samples what the unbroken one did."""
    over = ["train.objective=on_policy", "train.max_steps=12", "train.logging_steps=1", "train.save_every=0",
            "train.on_policy.sampling.max_new_tokens=6"]
    path, out = tiny_config(n_train=8)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **REPRODUCIBLE_ENV}
    proc = subprocess.Popen([sys.executable, "-m", "sdft", "train", str(path), *over], cwd=REPO, env=env,
                            stderr=subprocess.PIPE, text=True)
    _signal_when_training(proc, out, lambda: [proc.pid], signal.SIGTERM)
    err = proc.communicate(timeout=240)[1]
    assert proc.returncode == STOPPED_EXIT, err[-3000:]
    stopped_at = len(_logged_steps(out))
    assert f"stopped by SIGTERM after step {stopped_at} of 12" in err
    resumed = run_cli("train", str(path), *over, env=REPRODUCIBLE_ENV)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    ref = run_cli("train", str(path), f"output_dir={tmp_path / 'unbroken'}", *over, env=REPRODUCIBLE_ENV)
    assert ref.returncode == 0, ref.stderr[-3000:]
    _same(_adapter(out), _adapter(tmp_path / "unbroken"))
    assert _logged_steps(out) == list(range(1, 13))


def test_a_signal_after_the_last_step_stops_before_the_next_stage_and_one_between_stages_still_requeues(tiny_config):
    """Preemption need not land in a step (a CI run's did not): after the last step the final weights are
    written, the stage recorded, and the command stops before eval with the stopped exit code; a signal
    to a stage that does not stop on signals (eval) ends the process at once, as by default; both leave
    the launcher's marker, and the reruns finish without training again."""
    path, out = tiny_config(n_train=6, train={"max_steps": 4, "logging_steps": 1, "save_every": 0})
    marker = out.parent / "stopped"
    over: list[str] = []
    env = {"SDFT_STOP_MARKER": str(marker)}

    ended = run_cli("run", str(path), *over, env={**env, "SDFT_SIGNAL_AT": "train_end:1:SIGTERM"})
    assert ended.returncode == STOPPED_EXIT, ended.stderr[-3000:]
    assert "sdft: stopped: train: complete; stopped by SIGTERM before eval" in ended.stderr
    assert (out / "train" / "COMPLETE.json").exists() and not (out / "eval").exists()
    assert not (out / "train" / "checkpoints").exists() or not any((out / "train" / "checkpoints").iterdir())
    assert marker.exists()
    marker.unlink()

    killed = run_cli("run", str(path), *over, env={**env, "SDFT_SIGNAL_AT": "stage:eval:1:SIGTERM"})
    assert killed.returncode == -signal.SIGTERM, killed.stderr[-3000:]
    assert "train: already complete" in killed.stderr and not (out / "eval" / "COMPLETE.json").exists()
    assert marker.exists()
    marker.unlink()

    done = run_cli("run", str(path), *over, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (out / "export" / "COMPLETE.json").exists() and not marker.exists()
    assert _logged_steps(out) == [1, 2, 3, 4]
