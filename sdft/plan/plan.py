"""``sdft plan``: what a configuration needs on a given cluster, before a GPU is spent.

From the model's ``config.json`` alone: the training step's peak per rank for every ZeRO setting (model
states: weights, gradients, optimizer states; the activations of a micro-batch, with or without gradient
checkpointing; the loss head, fused or not; allocator headroom), the cheapest setting that fits
(``recommend``), the weights and the engine's KV cache of distillation and evaluation, and with the
data's size the time each stage takes (``timing``).
"""

from __future__ import annotations

from dataclasses import asdict

import torch

from sdft.config.schema import RunConfig
from sdft.models.builtin import resolve_model_path
from sdft.plan.activations import count_activations, divergence_head_bytes, loss_head_bytes, prefill_bytes
from sdft.plan.cards import Card
from sdft.plan.memory import (
    Bytes,
    StepMemory,
    ZeroSetting,
    frozen_bytes,
    kv_cache_bytes,
    model_states,
    plain_pytorch,
    step_memory,
)
from sdft.plan.recommend import SHIPPED, Choice, cheapest
from sdft.plan.shape import ModelShape, model_shape
from sdft.plan.timing import Workload, estimate

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


class TrainingMemory:
    """A training step's bytes on a rank for any ZeRO setting, checkpointing and micro-batch: the model
    states plus one micro-batch's activations and loss head. The activations are counted once, for the
    configured micro-batch (``train.micro_batch_size`` rows of ``train.cutoff_len`` tokens: the bound, a
    packed row is that long, a padded batch at most), and scaled by rows for another micro-batch."""

    def __init__(self, cfg: RunConfig, config, shape: ModelShape, gpus_per_node: int, nodes: int, cuda: bool = True):
        t = cfg.train
        self.cfg, self.shape, self.gpus_per_node, self.nodes = cfg, shape, gpus_per_node, nodes
        self.cuda = cuda  # False: the same run on the CPU (benchmarks compare the plan with CPU runs)
        self.width = _WEIGHT_BYTES[cfg.model.dtype]
        self.trainable = trainable_params(cfg, shape)
        lora = None
        if t.method != "full":
            lora = dict(r=t.lora_r, lora_alpha=t.lora_alpha, lora_dropout=t.lora_dropout,
                        target_modules="all-linear" if t.lora_targets == ["all-linear"] else t.lora_targets)
        # On-policy training runs each prompt's samples as rows of prompt + answer, at most cutoff_len long.
        self.on_policy = t.objective == "on_policy"
        self.samples = t.on_policy.samples_per_prompt if self.on_policy else 1
        self.acts = count_activations(config, getattr(torch, cfg.model.dtype), t.micro_batch_size * self.samples,
                                      t.cutoff_len, lora, quantized=t.method == "qlora")
        # QLoRA's prepared model computes past its norms, and its loss head, in float32.
        self.head_width = 4 if t.method == "qlora" else self.width
        self.fused = t.fused_loss == "on" or (t.fused_loss == "auto" and shape.fused_loss_blocker is None)

    def _per_micro(self, counted: int, micro: int | None) -> int:
        """Bytes counted for the configured micro-batch, for ``micro`` rows instead (they scale with rows)."""
        configured = self.cfg.train.micro_batch_size
        return counted * (micro or configured) // configured

    def activations(self, checkpointing: bool, micro: int | None = None) -> int:
        return self._per_micro(self.acts.saved(checkpointing), micro)

    def backward_peak(self, checkpointing: bool, micro: int | None = None) -> int:
        """The most the decoder's forward and backward hold at once (``Activations.backward_peak``)."""
        return self._per_micro(self.acts.backward_peak(checkpointing), micro)

    def head(self, micro: int | None = None) -> int:
        t = self.cfg.train
        rows = (micro or t.micro_batch_size) * self.samples
        trained = t.method == "full"
        if self.on_policy:  # every answer token scored, at its bound
            return divergence_head_bytes(rows * t.cutoff_len, rows * t.on_policy.sampling.max_new_tokens,
                                         self.shape.hidden_size, self.shape.vocab_size, self.head_width, self.fused,
                                         trained, cuda=self.cuda)
        return loss_head_bytes(rows * t.cutoff_len, self.shape.hidden_size, self.shape.vocab_size, self.head_width,
                               self.fused, head_trained=trained, cuda=self.cuda)

    def teacher(self) -> int:
        """On-policy training's teacher weights: none for LoRA's seed teacher (the adapters are switched
        off), else a float32 copy of the trained weights (``train.teacher``)."""
        if not self.on_policy or (self.cfg.train.method != "full" and self.cfg.train.on_policy.teacher == "seed"):
            return 0
        return self.trainable * 4

    def sampling(self, setting: ZeroSetting) -> int:
        """On-policy training's sampling between steps: the engine's KV cache for this rank's prompts of a
        step (micro-batch x accumulation x samples, capacity ``train.cutoff_len``) and, under ZeRO-3, the
        weights the other ranks hold, gathered for it."""
        if not self.on_policy:
            return 0
        t = self.cfg.train
        kv = kv_cache_bytes(self.shape, t.micro_batch_size * t.grad_accum * self.samples, t.cutoff_len, self.width)
        world = self.gpus_per_node * self.nodes
        gathered = self.shape.total_params * self.width * (world - 1) // world if setting.stage == 3 else 0
        return kv + gathered

    def states(self, setting: ZeroSetting) -> Bytes:
        """Weights, gradients and optimizer states: DeepSpeed's accounting, or plain PyTorch's on one rank."""
        ds = model_states(self.shape, self.cfg.train.method, self.trainable, self.width, setting,
                          self.gpus_per_node, self.nodes)
        if plain_pytorch(setting, self.gpus_per_node * self.nodes):
            phases = self.phases(setting)
            return Bytes(phases.held + phases.gradients, ds.cpu)
        return ds

    def phases(self, setting: ZeroSetting) -> StepMemory:
        """The step's memory phase by phase beside the activations (``memory.step_memory``)."""
        return step_memory(self.shape, self.cfg.train.method, self.trainable, self.width, setting,
                           self.gpus_per_node, self.nodes, self.cuda, self.cfg.train.optimizer)

    def peak(self, setting: ZeroSetting, checkpointing: bool, micro: int | None = None) -> int:
        """Bytes allocated at the step's peak on a rank: what is held across steps (and an on-policy
        teacher), then the largest of the phases that follow one another: forward and backward (the
        activations with the loss head, or backward's own peak, and ZeRO's buffers), the end of backward
        (the gradients, and one recomputed layer under checkpointing), the optimizer step and on-policy
        sampling."""
        m = self.phases(setting)
        # The loss head's peak comes at the end of forward; backward then frees it as it makes the
        # layers' gradients (and under checkpointing recomputes each layer).
        forward = max(self.activations(checkpointing, micro) + self.head(micro),
                      self.backward_peak(checkpointing, micro)) + m.backward
        end_of_backward = m.gradients + (self._per_micro(self.acts.per_layer, micro) if checkpointing else 0)
        return m.held + self.teacher() + max(forward, end_of_backward, m.step, self.sampling(setting))

    def supported(self, setting: ZeroSetting) -> bool:
        """False where sdft refuses the setting: on-policy training with a teacher copy under ZeRO-3."""
        return not (setting.stage == 3 and self.teacher() > 0)

    def needed(self, setting: ZeroSetting, checkpointing: bool, micro: int | None = None) -> float:
        """Card memory the step takes: its peak with the allocator's reserve and the CUDA context
        (infinite for a setting sdft does not support, so nothing recommends it)."""
        if not self.supported(setting):
            return float("inf")
        return needed_bytes(self.peak(setting, checkpointing, micro))


