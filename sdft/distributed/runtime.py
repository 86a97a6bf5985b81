"""Process-group set-up for runs under ``torchrun``, ``deepspeed`` or SLURM, and tiny helpers that
every rank calls the same number of times (so nothing can hang on a missing collective).

A single process (no ``WORLD_SIZE`` or ``WORLD_SIZE=1``) never creates a process group; every helper
then degrades to a no-op, so the same stage code runs on one CPU and on a cluster.
"""

from __future__ import annotations

import importlib
import os
import sys
from datetime import timedelta

import torch
import torch.distributed as dist


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    """Rank 0: the one that logs, shows progress bars and writes shared files."""
    return rank() == 0


def is_distributed() -> bool:
    return world_size() > 1


def skip_deepspeed_shm_build() -> None:
    """Keep DeepSpeed's ``init_distributed`` from JIT-compiling its shared-memory all-reduce op (~40 s of
    C++, even with gloo): it only serves inference all-reduce, which sdft never uses."""
    importlib.import_module("deepspeed.comm.torch")
    sys.modules["deepspeed.comm.torch"].build_shm_op = lambda: None


def init(device: torch.device, timeout_s: int = 3600) -> None:
    """Join the process group (NCCL on CUDA, gloo on CPU) when launched with several ranks. A collective
    not complete after ``timeout_s`` raises on the ranks waiting in it (NCCL: its watchdog, with async
    error handling, tears the process down instead of leaving it stuck)."""
    if not is_distributed() or dist.is_initialized():
        return
    if device.type == "cuda":
        torch.cuda.set_device(local_rank())
        os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
    skip_deepspeed_shm_build()
    import deepspeed

    deepspeed.init_distributed(dist_backend="nccl" if device.type == "cuda" else "gloo",
                               timeout=timedelta(seconds=timeout_s))


def is_collective_timeout(error: BaseException) -> bool:
    """Whether ``error`` is a collective that timed out: gloo's "Timed out waiting <n>ms for recv operation"
    or NCCL's watchdog's "collective operation timeout" (not a failure to connect at set-up)."""
    text = str(error).lower()
    return isinstance(error, RuntimeError) and ("timed out waiting" in text or "collective operation timeout" in text)


def local_device(device: torch.device) -> torch.device:
    """The device this rank works on (cuda:<local_rank> under a launcher)."""
    if device.type == "cuda" and is_distributed():
        return torch.device("cuda", local_rank())
    return device


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def all_reduce_sum(value: float | int, device: torch.device | str = "cpu") -> float:
    """Sum a Python number over ranks (identity on one process)."""
    if not dist.is_initialized():
        return value
    t = torch.tensor([float(value)], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.item()


def all_reduce_sums(values: list[float], device: torch.device | str = "cpu") -> list[float]:
    """Sum several Python numbers over ranks in one collective (identity on one process)."""
    if not dist.is_initialized():
        return list(values)
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def any_rank(flag: bool, device: torch.device | str = "cpu") -> bool:
    """True on every rank when ``flag`` is true on any rank (one collective; the flag itself on one process)."""
    return all_reduce_sum(int(flag), device) > 0


def teardown() -> None:
    """Leave the process group cleanly (barrier first, so no rank exits while others still talk)."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
