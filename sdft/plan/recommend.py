"""The cheapest training setting that fits the card, as a DeepSpeed config and the overrides to use.

ZeRO-0 on one GPU is sdft's plain PyTorch training (``train.deepspeed=`` empty; the plan counts what it
holds, ``memory.step_memory``); on several GPUs it needs a stage-0 DeepSpeed config.

Candidates are tried cheapest first: no CPU offload before offload (the PCIe traffic costs more than
anything else), the least ZeRO partitioning first (fewer collectives), gradient checkpointing off before
on (it recomputes the forward, about a third more work); within each, the largest micro-batch up to the
configured one whose accumulation keeps the configured global batch (micro x accumulation x ranks).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from sdft.distributed.deepspeed import load_ds_config
from sdft.plan.memory import ZeroSetting, plain_pytorch

_ON_GPU = (ZeroSetting(0), ZeroSetting(1), ZeroSetting(2), ZeroSetting(3))
_OFFLOAD = (ZeroSetting(2, offload_optimizer=True), ZeroSetting(3, offload_optimizer=True),
            ZeroSetting(3, offload_optimizer=True, offload_params=True))
ORDER = ([(s, False) for s in _ON_GPU] + [(s, True) for s in _ON_GPU]
         + [(s, False) for s in _OFFLOAD] + [(s, True) for s in _OFFLOAD])
"""(setting, gradient checkpointing), cheapest first."""
SHIPPED = {ZeroSetting(1): "zero1", ZeroSetting(2): "zero2", ZeroSetting(2, offload_optimizer=True): "zero2_offload",
           ZeroSetting(3): "zero3", ZeroSetting(3, offload_optimizer=True, offload_params=True): "zero3_offload"}


@dataclass(frozen=True)
class Choice:
    setting: ZeroSetting
    checkpointing: bool
    micro_batch: int
    grad_accum: int
    needed_bytes: int

    world: int

    @property
    def plain_pytorch(self) -> bool:
        return plain_pytorch(self.setting, self.world)

    def overrides(self, ds_path: str | None = None) -> list[str]:
        """The ``key=value`` overrides that select this setting (``ds_path``: where its config was written,
        for a setting no shipped config has)."""
        ds = "" if self.plain_pytorch else SHIPPED.get(self.setting) or ds_path or "<the written ds_config.json>"
        return [f"train.deepspeed={ds}", f"train.micro_batch_size={self.micro_batch}",
                f"train.grad_accum={self.grad_accum}", f"train.gradient_checkpointing={str(self.checkpointing).lower()}"]


def micro_batches(micro: int, accum: int) -> list[tuple[int, int]]:
    """(micro-batch, accumulation) pairs with the product ``micro x accum``, micro-batch at most ``micro``,
    largest first."""
    total = micro * accum
    return [(m, total // m) for m in range(micro, 0, -1) if total % m == 0]


def cheapest(needed, micro: int, accum: int, memory_bytes: float, world: int) -> Choice | None:
    """The first of ``ORDER`` x ``micro_batches`` whose ``needed(setting, checkpointing, micro)`` bytes fit
    ``memory_bytes``; None when nothing does."""
    for setting, ckpt in ORDER:
        for m, a in micro_batches(micro, accum):
            n = needed(setting, ckpt, m)
            if n <= memory_bytes:
                return Choice(setting, ckpt, m, a, n, world)
    return None


def ds_config(setting: ZeroSetting) -> dict:
    """A complete DeepSpeed config for ``setting`` ("auto" left where sdft fills it from the run's config):
    the shipped one when there is one, else the shipped config of its stage with the offload set."""
    name = SHIPPED.get(setting) or {0: "zero1", 1: "zero1", 2: "zero2", 3: "zero3"}[setting.stage]
    raw, _ = load_ds_config(name)
    zero = raw["zero_optimization"]
    zero["stage"] = setting.stage
    for key, on in (("offload_optimizer", setting.offload_optimizer), ("offload_param", setting.offload_params)):
        if on:
            zero[key] = {"device": "cpu", "pin_memory": True}
        else:
            zero.pop(key, None)
    return raw


def write_ds_config(setting: ZeroSetting, path) -> None:
    """Write ``ds_config(setting)`` as JSON to ``path``."""
    from sdft.utils.io import atomic_write_text

    atomic_write_text(path, json.dumps(ds_config(setting), indent=2) + "\n")
