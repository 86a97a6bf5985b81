"""``sdft plan``: what a configuration needs on a given cluster, before a GPU is spent.

This version counts, from the model's ``config.json`` alone, the model states (weights, gradients,
optimizer states) per rank for every ZeRO setting, and the weights and the engine's KV cache of
distillation and evaluation; training activations, the loss head, an on-policy teacher and the time a
run takes are not counted yet (docs/plan.md).
"""

from __future__ import annotations

from dataclasses import asdict

from sdft.config.schema import RunConfig
from sdft.models.builtin import resolve_model_path
from sdft.plan.cards import Card
from sdft.plan.memory import ZeroSetting, frozen_bytes, kv_cache_bytes, model_states
from sdft.plan.shape import ModelShape, model_shape

SETTINGS = (ZeroSetting(0), ZeroSetting(1), ZeroSetting(2), ZeroSetting(2, offload_optimizer=True), ZeroSetting(3),
            ZeroSetting(3, offload_optimizer=True), ZeroSetting(3, offload_optimizer=True, offload_params=True))
_WEIGHT_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
GIB = 2**30


def load_shape(cfg: RunConfig) -> ModelShape:
    """The shape of ``model.path``'s model, from its config.json (no weights are read)."""
    from transformers import AutoConfig

    return model_shape(AutoConfig.from_pretrained(resolve_model_path(cfg.model.path)))


def trainable_params(cfg: RunConfig, shape: ModelShape) -> int:
    """What ``train.method`` trains: every parameter, or the LoRA matrices of ``train.lora_targets``."""
    t = cfg.train
    return shape.total_params if t.method == "full" else shape.lora_params(t.lora_targets, t.lora_r)


def plan(cfg: RunConfig, shape: ModelShape, gpu: Card, gpus_per_node: int, nodes: int = 1) -> dict:
    """Model states per rank (GPU) and per node (CPU) for each ZeRO setting, and whether they fit ``gpu``."""
    trainable = trainable_params(cfg, shape)
    rows = []
    for setting in SETTINGS:
        b = model_states(shape, cfg.train.method, trainable, _WEIGHT_BYTES[cfg.model.dtype], setting, gpus_per_node,
                         nodes)
        rows.append({"setting": setting.name, "gpu_gib": b.gpu / GIB, "cpu_gib": b.cpu / GIB,
                     "fits": b.gpu <= gpu.memory_gib * GIB})
    return {"model": cfg.model.path, "total_params": shape.total_params, "trainable_params": trainable,
            "method": cfg.train.method, "gpu": asdict(gpu), "gpus_per_node": gpus_per_node, "nodes": nodes,
            "model_states": rows, "generation": generation(cfg, shape, gpu)}


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
                    "kv_cache_gib": kv / GIB, "fits": weights + kv <= gpu.memory_gib * GIB})
    return out


def render(report: dict) -> str:
    """The plan as the terminal shows it."""
    gpu = report["gpu"]
    lines = [f"model {report['model']}: {report['total_params'] / 1e6:,.1f}M parameters, "
             f"{report['trainable_params'] / 1e6:,.3f}M trained ({report['method']})",
             f"{report['nodes']} node(s) x {report['gpus_per_node']} {gpu['name']} ({gpu['memory_gib']:.1f} GiB)", "",
             "model states (weights, gradients, Adam; DeepSpeed's accounting):",
             f"  {'setting':<24}{'GPU GiB/rank':>14}{'CPU GiB/node':>14}  fits"]
    for r in report["model_states"]:
        lines.append(f"  {r['setting']:<24}{r['gpu_gib']:>14.2f}{r['cpu_gib']:>14.2f}  {'yes' if r['fits'] else 'no'}")
    lines += ["", "generation per rank (replica mode; the longest prompt at its bound):",
              f"  {'stage':<10}{'slots':>6}{'tokens/slot':>13}{'weights GiB':>13}{'KV cache GiB':>14}  fits"]
    for g in report["generation"]:
        lines.append(f"  {g['stage']:<10}{g['slots']:>6}{g['capacity']:>13}{g['weights_gib']:>13.2f}"
                     f"{g['kv_cache_gib']:>14.2f}  {'yes' if g['fits'] else 'no'}")
    lines += ["", "not counted yet: training activations, the loss head, an on-policy teacher and its sampling, "
              "allocator headroom, time (docs/plan.md)"]
    return "\n".join(lines)