def plan(cfg: RunConfig, config, gpu: Card, gpus_per_node: int, nodes: int = 1, work: Workload | None = None) -> dict:
    """The training step's peak per rank (GPU) and the model states per node (CPU) for each ZeRO setting,
    whether they fit ``gpu``, the cheapest setting that fits, distillation's and evaluation's memory, and
    (with ``work``) the time each stage takes, for the transformers ``config``."""
    shape = model_shape(config)
    t = cfg.train
    mem = TrainingMemory(cfg, config, shape, gpus_per_node, nodes)
    ckpt = t.gradient_checkpointing
    rows = []
    for setting in SETTINGS:
        states, peak, supported = mem.states(setting), mem.peak(setting, ckpt), mem.supported(setting)
        rows.append({"setting": setting.name, "states_gib": states.gpu / GIB, "peak_gib": peak / GIB,
                     "needed_gib": needed_bytes(peak) / GIB, "cpu_gib": states.cpu / GIB,
                     "fits": supported and needed_bytes(peak) <= gpu.memory_gib * GIB, "supported": supported})
    world = gpus_per_node * nodes
    choice = cheapest(mem.needed, t.micro_batch_size, t.grad_accum, gpu.memory_gib * GIB, world)
    timing = estimate(cfg, shape, gpu, world, work, _WEIGHT_BYTES[cfg.generation_dtype]) if work else None
    return {"model": cfg.model.path, "total_params": shape.total_params, "trainable_params": mem.trainable,
            "method": t.method, "objective": t.objective, "gpu": asdict(gpu),
            "gpus_per_node": gpus_per_node, "nodes": nodes,
            "training": {"micro_batch": t.micro_batch_size, "tokens_per_row": t.cutoff_len, "checkpointing": ckpt,
                         "activations_gib": mem.activations(ckpt) / GIB,
                         "activations_other_gib": mem.activations(not ckpt) / GIB,
                         "fused_loss": mem.fused, "loss_head_gib": mem.head() / GIB,
                         "teacher_gib": mem.teacher() / GIB, "sampling_gib": mem.sampling(ZeroSetting(2)) / GIB,
                         "samples_per_prompt": mem.samples, "on_policy": mem.on_policy},
            "zero": rows, "recommendation": _choice_dict(choice), "generation": generation(cfg, config, shape, gpu, world),
            "time": timing}


