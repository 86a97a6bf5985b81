"""launch/ scripts: dry runs print the exact commands; real runs through torchrun, the DeepSpeed
launcher, and a real 2-node SLURM cluster (../shared/slurm) on this machine."""

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, free_port

LAUNCH = REPO / "launch"
SLURM_KIT = REPO.parent / "shared" / "slurm"
VENV_BIN = str(Path(sys.executable).parent)


def _env(**extra):
    return {**os.environ, "PATH": VENV_BIN + os.pathsep + os.environ["PATH"], "OMP_NUM_THREADS": "1",
            "DS_ACCELERATOR": "cpu", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **extra}


def _sh(*cmd, timeout=300, **env):
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env=_env(**env), cwd=REPO,
                          timeout=timeout)


def test_dry_runs_print_the_exact_commands():
    res = _sh("bash", LAUNCH / "torchrun.sh", "--dry-run", "--nproc", "4", "train", "my.yaml", "train.lr=1e-4",
              NNODES="2", MASTER_ADDR="head", MASTER_PORT="1234", RDZV_ID="job7")
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["TORCH_ELASTIC_SHUTDOWN_TIMEOUT=300", "python", "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=4",
                                  "--rdzv-backend=c10d", "--rdzv-endpoint=head:1234", "--rdzv-id=job7",
                                  "--max-restarts=0", "-m", "sdft", "train", "my.yaml", "train.lr=1e-4"]
    res = _sh("bash", LAUNCH / "torchrun.sh", "--dry-run", "--max-restarts", "3", "train", "my.yaml",
              SDFT_STOP_GRACE="45")
    assert "--max-restarts=3" in res.stdout.split() and res.stdout.split()[0] == "TORCH_ELASTIC_SHUTDOWN_TIMEOUT=45"
    for bad in ("-1", "two"):
        res = _sh("bash", LAUNCH / "torchrun.sh", "--dry-run", "--max-restarts", bad, "train", "my.yaml")
        assert res.returncode == 2 and f"--max-restarts {bad}: expected a whole number" in res.stderr
        res = _sh("bash", LAUNCH / "torchrun.sh", "--dry-run", "train", "my.yaml", SDFT_STOP_GRACE=bad)
        assert res.returncode == 2 and f"SDFT_STOP_GRACE={bad}: expected a whole number" in res.stderr
    res = _sh("bash", LAUNCH / "deepspeed.sh", "--dry-run", "--hostfile", "hosts.txt", "run", "my.yaml")
    assert res.stdout.split() == ["deepspeed", "--hostfile", "hosts.txt", "--no_local_rank", "--module", "sdft", "run", "my.yaml"]
    assert _sh("bash", LAUNCH / "torchrun.sh").returncode == 2


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize("launcher", ["torchrun", "deepspeed"])
def test_real_two_rank_training_through_each_launcher(distilled, launcher):
    path, _, clone = distilled
    out = clone(launcher)
    if launcher == "torchrun":
        cmd = ["bash", LAUNCH / "torchrun.sh", "--nproc", "2"]
        env = {"MASTER_PORT": str(free_port())}
    else:
        cmd = ["bash", LAUNCH / "deepspeed.sh", "--num_gpus", "2", "--master_port", str(free_port())]
        env = {}
    res = _sh(*cmd, "train", path, f"output_dir={out}", "train.deepspeed=zero2", "train.grad_accum=1", **env)
    assert res.returncode == 0, res.stderr[-3000:]
    assert (out / "train" / "final" / "adapter_model.safetensors").exists()
    assert "on 2 rank(s)" in res.stderr


