"""Where the optimizer step happens: plain PyTorch on one process, or a DeepSpeed ZeRO engine.

Both take a ``CausalLMLoss`` (``sdft.train.loss``: the model wrapped with its loss) and expose the
same small surface to the recipe, so the training loop reads the same either way: ``module`` (call
it for a micro-batch's summed loss), ``backward(loss)`` per micro-batch, ``step() -> grad norm`` once per
optimizer step, ``save(dir)`` / ``load(dir)`` for resumable checkpoints, and ``trainable_state()``,
which returns full (gathered) tensors on rank 0 for the final save, named as in the wrapped model.
"""

from __future__ import annotations

from pathlib import Path

import torch

from sdft.distributed import runtime
from sdft.train.checkpoint import rng_state, set_rng_state, trainable_state


class LocalBackend:
    """One process: torch AdamW, clipping, a torch LR scheduler."""

    needs_stand_ins = False  # no collectives: a micro-batch with no examples is simply skipped

    def __init__(self, loss_module, optimizer, scheduler, max_grad_norm: float):
        self.module, self.optimizer, self.scheduler = loss_module, optimizer, scheduler
        self.model = loss_module.model
        self.max_grad_norm = max_grad_norm
        self.params = [p for p in loss_module.parameters() if p.requires_grad]

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def step(self) -> float:
        norm = torch.nn.utils.clip_grad_norm_(self.params, self.max_grad_norm if self.max_grad_norm > 0 else float("inf"))
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(norm)

    def lr(self) -> float:
        return self.scheduler.get_last_lr()[0]

    def save(self, path: Path) -> None:
        from safetensors.torch import save_file

        save_file(trainable_state(self.model), str(path / "trainable.safetensors"))
        torch.save({"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                    "rng": rng_state()}, path / "training_state.pt")

    def load(self, path: Path) -> None:
        from safetensors.torch import load_file

        weights = load_file(str(path / "trainable.safetensors"))
        params = dict(self.model.named_parameters())
        mismatch = set(weights) ^ {n for n, p in params.items() if p.requires_grad}
        if mismatch:
            raise RuntimeError(f"{path}: checkpoint does not match the model's trainable parameters (e.g. "
                               f"{sorted(mismatch)[0]}); was it written with another train.method or LoRA config?")
        with torch.no_grad():
            for n, t in weights.items():
                params[n].copy_(t)
        blob = torch.load(path / "training_state.pt", weights_only=False)
        self.optimizer.load_state_dict(blob["optimizer"])
        self.scheduler.load_state_dict(blob["scheduler"])
        set_rng_state(blob["rng"])

    def trainable_state(self) -> dict[str, torch.Tensor]:
        return trainable_state(self.model)


class DeepSpeedBackend:
    """A DeepSpeed engine (ZeRO 0-3, offload, bf16). The engine clips, steps and averages gradients
    over data-parallel ranks; ``backward`` is given the loss already normalised for that average."""

    TAG = "ds"
    needs_stand_ins = True  # every rank must run every micro-step's collectives

    def __init__(self, loss_module, optimizer, scheduler, ds_config: dict):
        import deepspeed

        self.engine, _, _, _ = deepspeed.initialize(model=loss_module, optimizer=optimizer, lr_scheduler=scheduler,
                                                    config=ds_config)
        self.module = self.engine
        self.scheduler = scheduler
        self.stage = int(ds_config.get("zero_optimization", {}).get("stage", 0))

    def backward(self, loss: torch.Tensor) -> None:
        # The recipe already divided by the step's token count, so no extra 1/accum scaling.
        self.engine.backward(loss, scale_wrt_gas=False)
        self.engine.step()  # counts micro-steps; clips, steps and schedules at the accumulation boundary

    def step(self) -> float:
        norm = self.engine.get_global_grad_norm()
        return float(norm) if norm is not None else float("nan")

    def lr(self) -> float:
        return self.engine.get_lr()[0]

    def save(self, path: Path) -> None:
        self.engine.save_checkpoint(str(path), tag=self.TAG)
        torch.save(rng_state(), path / f"rng_rank{runtime.rank()}.pt")

    def load(self, path: Path) -> None:
        rng_file = path / f"rng_rank{runtime.rank()}.pt"
        if not rng_file.exists():
            raise RuntimeError(f"{path}: no RNG state for rank {runtime.rank()}; resume with the world size "
                               "the checkpoint was written with")
        load_path, _ = self.engine.load_checkpoint(str(path), tag=self.TAG)
        if load_path is None:
            raise RuntimeError(f"{path}: DeepSpeed could not load the checkpoint")
        set_rng_state(torch.load(rng_file, weights_only=False))

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """Full trainable tensors on rank 0 (empty dict elsewhere). Under ZeRO-3 each parameter is
        gathered in turn, so peak extra memory is one parameter, and every rank joins every gather."""
        import deepspeed

        out = {}
        for name, p in self.engine.module.model.named_parameters():
            if not p.requires_grad:
                continue
            if self.stage == 3:
                with deepspeed.zero.GatheredParameters([p], modifier_rank=None):
                    if runtime.rank() == 0:
                        out[name] = p.detach().cpu().clone()
            elif runtime.rank() == 0:
                out[name] = p.detach().cpu().clone()
        return out
