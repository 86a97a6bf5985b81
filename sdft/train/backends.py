"""Where forward, backward and the optimizer step happen: plain PyTorch on one process, or a DeepSpeed
ZeRO engine on one or many ranks. The recipe's step reads the same either way (``Backend``).

A backend runs the objective's loss module (``forward(micro-batch) -> summed loss``) and owns the two
rules that differ between the two: how a summed loss becomes gradients of the step's mean (DeepSpeed
averages gradients over ranks, so its loss is scaled by the world size), and what a rank does at a
micro-step where it has no examples (one process skips it; a DeepSpeed rank runs a fully masked
stand-in, because every rank must join every micro-step's collectives).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Protocol

import torch

from sdft.distributed import runtime
from sdft.distributed.deepspeed import zero_stage
from sdft.errors import StageError
from sdft.layout import CheckpointFiles
from sdft.train.checkpoint import load_state, rng_state, set_rng_state, trainable_state

Batch = dict[str, torch.Tensor]


class Backend(Protocol):
    """What the training recipe calls, per micro-batch and per optimizer step."""

    stage: int | None
    """The ZeRO stage, or None without DeepSpeed."""

    def micro_batches(self, batches: list[Batch | None], stand_in: Callable[[], Batch]) -> Iterator[Batch]:
        """The micro-batches this rank runs at this step: ``batches`` with the empty ones (None) skipped
        or replaced by ``stand_in()``."""

    def forward(self, batch: Batch) -> torch.Tensor:
        """The summed loss of one micro-batch (scalar)."""

    def backward(self, loss_sum: torch.Tensor, n_tokens: int) -> None:
        """Accumulate the gradient of ``loss_sum / n_tokens`` summed over every rank: ``n_tokens`` is the
        step's response tokens on all ranks (the step's update is the mean over its tokens at any world
        size), or, with ``train.loss_average=micro_batches``, this micro-batch's tokens times the step's
        micro-batches on all ranks (HF Trainer's average of micro-batch means)."""

    def step(self) -> float:
        """Clip, step the optimizer and the schedule, zero the gradients; returns the gradient norm."""

    def lr(self) -> float: ...

    def save(self, ckpt: CheckpointFiles) -> None:
        """Write this rank's part of a resumable checkpoint (weights, optimizer, scheduler, RNG)."""

    def load(self, ckpt: CheckpointFiles) -> None: ...

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """Full trainable tensors on rank 0 (empty elsewhere), named as in the model; a collective."""

    def generating(self) -> AbstractContextManager:
        """The model, whole and in eval mode, to generate with the current weights (a collective under
        ZeRO-3: every rank enters it); back in train mode on exit."""


@contextlib.contextmanager
def _eval_mode(model) -> Iterator:
    """``model`` in eval mode (no dropout), except bitsandbytes' 4-bit layers, which stay in train mode:
    on CPU one eval-mode forward repacks their weights into a layout without autograd and silently
    zeroes the LoRA gradients below them (``sdft.models.quantized``). Their mode changes nothing else."""
    was_training = model.training
    model.eval()
    bnb = sys.modules.get("bitsandbytes")
    if bnb is not None:
        for m in model.modules():
            if isinstance(m, bnb.nn.Linear4bit):
                m.training = True
    try:
        yield model
    finally:
        model.train(was_training)


class LocalBackend:
    """One process: torch (or bitsandbytes) AdamW, clipping, a torch LR scheduler, bf16 autocast."""

    stage = None

    def __init__(self, module: torch.nn.Module, optimizer, scheduler, max_grad_norm: float, bf16: bool,
                 device: torch.device):
        self.module, self.optimizer, self.scheduler = module, optimizer, scheduler
        self.model = module.model
        self.max_grad_norm = max_grad_norm
        self.params = [p for p in module.parameters() if p.requires_grad]
        self.autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext

    def micro_batches(self, batches: list[Batch | None], stand_in: Callable[[], Batch]) -> Iterator[Batch]:
        return (b for b in batches if b is not None)  # no collectives: nothing to join

    def forward(self, batch: Batch) -> torch.Tensor:
        with self.autocast():
            return self.module(**batch)

    def backward(self, loss_sum: torch.Tensor, n_tokens: int) -> None:
        (loss_sum / max(n_tokens, 1)).backward()

    def step(self) -> float:
        norm = torch.nn.utils.clip_grad_norm_(self.params, self.max_grad_norm if self.max_grad_norm > 0 else float("inf"))
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(norm)

    def lr(self) -> float:
        return self.scheduler.get_last_lr()[0]

    def save(self, ckpt: CheckpointFiles) -> None:
        from safetensors.torch import save_file

        save_file(trainable_state(self.model), str(ckpt.trainable))
        torch.save({"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                    "rng": rng_state()}, ckpt.optimizer)

    def load(self, ckpt: CheckpointFiles) -> None:
        from safetensors.torch import load_file

        weights = load_file(str(ckpt.trainable))
        params = dict(self.model.named_parameters())
        mismatch = set(weights) ^ {n for n, p in params.items() if p.requires_grad}
        if mismatch:
            raise StageError(f"{ckpt.root}: checkpoint does not match the model's trainable parameters (e.g. "
                             f"{sorted(mismatch)[0]}); was it written with another train.method or LoRA config?")
        with torch.no_grad():
            for n, t in weights.items():
                params[n].copy_(t)
        blob = load_state(ckpt.optimizer)
        self.optimizer.load_state_dict(blob["optimizer"])
        self.scheduler.load_state_dict(blob["scheduler"])
        set_rng_state(blob["rng"])

    def trainable_state(self) -> dict[str, torch.Tensor]:
        return trainable_state(self.model)

    def generating(self) -> AbstractContextManager:
        return _eval_mode(self.model)


class DeepSpeedBackend:
    """A DeepSpeed engine (ZeRO 0-3, offload, bf16 from its config). The engine clips, steps and
    averages gradients over data-parallel ranks at the accumulation boundary."""

    def __init__(self, module: torch.nn.Module, optimizer, scheduler, ds_config: dict):
        import deepspeed

        self.engine, _, _, _ = deepspeed.initialize(model=module, optimizer=optimizer, lr_scheduler=scheduler,
                                                    config=ds_config)
        self.stage = zero_stage(ds_config)

    def micro_batches(self, batches: list[Batch | None], stand_in: Callable[[], Batch]) -> Iterator[Batch]:
        return (b if b is not None else stand_in() for b in batches)

    def forward(self, batch: Batch) -> torch.Tensor:
        return self.engine(**batch)

    def backward(self, loss_sum: torch.Tensor, n_tokens: int) -> None:
        # The engine averages gradients over ranks, hence x world: the update is sum(loss) / n_tokens.
        # The loss is already normalised for the whole step, so no extra 1/accum scaling.
        self.engine.backward(loss_sum * runtime.world_size() / max(n_tokens, 1), scale_wrt_gas=False)
        self.engine.step()  # counts micro-steps; clips, steps and schedules at the accumulation boundary

    def step(self) -> float:
        norm = self.engine.get_global_grad_norm()
        return float(norm) if norm is not None else float("nan")

    def lr(self) -> float:
        return self.engine.get_lr()[0]

    def save(self, ckpt: CheckpointFiles) -> None:
        self.engine.save_checkpoint(str(ckpt.root), tag=ckpt.DEEPSPEED_TAG)
        torch.save(rng_state(), ckpt.rng(runtime.rank()))

    def load(self, ckpt: CheckpointFiles) -> None:
        rng_file = ckpt.rng(runtime.rank())
        if not rng_file.exists():
            raise StageError(f"{ckpt.root}: no RNG state for rank {runtime.rank()}; resume with the world size "
                             "the checkpoint was written with")
        load_path, _ = self.engine.load_checkpoint(str(ckpt.root), tag=ckpt.DEEPSPEED_TAG)
        if load_path is None:
            raise StageError(f"{ckpt.root}: DeepSpeed could not load the checkpoint")
        set_rng_state(load_state(rng_file))

    @contextlib.contextmanager
    def generating(self) -> Iterator:
        """Under ZeRO-3 the whole model is gathered once and the engine's per-module gather hooks are
        lifted meanwhile (DeepSpeed's ``unwrap_model_for_generation``), so generation runs locally."""
        model = self.engine.module.model
        if self.stage != 3:
            with _eval_mode(model):
                yield model
            return
        from deepspeed.runtime.zero.stage3 import unwrap_model_for_generation

        with unwrap_model_for_generation(self.engine), _eval_mode(model):
            yield model

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """Under ZeRO-3 each parameter is gathered in turn, so peak extra memory is one parameter, and
        every rank joins every gather."""
        import deepspeed

        out = {}
        for name, p in self.engine.module.model.named_parameters():
            if not p.requires_grad:
                continue
            if self.stage == 3:
                with deepspeed.zero.GatheredParameters([p], modifier_rank=None):
                    if runtime.is_main():
                        out[name] = p.detach().cpu().clone()
            elif runtime.is_main():
                out[name] = p.detach().cpu().clone()
        return out


def build_backend(module: torch.nn.Module, optimizer, scheduler, ds_config: dict | None, max_grad_norm: float,
                  bf16: bool, device: torch.device) -> Backend:
    """DeepSpeed when there is a DeepSpeed config, else plain PyTorch."""
    if ds_config is None:
        return LocalBackend(module, optimizer, scheduler, max_grad_norm, bf16, device)
    return DeepSpeedBackend(module, optimizer, scheduler, ds_config)