@pytest.mark.slow
@pytest.mark.distributed
def test_a_killed_rank_is_restarted_by_torchrun_and_the_run_resumes_to_the_unbroken_weights(distilled, tmp_path):
    """Rank 1 SIGKILLed after step 3 (checkpoint at 2): torchrun restarts both ranks, training resumes at
    step 2 and ends with the weights of a run nothing interrupted."""

    from tests.conftest import REPRODUCIBLE_ENV

    path, _, clone = distilled
    broken, unbroken = clone("restarted"), clone("unbroken")
    over = ("train.deepspeed=zero2", "train.grad_accum=1", "train.max_steps=5", "train.save_every=2")
    cmd = ["bash", LAUNCH / "torchrun.sh", "--nproc", "2"]
    res = _sh(*cmd, "--max-restarts", "1", "train", path, f"output_dir={broken}", *over, MASTER_PORT=str(free_port()),
              SDFT_KILL_AT="train_step:3", SDFT_KILL_RANK="1", SDFT_KILL_ONCE=str(tmp_path / "killed"),
              **REPRODUCIBLE_ENV)
    assert res.returncode == 0, res.stderr[-3000:]
    assert (tmp_path / "killed").exists() and "resuming from step-000002" in res.stderr
    ref = _sh(*cmd, "train", path, f"output_dir={unbroken}", *over, MASTER_PORT=str(free_port()), **REPRODUCIBLE_ENV)
    assert ref.returncode == 0, ref.stderr[-3000:]
    _same_adapters(broken, unbroken)


# ---------------------------------------------------------------- SLURM -------------------------------
slurm = pytest.mark.skipif(not (SLURM_KIT / "start-local-slurm.sh").exists() or os.geteuid() != 0
                           or shutil.which("apt-get") is None,
                           reason="needs ../shared/slurm, root and apt-get to start a local SLURM cluster")


def _start_cluster() -> None:
    """Start the 2-node cluster (4 fake GPUs per node) as ../shared/slurm makes it; a cluster running
    with another slurm.conf is restarted with this one."""
    env = {**os.environ, "LOCAL_SLURM_NODES": "2", "LOCAL_SLURM_GPUS": "4"}
    res = subprocess.run(["bash", str(SLURM_KIT / "start-local-slurm.sh")], capture_output=True, text=True, env=env,
                         timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]


@pytest.fixture(scope="module")
def slurm_cluster():
    """A real 2-node SLURM cluster on this host, with 4 fake GPUs per node."""
    _start_cluster()
    yield
    subprocess.run(["bash", str(SLURM_KIT / "stop-local-slurm.sh")], capture_output=True, timeout=120)


# SLURM's own preemption, as sites configure it: a job of the higher-tier partition takes the nodes of
# a running default-partition job, which gets SIGCONT + SIGTERM (its job steps, not the batch script:
# measured) and GraceTime seconds before SLURM requeues it.
PREEMPTION = ("PreemptType=preempt/partition_prio", "PreemptMode=REQUEUE",
              "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP PriorityTier=1 GraceTime=120",
              "PartitionName=urgent Nodes=ALL MaxTime=INFINITE State=UP PriorityTier=2 PreemptMode=OFF")


@pytest.fixture
def preempting_cluster(slurm_cluster):
    """The 2-node cluster with PREEMPTION added to its slurm.conf (daemons restarted: the preemption
    type is read at start); put back as the start script makes it afterwards."""
    conf = Path("/etc/slurm/slurm.conf")
    lines = [x for x in conf.read_text().splitlines() if not x.startswith(("PartitionName=", "Preempt"))]
    conf.write_text("\n".join([*lines, *PREEMPTION]) + "\n")
    pidfiles = [Path("/run/slurm/slurmctld.pid"), *sorted(Path("/run/slurm").glob("slurmd-node*.pid"))]
    for pf in pidfiles:
        pid = int(pf.read_text())
        os.kill(pid, 15)
        for _ in range(100):
            if not Path(f"/proc/{pid}").exists():
                break
            time.sleep(0.1)
    try:
        for cmd in (["/usr/sbin/slurmctld"], ["/usr/sbin/slurmd", "-N", "node1"], ["/usr/sbin/slurmd", "-N", "node2"]):
            assert subprocess.run(cmd, capture_output=True, timeout=60).returncode == 0, cmd
        for _ in range(120):
            idle = _sh("sinfo", "-h", "-N", "-t", "idle", "-o", "%N").stdout.split()
            if len(set(idle)) == 2 and "urgent" in _sh("sinfo", "-h", "-o", "%P").stdout:
                break
            time.sleep(0.5)
        else:
            pytest.fail(_sh("sinfo").stdout)
        yield
    finally:
        _start_cluster()


