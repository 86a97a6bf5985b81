"""The models a run uses: the seed (plain, 4-bit, or partitioned over ranks for distillation) and the
tuned model a run's training stage left in ``train/final``."""

from __future__ import annotations

from pathlib import Path

import torch

from sdft.config.schema import RunConfig
from sdft.distributed import runtime
from sdft.distributed.deepspeed import deepspeed_config, zero3_loading, zero_stage
from sdft.errors import ConfigError, StageError
from sdft.models.loading import hidden_size, load_model
from sdft.models.quantized import load_4bit


def load_seed(cfg: RunConfig, device: torch.device, dtype: str | None = None):
    """The seed in ``dtype`` (default: ``generation.dtype``, the dtype distillation and evaluation use)."""
    return load_model(cfg.model.path, dtype or cfg.generation_dtype, device)


def load_distill_seed(cfg: RunConfig, device: torch.device):
    """The seed that writes the rewrites: partitioned over ranks with ``distill.mode=zero3`` on several
    ranks, 4-bit with ``distill.quantized``, else in ``generation.dtype``."""
    if cfg.distill.mode == "zero3" and runtime.is_distributed():
        return load_seed_zero3(cfg, device)
    return load_4bit(cfg, device) if cfg.distill.quantized else load_seed(cfg, device)


def load_tuned(cfg: RunConfig, final: Path, device: torch.device):
    """The trained model in ``final`` (a run's ``train/final``), in ``generation.dtype``: base + adapter
    (LoRA; a 4-bit base after QLoRA, evaluated as it was trained) or the full model."""
    if not final.is_dir():
        raise StageError(f"{final}: no finished training output; run `sdft train` first")
    if cfg.train.method == "qlora":
        return load_4bit(cfg, device, adapter=final)
    if is_adapter(final):
        return load_model(cfg.model.path, cfg.generation_dtype, device, adapter=final)
    return load_model(str(final), cfg.generation_dtype, device)


def is_adapter(folder: Path) -> bool:
    """True when ``folder`` holds a peft adapter (LoRA, QLoRA) rather than a whole model."""
    return (folder / "adapter_config.json").exists()


def load_seed_zero3(cfg: RunConfig, device: torch.device):
    """The seed model partitioned over ranks at load (ZeRO-3 ``zero.Init``), for ``distill.mode=zero3``.

    With ``distill.zero3_gather`` the bare partitioned module is returned: the caller gathers it
    whole around each generate call, and no per-layer hook may fire (hooks would re-partition
    layers mid-generation and start collectives that only this rank joins). Otherwise the module
    goes through ``deepspeed.initialize``, whose hooks gather each layer as forward reaches it.
    """
    import deepspeed

    ds = deepspeed_config(cfg.distill.deepspeed, "distill.deepspeed", cfg, runtime.world_size(),
                          hidden_size(cfg.model.path))
    if zero_stage(ds) != 3:
        raise ConfigError(f"distill.deepspeed={cfg.distill.deepspeed!r} is ZeRO-{zero_stage(ds)}; "
                          "distill.mode=zero3 needs a stage-3 config (e.g. zero3)")
    keep_alive = zero3_loading(ds)  # noqa: F841 - from_pretrained loads into partitions while it lives
    model = load_model(cfg.model.path, cfg.generation_dtype, device)
    if not cfg.distill.zero3_gather:
        engine, *_ = deepspeed.initialize(model=model, config=ds)
        model.__dict__["_sdft_engine"] = engine  # keep it (and its hooks) alive; not a submodule: that would be a cycle
    return model.eval()
