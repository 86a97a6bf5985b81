"""The model and optimizer training starts from: the seed made trainable (LoRA adapters, LoRA on a 4-bit
base, or every weight), loaded straight into ZeRO-3 partitions when the DeepSpeed config asks for it."""

from __future__ import annotations

import logging

import torch

from sdft.config.schema import RunConfig, TrainConfig
from sdft.distributed.deepspeed import zero3_loading, zero_stage
from sdft.errors import ConfigError
from sdft.models.loading import load_model
from sdft.models.quantized import load_4bit

log = logging.getLogger(__name__)


def build_model(cfg: RunConfig, device: torch.device, ds: dict | None):
    """The seed model made trainable: LoRA adapters (only they train, on a 4-bit base for qlora) or
    every weight. Returned in train mode."""
    keep_alive = zero3_loading(ds) if zero_stage(ds) == 3 else None
    if cfg.train.method == "qlora":
        from peft import prepare_model_for_kbit_training

        # Train mode before anything runs: see sdft.models.quantized on bitsandbytes' eval-mode repack.
        model = load_4bit(cfg, device, zero3=keep_alive is not None).train()
        # Norms and head to fp32 and input grads on, so checkpointing works through the frozen 4-bit layers.
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.train.gradient_checkpointing,
                                                gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        model = load_model(cfg.model.path, cfg.model.dtype, device)
        if cfg.train.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if keep_alive is not None:
        model._sdft_ds_ref = keep_alive
    model.config.use_cache = False
    if cfg.train.method in ("lora", "qlora"):
        from peft import LoraConfig, get_peft_model

        targets = cfg.train.lora_targets
        lora = LoraConfig(r=cfg.train.lora_r, lora_alpha=cfg.train.lora_alpha, lora_dropout=cfg.train.lora_dropout,
                          target_modules="all-linear" if targets == ["all-linear"] else targets, task_type="CAUSAL_LM")
        try:
            model = get_peft_model(model, lora)
        except ValueError as e:
            raise ConfigError(f"train.lora_targets={targets}: {e}") from e
    model.train()
    return model


def build_optimizer(t: TrainConfig, params):
    """AdamW: torch's, or bitsandbytes' 8-bit / paged variant (``train.optimizer``)."""
    if t.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay)
    import bitsandbytes as bnb

    cls = {"adamw_8bit": bnb.optim.AdamW8bit, "paged_adamw": bnb.optim.PagedAdamW,
           "paged_adamw_8bit": bnb.optim.PagedAdamW8bit}[t.optimizer]
    return cls(params, lr=t.lr, weight_decay=t.weight_decay)


def log_4bit_layout(model) -> None:
    """Say whether ZeRO-3 partitioned the 4-bit weights (it does only when their storage dtype is the
    load dtype; otherwise every rank silently holds them all)."""
    import bitsandbytes as bnb

    weights = [m.weight for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    parted = sum(1 for w in weights if hasattr(w, "ds_id"))
    log.info("train: qlora: %d 4-bit weights (storage %s), %d partitioned by ZeRO-3", len(weights),
             weights[0].dtype if weights else None, parted)


def parameter_counts(model, params) -> tuple[int, int]:
    """(trainable, total) parameter counts; ZeRO-3 partitions count as their full size."""
    def numel(p) -> int:
        return p.ds_numel if hasattr(p, "ds_numel") else p.numel()

    return sum(numel(p) for p in params), sum(numel(p) for p in model.parameters())