def _sbatch(workdir: Path, *args, **env) -> str:
    """sbatch from ``workdir``; the job id."""
    res = _sh("sbatch", "--parsable", f"--chdir={REPO}", f"--output={workdir}/slurm-%j.out", "--time=10",
              *args, **env)
    assert res.returncode == 0, res.stderr
    return res.stdout.strip().split(";")[0]


def _submit(workdir: Path, *args, **env) -> tuple[str, str]:
    """sbatch from ``workdir``; poll until the job ends; return (state, job output)."""
    return _wait(workdir, _sbatch(workdir, *args, **env))


def _wait(workdir: Path, job: str, release: bool = False) -> tuple[str, str]:
    """Poll ``job`` until it ends; return (state, job output). With ``release``, a requeued job is let
    start 5 s after its requeue (SLURM holds one about two minutes, Reason=BeginTime; released at once,
    it can start before its nodes have dropped the last run's credential and fail: "Job credential
    revoked", seen in testing)."""
    state, info, held_since = "", "", None
    for _ in range(480):
        info = _sh("scontrol", "show", "job", job).stdout
        state = info.split("JobState=")[1].split()[0] if "JobState=" in info else ""
        if state in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"):
            break
        held = release and state == "PENDING" and "Reason=BeginTime" in info
        held_since = (held_since or time.monotonic()) if held else None
        if held and time.monotonic() - held_since > 5:
            _sh("scontrol", "update", f"JobId={job}", "StartTime=now")
        time.sleep(0.5)
    else:
        _sh("scancel", job)
    log = workdir / f"slurm-{job}.out"
    # The ranks' and the script's lines share the file: a write can split another's UTF-8 character.
    return state, log.read_text(errors="replace") if log.exists() else f"no job output; scontrol says:\n{info}"


@slurm
@pytest.mark.slow
def test_sbatch_dry_run_two_nodes_four_gpus(slurm_cluster, tmp_path):
    state, out = _submit(tmp_path, "--nodes=2", "--gpus-per-node=4", "--cpus-per-task=1", LAUNCH / "slurm" / "sdft.sbatch",
                         "train", "my.yaml", SDFT_DRY_RUN="1")
    assert state == "COMPLETED", out
    assert "on 2 node(s)" in out and "4 process(es) per node" in out
    line = [x for x in out.splitlines() if "torch.distributed.run" in x][0].split()
    assert line[:4] == ["TORCH_ELASTIC_SHUTDOWN_TIMEOUT=300", "srun", "--ntasks-per-node=1", "--kill-on-bad-exit=1"]
    assert "--nnodes=2" in line and "--nproc_per_node=4" in line and "--rdzv_backend=c10d" in line
    assert any(x.startswith("--rdzv_endpoint=node1:") for x in line) and "--max-restarts=0" in line
    assert line[-4:] == ["-m", "sdft", "train", "my.yaml"]
    assert "time limit 600 s, stop margin 300 s" in out


@slurm
@pytest.mark.slow
@pytest.mark.parametrize("env, message", [
    ({"SDFT_STOP_MARGIN": "60"}, "SDFT_STOP_MARGIN=60 s is not shorter than the job's time limit (60 s)"),
    ({"SDFT_STOP_MARGIN": "-5"}, "SDFT_STOP_MARGIN=-5: expected a whole number"),
    ({"SDFT_MAX_REQUEUES": "-1"}, "SDFT_MAX_REQUEUES=-1: expected a whole number"),
    ({"SDFT_MAX_RESTARTS": "x"}, "SDFT_MAX_RESTARTS=x: expected a whole number"),
    ({"SDFT_STOP_GRACE": "1.5"}, "SDFT_STOP_GRACE=1.5: expected a whole number"),
], ids=["margin-over-limit", "negative-margin", "negative-requeues", "restarts", "grace"])
def test_sbatch_refuses_bad_stop_settings_before_anything_starts(slurm_cluster, tmp_path, env, message):
    """A margin as long as the limit would stop the ranks as they start, requeue after requeue (what
    SLURM's own ``--signal`` does with such a margin: measured, docs/recovery.md)."""
    state, out = _submit(tmp_path, "--time=1", "--nodes=1", "--gpus-per-node=1", "--cpus-per-task=1",
                         LAUNCH / "slurm" / "sdft.sbatch", "train", "my.yaml",
                         **env)
    assert state == "FAILED" and message in out, out
    assert "process(es) per node" not in out  # refused before the job's first line


