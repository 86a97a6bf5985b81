"""``sdft plan``: what a configuration needs on a given cluster, before a GPU is spent.

This version counts, from the model's ``config.json`` alone, the training step's peak per rank for every
ZeRO setting (model states: weights, gradients, optimizer states; the activations of a micro-batch,
with or without gradient checkpointing; the loss head, fused or not; allocator headroom), and the
weights and the engine's KV cache of distillation and evaluation. An on-policy teacher and its sampling
and the time a run takes are not counted yet (docs/plan.md).
"""

from __future__ import annotations

from dataclasses import asdict

import torch

from sdft.config.schema import RunConfig
from sdft.models.builtin import resolve_model_path
from sdft.plan.activations import count_activations, loss_head_bytes
from sdft.plan.cards import Card
from sdft.plan.memory import ZeroSetting, frozen_bytes, kv_cache_bytes, model_states
from sdft.plan.shape import ModelShape, model_shape

SETTINGS = (ZeroSetting(0), ZeroSetting(1), ZeroSetting(2), ZeroSetting(2, offload_optimizer=True), ZeroSetting(3),
            ZeroSetting(3, offload_optimizer=True), ZeroSetting(3, offload_optimizer=True, offload_params=True))
_WEIGHT_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
GIB = 2**30
CONTEXT_GIB = 0.5
"""The CUDA context and library workspaces: device memory outside PyTorch's allocator."""
FRAGMENTATION = 0.05
"""What the caching allocator reserves beyond the bytes it has handed out, as a share of them."""


def load_model_config(cfg: RunConfig):
    """The transformers config of ``model.path``'s model, from its config.json (no weights are read)."""
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(resolve_model_path(cfg.model.path))


def needed_bytes(allocated: int) -> int:
    """A card's memory that ``allocated`` bytes at the allocator's peak take: with its reserve and the context."""
    return int(allocated * (1 + FRAGMENTATION) + CONTEXT_GIB * GIB)


def trainable_params(cfg: RunConfig, shape: ModelShape) -> int:
    """What ``train.method`` trains: every parameter, or the LoRA matrices of ``train.lora_targets``."""
    t = cfg.train
    return shape.total_params if t.method == "full" else shape.lora_params(t.lora_targets, t.lora_r)


def training(cfg: RunConfig, config, shape: ModelShape) -> dict:
    """One micro-batch's training memory beyond the model states, the same under every ZeRO setting:
    the activations autograd saves for ``train.micro_batch_size`` rows of ``train.cutoff_len`` tokens
    (the bound: a packed row is that long, a padded batch at most), and the loss head's peak."""
    t = cfg.train
    dtype = getattr(torch, cfg.model.dtype)
    lora = None
    if t.method != "full":  # QLoRA: counted as LoRA on a base at model.dtype (4-bit layers save their input too)
        lora = dict(r=t.lora_r, lora_alpha=t.lora_alpha, lora_dropout=t.lora_dropout,
                    target_modules="all-linear" if t.lora_targets == ["all-linear"] else t.lora_targets)
    acts = count_activations(config, dtype, t.micro_batch_size, t.cutoff_len, lora)
    fused = t.fused_loss == "on" or (t.fused_loss == "auto" and shape.fused_loss_blocker is None)
    head = loss_head_bytes(t.micro_batch_size * t.cutoff_len, shape.hidden_size, shape.vocab_size,
                           _WEIGHT_BYTES[cfg.model.dtype], fused, head_trained=t.method == "full")
    return {"micro_batch": t.micro_batch_size, "tokens_per_row": t.cutoff_len,
            "checkpointing": t.gradient_checkpointing, "activations_gib": acts.saved(t.gradient_checkpointing) / GIB,
            "activations_other_gib": acts.saved(not t.gradient_checkpointing) / GIB,
            "fused_loss": fused, "loss_head_gib": head / GIB}


