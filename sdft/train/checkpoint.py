"""Resumable training checkpoints, written atomically, and resuming from the newest one.

A checkpoint folder ``checkpoints/step-000123`` holds what the backend saves (one process: the
trainable weights as safetensors, optimizer and scheduler states; DeepSpeed: its sharded
checkpoint), every rank's RNG state, and ``state.json``. It is written to a hidden temporary folder
and renamed into place, so a kill never leaves a half checkpoint that looks whole. Resuming restores
all of it, and the data position follows from the step (``batching``), so the resumed run takes
exactly the steps an unbroken run would.

Nothing in a checkpoint carries code: states are loaded with ``torch.load(weights_only=True)``
(tensors, numbers, strings and containers only), so a file planted in an output folder cannot run
anything at the next resume. RNG states are stored in that form too (numpy's as a list of ints).
"""

from __future__ import annotations

import hashlib
import json
import logging
import pickle
import random
import shutil

import numpy as np
import torch

from sdft.config.schema import RunConfig
from sdft.distributed import runtime
from sdft.errors import StageError
from sdft.layout import CheckpointFiles, RunLayout
from sdft.utils.faults import boundary
from sdft.utils.io import atomic_publish_dir, atomic_write_json, writing

log = logging.getLogger(__name__)


def trainable_state(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def rng_state() -> dict:
    """Every RNG this process draws from, in a form ``torch.load(weights_only=True)`` accepts."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_state(path) -> dict:
    """A state file written with ``torch.save``, read without running code from it: one that holds
    anything but tensors, numbers, strings and containers is refused."""
    try:
        return torch.load(path, weights_only=True)
    except pickle.UnpicklingError as e:
        raise StageError(f"{path}: refusing to load it: it holds more than tensors and plain data, so it was "
                         f"not written by sdft ({str(e).splitlines()[0]}); delete the checkpoint folder") from None


def fingerprint(cfg: RunConfig, data_digest: dict) -> str:
    """What a checkpoint must agree on to be resumed: model, training recipe and the exact data (the
    objective's ``digest``)."""
    blob = json.dumps({**cfg.training_recipe(), **data_digest}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def save_checkpoint(layout: RunLayout, step: int, backend, meta: dict, keep: int, objective=None) -> None:
    """Write ``checkpoints/step-<step>`` atomically; keep only the newest ``keep`` checkpoints.

    Collective under several ranks: every rank writes its shard into the same temporary folder
    (a shared file system, as DeepSpeed assumes); rank 0 publishes it after a barrier.
    """
    final, tmp = layout.checkpoint(step), layout.checkpoint_tmp(step)
    if runtime.is_main():
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    runtime.barrier()
    try:
        with writing(final.root):
            files = CheckpointFiles(tmp)
            backend.save(files)
            state = objective.state_dict() if objective is not None else {}
            if state:
                from safetensors.torch import save_file

                save_file({k: v.contiguous() for k, v in state.items()}, str(files.objective(runtime.rank())))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # free what was written at once (a full disk, say)
        raise
    boundary("checkpoint")
    runtime.barrier()
    if runtime.is_main():
        state = {"step": step, "world_size": runtime.world_size(), **meta}
        atomic_write_json(tmp / final.state.name, state)
        atomic_publish_dir(tmp, final.root)
        for old in layout.complete_checkpoints()[:-keep] if keep > 0 else []:
            old.state.unlink()  # first, so that a kill in the middle never leaves a complete-looking half
            shutil.rmtree(old.root, ignore_errors=True)
            boundary("unlinked")
    runtime.barrier()


def resume(layout: RunLayout, expected_fingerprint: str, backend, total_steps: int, objective=None) -> int:
    """Load the newest checkpoint into ``backend`` and return its step (0 when there is none). A
    checkpoint of another model, recipe, data or world size is refused, never half-used."""
    ckpts = layout.complete_checkpoints()
    if not ckpts:
        return 0
    ckpt = ckpts[-1]
    state = json.loads(ckpt.state.read_text())
    if state.get("fingerprint") != expected_fingerprint:
        raise StageError(f"{ckpt.root}: checkpoint was made with another model, train config or data; "
                         f"delete {layout.checkpoints} or use another output_dir")
    if state.get("world_size", 1) != runtime.world_size():
        raise StageError(f"{ckpt.root}: written by {state.get('world_size', 1)} rank(s), now "
                         f"{runtime.world_size()}; resume with the same world size")
    backend.load(ckpt)
    if objective is not None and objective.state_dict():
        from safetensors.torch import load_file

        path = ckpt.objective(runtime.rank())
        if not path.exists():
            raise StageError(f"{ckpt.root}: no objective state for rank {runtime.rank()} ({path.name})")
        objective.load_state_dict(load_file(str(path)))
    log.info("train: resuming from %s (step %d of %d)", ckpt.root.name, state["step"], total_steps)
    return state["step"]