@slurm
@pytest.mark.slow
@pytest.mark.distributed
def test_sbatch_two_node_training_completes_with_a_checkpoint(slurm_cluster, distilled, tmp_path):
    path, _, clone = distilled
    out = clone("slurm")
    state, log = _submit(tmp_path, "--nodes=2", "--gpus-per-node=1", "--cpus-per-task=1", LAUNCH / "slurm" / "sdft.sbatch",
                         "train", path, f"output_dir={out}", "train.deepspeed=zero2", "train.grad_accum=1",
                         "train.save_every=2", SDFT_NPROC_PER_NODE="1", SDFT_RDZV_PORT=str(free_port()))
    assert state == "COMPLETED", log[-3000:]
    assert (out / "train" / "checkpoints" / "step-000002" / "state.json").exists()
    assert (out / "train" / "final" / "training_summary.json").exists()
    assert "on 2 rank(s)" in log


@slurm
@pytest.mark.slow
@pytest.mark.distributed
def test_a_two_node_sft_job_preempted_by_slurm_checkpoints_requeues_itself_and_resumes_to_the_unbroken_weights(
        preempting_cluster, distilled, tmp_path):
    """Real preemption mid-SFT: a job of a higher-tier partition needs both nodes, SLURM signals the
    job's steps, the ranks stop at one checkpoint, the script learns it from them and requeues the job;
    the urgent job runs, then the second start resumes and finishes with the weights of an unbroken
    two-rank run. (The time-limit test covers SIGUSR1 to the script; distillation and on-policy training
    are stopped by ``scancel --signal=TERM``, the same signal to the same processes, in the test below.)"""
    import json

    from tests.conftest import REPRODUCIBLE_ENV

    path, _, clone = distilled
    out, unbroken = clone("requeued"), clone("unbroken")
    # 300 steps (about 9 s): SLURM's preemption takes a scheduling pass; 40 were done before it in one CI run.
    over = ("train.deepspeed=zero2", "train.grad_accum=1", "train.max_steps=300", "train.logging_steps=1",
            "train.save_every=0")
    job = _sbatch(tmp_path, "--nodes=2", "--gpus-per-node=1", "--cpus-per-task=1", LAUNCH / "slurm" / "sdft.sbatch",
                  "train", path, f"output_dir={out}", *over, SDFT_NPROC_PER_NODE="1",
                  SDFT_RDZV_PORT=str(free_port()), **REPRODUCIBLE_ENV)
    log = out / "train" / "train_log.jsonl"
    deadline = time.time() + 240
    while not log.exists() or len(log.read_text().splitlines()) < 3:
        assert time.time() < deadline, _sh("scontrol", "show", "job", job).stdout
        time.sleep(0.05)
    urgent = _sbatch(tmp_path, "--partition=urgent", "--nodes=2", "--exclusive", "--wrap", "date +%s.%N; sleep 2")
    assert _wait(tmp_path, urgent)[0] == "COMPLETED"
    state, text = _wait(tmp_path, job, release=True)
    assert state == "COMPLETED", text[-3000:]
    # SLURM signalled the job step only (the batch script's own trap would say "got SIGTERM").
    assert "the ranks got SIGTERM (not this script)" in text and f"requeueing job {job} (1 of 3)" in text
    assert "got SIGTERM:" not in text
    assert "start 2 (requeued 1" in text
    assert "stopped by SIGTERM after step" in text and "resuming from step-" in text
    info = _sh("scontrol", "show", "job", job).stdout
    assert "Restarts=1" in info
    # The urgent job ran on the nodes between the two starts (ISO times compare as strings).
    assert _sh("scontrol", "show", "job", urgent).stdout.split("EndTime=")[1][:19] <= info.split("StartTime=")[1][:19]
    steps = [json.loads(x)["step"] for x in log.read_text().splitlines()]
    assert steps == list(range(1, 301))
    ref = _sh("bash", LAUNCH / "torchrun.sh", "--nproc", "2", "train", path, f"output_dir={unbroken}", *over,
              MASTER_PORT=str(free_port()), **REPRODUCIBLE_ENV)
    assert ref.returncode == 0, ref.stderr[-3000:]
    _same_adapters(out, unbroken)