def plan(cfg: RunConfig, config, gpu: Card, gpus_per_node: int, nodes: int = 1) -> dict:
    """The training step's peak per rank (GPU) and the model states per node (CPU) for each ZeRO setting,
    whether they fit ``gpu``, and distillation's and evaluation's memory, for the transformers ``config``."""
    shape = model_shape(config)
    trainable = trainable_params(cfg, shape)
    train = training(cfg, config, shape)
    step_bytes = int((train["activations_gib"] + train["loss_head_gib"]) * GIB)
    rows = []
    for setting in SETTINGS:
        b = model_states(shape, cfg.train.method, trainable, _WEIGHT_BYTES[cfg.model.dtype], setting, gpus_per_node,
                         nodes)
        peak = b.gpu + step_bytes
        rows.append({"setting": setting.name, "states_gib": b.gpu / GIB, "peak_gib": peak / GIB,
                     "needed_gib": needed_bytes(peak) / GIB, "cpu_gib": b.cpu / GIB,
                     "fits": needed_bytes(peak) <= gpu.memory_gib * GIB})
    return {"model": cfg.model.path, "total_params": shape.total_params, "trainable_params": trainable,
            "method": cfg.train.method, "objective": cfg.train.objective, "gpu": asdict(gpu),
            "gpus_per_node": gpus_per_node, "nodes": nodes, "training": train, "zero": rows,
            "generation": generation(cfg, shape, gpu)}


def generation(cfg: RunConfig, shape: ModelShape, gpu: Card) -> list[dict]:
    """Distillation and evaluation on one rank (replica mode): the weights at ``generation.dtype`` and the
    engine's KV cache for its slots, the longest prompt taken at its bound (``distill.cutoff_len``; for
    evaluation ``train.cutoff_len``, as the data is not read)."""
    width = _WEIGHT_BYTES[cfg.generation_dtype]
    quantized = cfg.distill.quantized
    out = []
    for stage, slots, prompt, new in (
            ("distill", cfg.distill.batch_size, cfg.distill.cutoff_len, cfg.distill.sampling.max_new_tokens),
            ("eval", cfg.eval.batch_size, cfg.train.cutoff_len, cfg.eval.sampling.max_new_tokens)):
        weights = (frozen_bytes(shape, "qlora", width) if stage == "distill" and quantized
                   else shape.total_params * width)
        kv = kv_cache_bytes(shape, slots, prompt + new, width)
        out.append({"stage": stage, "slots": slots, "capacity": prompt + new, "weights_gib": weights / GIB,
                    "kv_cache_gib": kv / GIB, "fits": needed_bytes(weights + kv) <= gpu.memory_gib * GIB})
    return out


def render(report: dict) -> str:
    """The plan as the terminal shows it."""
    gpu, t = report["gpu"], report["training"]
    ckpt = "on" if t["checkpointing"] else "off"
    lines = [f"model {report['model']}: {report['total_params'] / 1e6:,.1f}M parameters, "
             f"{report['trainable_params'] / 1e6:,.3f}M trained ({report['method']})",
             f"{report['nodes']} node(s) x {report['gpus_per_node']} {gpu['name']} ({gpu['memory_gib']:.1f} GiB)", "",
             f"training step per rank: micro-batch {t['micro_batch']} x {t['tokens_per_row']} tokens; activations "
             f"{t['activations_gib']:.2f} GiB (gradient checkpointing {ckpt}; {'off' if t['checkpointing'] else 'on'}: "
             f"{t['activations_other_gib']:.2f} GiB), loss head {t['loss_head_gib']:.2f} GiB "
             f"({'fused' if t['fused_loss'] else 'full logits'})",
             f"  {'setting':<24}{'states GiB':>12}{'peak GiB':>10}{'+headroom':>11}{'CPU GiB/node':>14}  fits"]
    for r in report["zero"]:
        lines.append(f"  {r['setting']:<24}{r['states_gib']:>12.2f}{r['peak_gib']:>10.2f}{r['needed_gib']:>11.2f}"
                     f"{r['cpu_gib']:>14.2f}  {'yes' if r['fits'] else 'no'}")
    lines += ["  (states: weights, gradients, Adam, DeepSpeed's accounting; peak: + activations + loss head; "
              f"+headroom: x{1 + FRAGMENTATION:g} + {CONTEXT_GIB} GiB CUDA context)",
              "", "generation per rank (replica mode; the longest prompt at its bound):",
              f"  {'stage':<10}{'slots':>6}{'tokens/slot':>13}{'weights GiB':>13}{'KV cache GiB':>14}  fits"]
    for g in report["generation"]:
        lines.append(f"  {g['stage']:<10}{g['slots']:>6}{g['capacity']:>13}{g['weights_gib']:>13.2f}"
                     f"{g['kv_cache_gib']:>14.2f}  {'yes' if g['fits'] else 'no'}")
    missing = "time"
    if report["objective"] == "on_policy":
        missing = "on-policy training's teacher and sampling, " + missing
    lines += ["", f"not counted yet: {missing} (docs/plan.md)"]
    return "\n".join(lines)
