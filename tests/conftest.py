"""Shared fixtures: a tiny random Llama with a local byte-level tokenizer, and config helpers."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

# Without a GPU, Triton kernels run in Triton's CPU interpreter. It must be chosen before anything
# imports triton (triton.language is decorated at import), hence here; ``nvidia-smi`` rather than
# torch keeps this check free of imports. Subprocesses inherit it, harmlessly: on CPU nothing else
# runs Triton code.
if not shutil.which("nvidia-smi"):
    os.environ.setdefault("TRITON_INTERPRET", "1")

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"

# For tests that compare two processes bit for bit (a resumed run with an unbroken one). The resumed run
# executes the same operations in the same order (data position, RNG, optimizer state restored exactly);
# this pins the kernels to reproduce themselves: one thread (no reduction split by the thread count),
# and MKL's strict conditional numerical reproducibility (its float kernels may otherwise choose code
# paths by their operands' memory alignment, which two processes do not share). Seen once in CI without
# it: a resumed adapter off by 7.5e-9 in 111 of 1,024 values.
REPRODUCIBLE_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "MKL_DYNAMIC": "FALSE", "MKL_CBWR": "AUTO,STRICT"}


# Tests whose results are floating-point numbers compared with a reference: ``.ci/run`` runs them again at
# torch's AVX2 and baseline kernel levels (ATEN_CPU_CAPABILITY), the paths other CPUs take.
NUMERIC = ("kernels/", "train/", "models/", "data/test_tokenize.py", "eval/evaluators/test_retention.py", "export/")


def pytest_collection_modifyitems(items):
    for item in items:
        rel = Path(str(item.fspath)).relative_to(REPO / "tests").as_posix()
        if rel.startswith(NUMERIC):
            item.add_marker(pytest.mark.numeric)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    from sdft.models.builtin import build_tiny_llama

    path = tmp_path_factory.mktemp("tiny-llama")
    build_tiny_llama(path)
    return path


@pytest.fixture(scope="session")
def tiny_tok(tiny_model_dir):
    from sdft.models.loading import load_tokenizer

    return load_tokenizer(str(tiny_model_dir))


def tiny_run_config(path: Path, **sections) -> Path:
    """Write the tiny end-to-end run (6 math examples, 4 training steps with a checkpoint at 2, task and
    retention evaluation) that the kill-and-rerun tests use to ``path``, each of ``sections`` merged into
    its section; returns ``path``."""
    import yaml

    data = EXAMPLES / "data"
    cfg = {"model": {"path": "builtin:tiny-llama"},
           "data": {"train": str(data / "math_train.jsonl"), "test": str(data / "math_test.jsonl"),
                    "general_prompts": str(data / "general_prompts.jsonl"), "instruction_field": "question",
                    "output_field": "answer", "limit": 6},
           "distill": {"template": "math", "batch_size": 3, "sampling": {"max_new_tokens": 6}},
           "filter": {"gates": ["ban_list", "math"]},
           "train": {"template": "math", "micro_batch_size": 2, "grad_accum": 1, "max_steps": 4, "save_every": 2,
                     "lr": 1e-3, "cutoff_len": 512},
           "eval": {"evaluators": ["task", "retention"], "limit": 2, "batch_size": 2,
                    "sampling": {"max_new_tokens": 6}, "retention_max_new_tokens": 6}}
    for name, values in sections.items():
        cfg[name] = {**cfg.get(name, {}), **values}
    path.write_text(yaml.safe_dump(cfg))
    return path


def snapshot(root: Path, ignore: tuple[str, ...] = ("run_info", "config.yaml", ".sdft.lock")
             ) -> dict[str, tuple[int, int]]:
    """``{relative path: (mtime_ns, size)}`` of every file under ``root`` except the ``ignore``d top-level
    names and the trackers' folders (what every command writes: its record, the lock, the tracker runs):
    compare two snapshots to prove a rerun rewrote nothing."""
    return {str(p.relative_to(root)): (p.stat().st_mtime_ns, p.stat().st_size) for p in root.rglob("*")
            if p.is_file() and p.relative_to(root).parts[0] not in ignore and "tracking" not in p.relative_to(root).parts}


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def math_rows(n: int, start: int = 0) -> list[dict]:
    """Small arithmetic examples in the shipped data's layout (question/answer)."""
    return [{"id": f"q{i}", "question": f"What is {i} plus {i + 1}?" + " Think." * (i % 3),
             "answer": f"{i} + {i + 1} = {2 * i + 1}.\nThe answer is {2 * i + 1}."} for i in range(start, start + n)]


@pytest.fixture(scope="session")
def bubblewrap():
    """bwrap, which the code sandbox needs: installed with apt-get when missing (as root, as the SLURM
    tests install SLURM), else the test is skipped."""
    if shutil.which("bwrap") is None:
        if os.geteuid() != 0 or shutil.which("apt-get") is None:
            pytest.skip("needs bubblewrap (apt-get install bubblewrap), or root and apt-get to install it")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], capture_output=True, env=env, timeout=300)
        res = subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "bubblewrap"],
                             capture_output=True, text=True, env=env, timeout=300)
        assert res.returncode == 0, res.stderr[-2000:]
    from sdft.eval.sandbox.runner import isolation

    isolation.cache_clear()
    assert isolation() == "bubblewrap", "bwrap is installed but cannot start a confined process here"