def _same_adapters(a: Path, b: Path) -> None:
    import torch
    from safetensors.torch import load_file

    x, y = (load_file(str(d / "train" / "final" / "adapter_model.safetensors")) for d in (a, b))
    assert x.keys() == y.keys()
    for k in x:
        torch.testing.assert_close(x[k], y[k], rtol=0, atol=0)


@slurm
@pytest.mark.slow
@pytest.mark.distributed
def test_a_two_node_job_longer_than_its_time_limit_stops_requeues_and_ends_with_the_unbroken_weights(
        slurm_cluster, distilled, tmp_path):
    """A 1-minute limit, SDFT_STOP_MARGIN=40: the script's timer stops the ranks 40 s before the limit,
    at a checkpoint, and requeues the job, as many times as the training needs; the job completes with
    every step logged once and the weights of an unbroken two-rank run."""
    import json

    from tests.conftest import REPRODUCIBLE_ENV

    path, _, clone = distilled
    out, unbroken = clone("time-limited"), clone("unbroken")
    over = ("train.deepspeed=zero2", "train.grad_accum=8", "train.max_steps=150", "train.logging_steps=1",
            "train.save_every=0")
    job = _sbatch(tmp_path, "--time=1", "--nodes=2", "--gpus-per-node=1", "--cpus-per-task=1",
                  LAUNCH / "slurm" / "sdft.sbatch", "train", path, f"output_dir={out}", *over, SDFT_NPROC_PER_NODE="1",
                  SDFT_RDZV_PORT=str(free_port()), SDFT_STOP_MARGIN="40", SDFT_MAX_REQUEUES="6", **REPRODUCIBLE_ENV)
    state, text = _wait(tmp_path, job, release=True)
    assert state == "COMPLETED", text[-3000:]
    starts = text.count("sdft: job ")
    assert starts >= 2 and text.count("s left of the time limit (SDFT_STOP_MARGIN=40)") == starts - 1, text[-3000:]
    assert f"requeueing job {job} ({starts - 1} of 6)" in text and text.count("resuming from step-") == starts - 1
    assert f"Restarts={starts - 1}" in _sh("scontrol", "show", "job", job).stdout
    log = out / "train" / "train_log.jsonl"
    assert [json.loads(x)["step"] for x in log.read_text().splitlines()] == list(range(1, 151))
    ref = _sh("bash", LAUNCH / "torchrun.sh", "--nproc", "2", "train", path, f"output_dir={unbroken}", *over,
              MASTER_PORT=str(free_port()), **REPRODUCIBLE_ENV)
    assert ref.returncode == 0, ref.stderr[-3000:]
    _same_adapters(out, unbroken)


