"""Kill ``sdft run`` at every write boundary of a tiny run (each temporary file written, rename,
append, torn append, unlink and checkpoint save), rerun it, and check that nothing was lost,
duplicated or mixed: the same rewrites, training log, weights, eval.json and export as an unbroken
run, and no temporary file left.

The runs are forked from a server process that has imported sdft already (``multiprocessing``'s
forkserver), two at a time, so each costs its work and not an interpreter start."""

import json
import multiprocessing
import os
from pathlib import Path

import pytest
from safetensors.torch import load_file

from tests.conftest import REPRODUCIBLE_ENV, tiny_run_config

pytestmark = pytest.mark.slow

FILES = ["distill/rewrites.jsonl", "filter/train.jsonl", "train/final/adapter_model.safetensors",
         "export/model/model.safetensors"]


def _config(tmp_path: Path) -> Path:
    return tiny_run_config(tmp_path / "crash.yaml", train={"keep_checkpoints": 1})


def _child(config: str, out: str, env: dict, log: str) -> None:
    """One ``sdft run`` in a forked child; its exit code is the run's (-9 when killed)."""
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.environ.update(env)
    import torch

    torch.set_num_threads(1)
    from sdft import cli

    os._exit(cli.main(["run", config, f"output_dir={out}"]))


def _run(ctx, config: Path, out: Path, **env) -> multiprocessing.Process:
    base = {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **REPRODUCIBLE_ENV}
    p = ctx.Process(target=_child, args=(str(config), str(out), {**base, **env}, str(out) + ".log"))
    p.start()
    return p


def _outcome(out: Path) -> dict:
    """What must not differ from an unbroken run."""
    got = {name: (out / name).read_bytes() for name in FILES if not name.endswith(".safetensors")}
    for name in FILES:
        if name.endswith(".safetensors"):
            got[name] = {k: v.tolist() for k, v in load_file(str(out / name)).items()}
    got["train_log"] = [(r["step"], r["loss"]) for r in map(json.loads, (out / "train/train_log.jsonl").read_text().splitlines())]
    report = json.loads((out / "eval/eval.json").read_text())
    got["eval"] = {k: report[k] for k in ("seed", "tuned", "delta", "std")}
    got["complete"] = sorted(p.parent.name for p in out.glob("*/COMPLETE.json"))
    return got


def test_a_kill_at_every_write_boundary_resumes_to_the_unbroken_result(tmp_path, monkeypatch):
    monkeypatch.setenv("SDFT_CACHE", str(tmp_path / "cache"))
    from sdft.models.builtin import TINY, resolve_model_path

    resolve_model_path(TINY)  # built once here, so that the runs below all find it (and trace the same writes)
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "transformers", "peft", "sdft.cli", "sdft.pipeline"])
    config = _config(tmp_path)
    trace = tmp_path / "boundaries.txt"
    ref = _run(ctx, config, tmp_path / "reference", SDFT_CACHE=str(tmp_path / "cache"), SDFT_TRACE_WRITES=str(trace))
    ref.join(300)
    assert ref.exitcode == 0, (tmp_path / "reference.log").read_text()[-3000:]
    kinds = trace.read_text().split()
    assert {"written", "renamed", "appended", "torn", "unlinked", "checkpoint"} <= set(kinds)
    want = _outcome(tmp_path / "reference")
    assert want["complete"] == ["distill", "eval", "export", "filter", "train"]

    def kill_then_rerun(n: int):
        out = tmp_path / f"kill-{n:03d}"
        env = {"SDFT_CACHE": str(tmp_path / "cache")}
        killed = _run(ctx, config, out, SDFT_KILL_AT=f"write:{n}", **env)
        killed.join(300)
        rerun = _run(ctx, config, out, **env) if killed.exitcode == -9 else None
        return out, killed, rerun

    failures, pending = [], []
    for n in range(1, len(kinds) + 1):  # two at a time: the machine has two cores
        pending.append((n, kill_then_rerun(n)))
        if len(pending) == 2 or n == len(kinds):
            for k, (out, killed, rerun) in pending:
                if killed.exitcode != -9:
                    failures.append(f"boundary {k} ({kinds[k - 1]}): not killed, exit {killed.exitcode}")
                    continue
                rerun.join(300)
                if rerun.exitcode != 0:
                    failures.append(f"boundary {k} ({kinds[k - 1]}): rerun exit {rerun.exitcode}: "
                                    + Path(str(out) + ".log").read_text()[-1500:])
                    continue
                got = _outcome(out)
                diff = [key for key in want if got[key] != want[key]]
                left = [str(p) for p in out.rglob("*") if p.name.startswith(".") and ".tmp-" in p.name]
                if diff or left:
                    failures.append(f"boundary {k} ({kinds[k - 1]}): differs in {diff}, temporary files left {left}")
            pending = []
    assert not failures, "\n".join(failures)
    print(f"killed at {len(kinds)} write boundaries ({', '.join(f'{k} {kinds.count(k)}' for k in sorted(set(kinds)))}); "
          "every rerun reached the unbroken run's result")