def _choice_dict(choice: Choice | None) -> dict | None:
    if choice is None:
        return None
    return {"setting": choice.setting.name, "checkpointing": choice.checkpointing, "micro_batch": choice.micro_batch,
            "grad_accum": choice.grad_accum, "needed_gib": choice.needed_bytes / GIB,
            "shipped": SHIPPED.get(choice.setting), "plain_pytorch": choice.plain_pytorch,
            "overrides": choice.overrides(), **asdict(choice.setting)}


def generation(cfg: RunConfig, config, shape: ModelShape, gpu: Card, world: int = 1) -> list[dict]:
    """Distillation and evaluation on one rank: the weights at ``generation.dtype``, the engine's KV
    cache for its slots and its first prefill over all of them (``activations.prefill_bytes``, traced for
    the transformers ``config``), the longest prompt taken at its bound
    (``distill.cutoff_len``; for evaluation ``train.cutoff_len``, as the data is not read). Replica mode
    holds the whole model on each rank; distillation in ``distill.mode=zero3`` on several ranks holds
    its share of the weights plus what it gathers: the whole model once per batch
    (``distill.zero3_gather``), or one module at a time."""
    width = _WEIGHT_BYTES[cfg.generation_dtype]
    d = cfg.distill
    out = []
    for stage, slots, prompt, new in (("distill", d.batch_size, d.cutoff_len, d.sampling.max_new_tokens),
                                      ("eval", cfg.eval.batch_size, cfg.train.cutoff_len, cfg.eval.sampling.max_new_tokens)):
        whole = shape.total_params * width
        if stage == "distill" and d.quantized:
            whole = frozen_bytes(shape, "qlora", width, training=False)
        weights, mode = whole, "replica"
        if stage == "distill" and d.mode == "zero3" and world > 1:
            gathered = whole if d.zero3_gather else shape.largest_layer_params * width
            weights = shape.total_params * width // world + gathered
            mode = "zero3, whole model gathered" if d.zero3_gather else "zero3, a module at a time"
        kv = kv_cache_bytes(shape, slots, prompt + new, width)
        prefill = prefill_bytes(config, getattr(torch, cfg.generation_dtype), slots, prompt)
        out.append({"stage": stage, "mode": mode, "slots": slots, "capacity": prompt + new, "weights_gib": weights / GIB,
                    "kv_cache_gib": kv / GIB, "prefill_gib": prefill / GIB,
                    "fits": needed_bytes(weights + kv + prefill) <= gpu.memory_gib * GIB})
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
                     f"{r['cpu_gib']:>14.2f}  {_fits(r)}")
    lines += ["  (states: weights, gradients, Adam; DeepSpeed's accounting, ZeRO-0 on one GPU plain PyTorch's; peak: "
              "what stays between steps + the largest phase: forward and backward (activations, loss head, ZeRO's "
              f"buffers) or the optimizer step; +headroom: x{1 + FRAGMENTATION:g} + {CONTEXT_GIB} GiB CUDA context)",
              "", "generation per rank (the longest prompt at its bound):",
              f"  {'stage':<10}{'slots':>6}{'tokens/slot':>13}{'weights GiB':>13}{'KV cache GiB':>14}"
              f"{'prefill GiB':>13}  fits  mode"]
    for g in report["generation"]:
        lines.append(f"  {g['stage']:<10}{g['slots']:>6}{g['capacity']:>13}{g['weights_gib']:>13.2f}"
                     f"{g['kv_cache_gib']:>14.2f}{g['prefill_gib']:>13.2f}  {'yes' if g['fits'] else 'no ':<4} {g['mode']}")
    if t["on_policy"]:
        lines.insert(4, f"  on-policy: {t['samples_per_prompt']} sample(s) a prompt, rows of prompt + answer; teacher "
                        f"weights {t['teacher_gib']:.2f} GiB; sampling between steps: KV cache {t['sampling_gib']:.2f} "
                        "GiB (+ the gathered weights at ZeRO-3)")
    lines += ["", *_render_recommendation(report), "", *_render_time(report)]
    return "\n".join(lines)


