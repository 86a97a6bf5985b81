"""Resumable training checkpoints, written atomically.

A checkpoint folder ``checkpoints/step-000123`` holds what the backend saves (one process: the
trainable weights as safetensors, optimizer and scheduler states; DeepSpeed: its sharded
checkpoint), every rank's RNG state, and ``state.json``. It is written to a hidden
temporary folder and renamed into place, so a kill never leaves a half checkpoint that looks whole.
Resuming restores all of it, and the data position follows from the step (see ``recipe``), so the
resumed run takes exactly the steps an unbroken run would.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from sdft.distributed import runtime
from sdft.utils.io import atomic_publish_dir

STATE = "state.json"


def trainable_state(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(ckpt_root: Path, step: int, backend, meta: dict, keep: int) -> Path:
    """Write ``ckpt_root/step-<step>`` atomically; keep only the newest ``keep`` checkpoints.

    Collective under several ranks: every rank writes its shard into the same temporary folder
    (a shared file system, as DeepSpeed assumes); rank 0 publishes it after a barrier.
    """
    final = ckpt_root / f"step-{step:06d}"
    tmp = ckpt_root / f".tmp-step-{step:06d}"
    if runtime.rank() == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    runtime.barrier()
    backend.save(tmp)
    runtime.barrier()
    if runtime.rank() == 0:
        (tmp / STATE).write_text(json.dumps({"step": step, "world_size": runtime.world_size(), **meta}, indent=2))
        atomic_publish_dir(tmp, final)
        for old in list_checkpoints(ckpt_root)[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    runtime.barrier()
    return final


def list_checkpoints(ckpt_root: Path) -> list[Path]:
    """Complete checkpoints, oldest first (hidden temporary folders are ignored)."""
    if not ckpt_root.exists():
        return []
    return sorted(p for p in ckpt_root.glob("step-*") if (p / STATE).exists())
