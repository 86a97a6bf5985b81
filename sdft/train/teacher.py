"""The teacher of on-policy self-distillation: the same network as the student, with other weights.

- ``seed`` under LoRA / QLoRA: the base with the adapters disabled (peft's ``disable_adapter``), so
  no second copy of anything is held.
- ``seed`` under full fine-tuning: a frozen copy of the trainable weights, taken before training.
- ``ema``: a copy of the trainable weights (the adapters only, under LoRA) moved towards the
  student after every optimizer step: teacher <- (1 - rate) teacher + rate student. The average is
  kept in float32 when the weights are in a lower precision (a 1% step is below bf16's resolution).

Inside ``active()`` the model computes the teacher: each trainable parameter's storage is swapped for
the teacher's (a pointer swap, no copy, when dtypes agree) and swapped back on exit, so the forward
runs through the student's own modules, hooks and attention implementation.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from sdft.config.schema import OnPolicyConfig


class Teacher:
    """Teacher weights for ``model`` (a peft model under LoRA, the causal LM under full fine-tuning)."""

    def __init__(self, model, o: OnPolicyConfig, lora: bool):
        self.model, self.kind, self.rate = model, o.teacher, o.ema_rate
        self.adapters_off = lora and o.teacher == "seed"
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.copies: list[torch.Tensor] = []
        if not self.adapters_off:
            with torch.no_grad():
                self.copies = [p.detach().to(torch.promote_types(p.dtype, torch.float32), copy=True)
                               for p in self.params]

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """The model computes the teacher inside this block (no gradient may flow through it)."""
        if self.adapters_off:
            with self.model.disable_adapter():
                yield
            return
        students = [p.data for p in self.params]
        try:
            for p, c in zip(self.params, self.copies):
                p.data = c if c.dtype == p.dtype else c.to(p.dtype)
            yield
        finally:
            for p, s in zip(self.params, students):
                p.data = s

    @torch.no_grad()
    def update(self) -> None:
        """After an optimizer step: move an ``ema`` teacher towards the student."""
        if self.kind == "ema":
            for p, c in zip(self.params, self.copies):
                c.lerp_(p.detach().to(c.dtype), self.rate)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """What a checkpoint must keep: the ``ema`` average (a seed teacher is rebuilt from the seed)."""
        return {f"teacher.{i}": c for i, c in enumerate(self.copies)} if self.kind == "ema" else {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for i, c in enumerate(self.copies if self.kind == "ema" else []):
                c.copy_(state[f"teacher.{i}"])