@slurm
@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize("stage", ["distill-zero3", "on-policy-zero3"])
def test_a_preempted_two_node_job_requeues_itself_and_ends_as_an_unbroken_run(slurm_cluster, tiny_config, tmp_path,
                                                                              stage):
    """``scancel --signal=TERM <job>`` (what preemption sends; it reaches the job step, not the batch
    script) mid-distillation or mid-on-policy-training, both with ZeRO-3 on two nodes: the ranks stop at a
    batch or step boundary, the script learns it from the ranks (SDFT_STOP_MARKER) and requeues the job,
    which resumes and ends with what an unbroken two-rank run wrote."""
    import json

    from tests.conftest import REPRODUCIBLE_ENV

    if stage == "distill-zero3":
        path, out = tiny_config(n_train=40, distill={"batch_size": 2, "mode": "zero3",
                                                     "sampling": {"max_new_tokens": 24}})
        cmd, over = "distill", ()
        progress = out / "distill" / "rewrites.part-0.jsonl"
    else:
        path, out = tiny_config(n_train=8)
        cmd = "train"
        over = ("train.objective=on_policy", "train.deepspeed=zero3", "train.grad_accum=1", "train.max_steps=30",
                "train.logging_steps=1", "train.save_every=0", "train.on_policy.sampling.max_new_tokens=6")
        progress = out / "train" / "train_log.jsonl"
    job = _sbatch(tmp_path, "--nodes=2", "--gpus-per-node=1", "--cpus-per-task=1", LAUNCH / "slurm" / "sdft.sbatch",
                  cmd, path, *over, SDFT_NPROC_PER_NODE="1", SDFT_RDZV_PORT=str(free_port()), **REPRODUCIBLE_ENV)
    deadline = time.time() + 240
    while not progress.exists() or len(progress.read_text().splitlines()) < 3:
        assert time.time() < deadline, _sh("scontrol", "show", "job", job).stdout
        time.sleep(0.05)
    assert _sh("scancel", "--signal=TERM", job).returncode == 0
    state, text = _wait(tmp_path, job, release=True)
    assert state == "COMPLETED", text[-3000:]
    assert "the ranks got SIGTERM (not this script): they stopped; the requeued job resumes" in text, text[-3000:]
    assert f"requeueing job {job} (1 of 3)" in text and "start 2 (requeued 1" in text
    assert "sdft: stopped: " in text and ("resuming" in text.split("start 2 (requeued 1")[1])
    unbroken = tmp_path / "unbroken"
    ref = _sh("bash", LAUNCH / "torchrun.sh", "--nproc", "2", cmd, path, f"output_dir={unbroken}", *over,
              MASTER_PORT=str(free_port()), **REPRODUCIBLE_ENV)
    assert ref.returncode == 0, ref.stderr[-3000:]
    if cmd == "distill":
        got, want = ({json.loads(x)["id"]: json.loads(x) for x in (d / "distill" / "rewrites.jsonl").read_text().splitlines()}
                     for d in (out, unbroken))
        assert got == want and len(got) == 40
    else:
        _same_adapters(out, unbroken)
        steps = [json.loads(x)["step"] for x in progress.read_text().splitlines()]
        assert steps == list(range(1, 31))


@slurm
@pytest.mark.slow
@pytest.mark.distributed
def test_a_rank_killed_in_a_two_node_job_is_restarted_across_nodes_and_ends_with_the_unbroken_weights(
        slurm_cluster, distilled, tmp_path):
    """SDFT_MAX_RESTARTS=1: the rank on the second node SIGKILLed after step 3 (checkpoint at 2); both
    nodes' torchrun agents meet again through the c10d rendezvous, training resumes at step 2 and the job
    completes, without a requeue, with the weights of an unbroken run."""
    import json

    from tests.conftest import REPRODUCIBLE_ENV

    path, _, clone = distilled
    out, unbroken = clone("restarted-2node"), clone("unbroken")
    over = ("train.deepspeed=zero2", "train.grad_accum=1", "train.max_steps=6", "train.save_every=2",
            "train.logging_steps=1")
    state, text = _submit(tmp_path, "--nodes=2", "--gpus-per-node=1", "--cpus-per-task=1",
                          LAUNCH / "slurm" / "sdft.sbatch", "train", path, f"output_dir={out}", *over,
                          SDFT_NPROC_PER_NODE="1", SDFT_RDZV_PORT=str(free_port()), SDFT_MAX_RESTARTS="1",
                          SDFT_KILL_AT="train_step:3", SDFT_KILL_RANK="1", SDFT_KILL_ONCE=str(tmp_path / "killed"),
                          **REPRODUCIBLE_ENV)
    assert state == "COMPLETED", text[-3000:]
    assert (tmp_path / "killed").exists() and "resuming from step-000002" in text and "requeueing" not in text
    log = out / "train" / "train_log.jsonl"
    assert [json.loads(x)["step"] for x in log.read_text().splitlines()] == [1, 2, 3, 4, 5, 6]
    ref = _sh("bash", LAUNCH / "torchrun.sh", "--nproc", "2", "train", path, f"output_dir={unbroken}", *over,
              MASTER_PORT=str(free_port()), **REPRODUCIBLE_ENV)
    assert ref.returncode == 0, ref.stderr[-3000:]
    _same_adapters(out, unbroken)