def _fits(row: dict) -> str:
    if not row["supported"]:
        return "not supported (an on-policy teacher copy under ZeRO-3)"
    return "yes" if row["fits"] else "no"


def _render_recommendation(report: dict) -> list[str]:
    r = report["recommendation"]
    if r is None:
        return [f"recommended: nothing fits {report['gpu']['name']}: even ZeRO-3 with the weights on the CPU, "
                "gradient checkpointing and micro-batch 1 need more; use more or larger cards, LoRA, or a shorter "
                "train.cutoff_len"]
    where = ("plain PyTorch (one process, no DeepSpeed)" if r["plain_pytorch"] else
             f"train.deepspeed={r['shipped']} (shipped)" if r["shipped"] else "no shipped config: --write-ds-config PATH")
    return [f"recommended (the cheapest that fits): {r['setting']}, micro-batch {r['micro_batch']} x accumulation "
            f"{r['grad_accum']}, gradient checkpointing {'on' if r['checkpointing'] else 'off'}: "
            f"{r['needed_gib']:.2f} GiB with headroom, {where}",
            f"  sdft run CONFIG {' '.join(r['overrides'])}"]


def _render_time(report: dict) -> list[str]:
    t = report["time"]
    if t is None:
        why = ("the card is given by its memory only" if report["gpu"]["bf16_tflops"] is None
               else "data.train is not a local file with a tokenizer beside the model: give --examples N --avg-tokens N")
        return [f"time: not estimated ({why})"]
    s = t["seconds"]
    parts = ", ".join(f"{k} {_hours(v)}" for k, v in s.items())
    return [f"time (upper estimate): {parts}; {t['optimizer_steps']:,} optimizer steps, "
            f"{t['train_tokens']:,.0f} training tokens ({t['source']})",
            f"  assumed: training at {t['train_efficiency']:.2f} of the card's bf16 peak (sdft's measured H100 step), "
            f"decoding at {t['decode_efficiency']:.2f} of its bandwidth (not measured yet), every answer at "
            "max_new_tokens"]


def _hours(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.1f} s"