def write_tiny_config(folder: Path, model_dir: Path, n_train: int = 10, n_test: int = 4,
                      **sections) -> tuple[Path, Path]:
    """A tiny-run YAML (and its data) written under ``folder``: (config path, output_dir)."""
    import yaml

    write_jsonl(folder / "train.jsonl", math_rows(n_train))
    write_jsonl(folder / "test.jsonl", math_rows(n_test, start=100))
    write_jsonl(folder / "general.jsonl", [{"id": f"g{i}", "prompt": p} for i, p in
                                          enumerate(["Say hi.", "Name a color.", "Count to three."])])
    out = folder / "run"
    cfg = {
        "output_dir": str(out),
        "model": {"path": str(model_dir)},
        "data": {"train": "train.jsonl", "test": "test.jsonl", "general_prompts": "general.jsonl",
                 "instruction_field": "question", "output_field": "answer"},
        "distill": {"template": "math", "batch_size": 3, "sampling": {"max_new_tokens": 8}},
        "filter": {"gates": ["ban_list", "math"]},
        "train": {"template": "math", "micro_batch_size": 2, "grad_accum": 2, "epochs": 2, "lr": 1e-3,
                  "lora_targets": ["all-linear"], "save_every": 2, "cutoff_len": 512,
                  "on_policy": {"sampling": {"max_new_tokens": 8}}},
        "eval": {"sampling": {"max_new_tokens": 8}, "batch_size": 4, "retention_max_new_tokens": 8},
    }
    for name, values in sections.items():
        cfg.setdefault(name, {}).update(values) if isinstance(values, dict) else cfg.__setitem__(name, values)
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path, out


@pytest.fixture
def tiny_config(tmp_path, tiny_model_dir):
    """A factory: write a tiny-run YAML under tmp_path and return (path, output_dir)."""

    def make(n_train: int = 10, n_test: int = 4, **sections) -> tuple[Path, Path]:
        return write_tiny_config(tmp_path, tiny_model_dir, n_train, n_test, **sections)

    return make


def trained_spans(tok, ids: list[int], labels: list[int]) -> list[str]:
    """The stretches of a training sequence that carry a loss, each decoded (a label, where set, must
    be the token itself)."""
    spans, cur = [], []
    for t, lab in zip([*ids, None], [*labels, -100]):
        if lab != -100:
            assert lab == t
            cur.append(t)
        elif cur:
            spans.append(tok.decode(cur))
            cur = []
    return spans


def run_cli(*args: str, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run ``python -m sdft`` in a subprocess (a real process, so SIGKILL tests are real)."""
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **(env or {})}
    return subprocess.run([sys.executable, "-m", "sdft", *args], capture_output=True, text=True, env=full_env,
                          timeout=timeout, cwd=REPO)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_torchrun(nproc: int, *args: str, env: dict | None = None, timeout: int = 300,
                 retry: bool = True) -> subprocess.CompletedProcess:
    """``torchrun --nproc_per_node=N -m sdft ...`` on CPU (gloo). A hang fails by timeout.

    gloo runs end, rarely (~1%), with a rank aborting at interpreter exit after all work is done
    ("terminate called without an active exception"); such a run is retried once, which is safe
    because every stage resumes or skips what is complete.
    """
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1",
                "DS_ACCELERATOR": "cpu", **(env or {})}
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", f"--master_port={free_port()}",
           "-m", "sdft", *args]
    res = subprocess.run(cmd, capture_output=True, text=True, env=full_env, timeout=timeout, cwd=REPO)
    if retry and res.returncode != 0 and "terminate called without an active exception" in res.stderr:
        cmd[4] = f"--master_port={free_port()}"
        again = subprocess.run(cmd, capture_output=True, text=True, env=full_env, timeout=timeout, cwd=REPO)
        # Both attempts' output: the first did the work (the retry skips what it completed), so the lines
        # a test looks for are in its output.
        res = subprocess.CompletedProcess(cmd, again.returncode, res.stdout + again.stdout, res.stderr + again.stderr)
    return res


DISTILLED_TRAIN = {"max_steps": 3, "micro_batch_size": 2, "grad_accum": 2, "lora_dropout": 0.0, "save_every": 0,
                   "lr": 1e-2}


@pytest.fixture(scope="session")
def _distilled_once(tmp_path_factory, tiny_model_dir) -> Path:
    """The distill and filter stages of the ``distilled`` config, run once per session."""
    folder = tmp_path_factory.mktemp("distilled")
    path, out = write_tiny_config(folder, tiny_model_dir, n_train=10, train=DISTILLED_TRAIN)
    res = run_cli("distill", str(path))
    assert res.returncode == 0, res.stderr[-3000:]
    return out


def copy_distilled(src: Path, dst: Path) -> Path:
    """``dst`` with the distill and filter stages of the run folder ``src`` (their records hold for the
    same config)."""
    dst.mkdir(parents=True, exist_ok=True)
    for stage in ("distill", "filter"):
        shutil.copytree(src / stage, dst / stage)
    return dst


def distilled_config(folder: Path, model_dir: Path, distilled_run: Path) -> tuple[Path, Path]:
    """``distilled``'s config written under ``folder``, its output folder holding the session's
    distill+filter stages: (config path, output_dir)."""
    path, out = write_tiny_config(folder, model_dir, n_train=10, train=DISTILLED_TRAIN)
    copy_distilled(distilled_run, out)
    return path, out


@pytest.fixture
def distilled(tmp_path, tiny_model_dir, _distilled_once):
    """A tiny config whose distill+filter stages are done (copied from the session's one run: the same
    config, so their records hold), and a way to copy them to other output dirs."""
    path, out = distilled_config(tmp_path, tiny_model_dir, _distilled_once)
    return path, out, lambda name: copy_distilled(_distilled_once, tmp_path / name)
