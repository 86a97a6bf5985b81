"""Model-state memory per rank: weights, gradients and optimizer states under ZeRO 0-3 and CPU offload,
for full fine-tuning, LoRA and QLoRA.

The accounting is DeepSpeed's (mixed precision with Adam): a trainable parameter costs 2 bytes for its
16-bit copy and 18 for the rest (16-bit and 32-bit gradients, the 32-bit master copy, Adam's two moments),
which ZeRO partitions over the ranks: stage 1 the 32-bit states, stage 2 the gradients too, stage 3 the
16-bit weights as well (a rank then holds its share plus the largest module, gathered for its forward).
For full fine-tuning under ZeRO-2 and ZeRO-3 the figures equal DeepSpeed's own estimators
(``estimate_zero2_model_states_mem_needs``, ``estimate_zero3_model_states_mem_needs``), CPU side and its
1.5x loading buffer included. LoRA and QLoRA add the frozen base, stored at its own width (QLoRA: 4-bit
linear layers with their quantisation constants), replicated below ZeRO-3 and partitioned at ZeRO-3.
"""

from __future__ import annotations

from dataclasses import dataclass

from sdft.plan.shape import ModelShape

BUFFER = 1.5  # DeepSpeed's additional_buffer_factor: the CPU memory of loading and offload


@dataclass(frozen=True)
class ZeroSetting:
    """A DeepSpeed ZeRO setting: ``stage`` 0-3, the optimizer states (and at stage 3 the weights) on the CPU."""

    stage: int
    offload_optimizer: bool = False
    offload_params: bool = False

    @property
    def name(self) -> str:
        offload = "+offload params" if self.offload_params else "+offload" if self.offload_optimizer else ""
        return f"ZeRO-{self.stage}{offload}"


@dataclass(frozen=True)
class Bytes:
    gpu: int
    """Per rank."""
    cpu: int
    """Per node."""


def trainable_states(trainable: int, largest_layer: int, setting: ZeroSetting, gpus_per_node: int,
                     nodes: int = 1, zero_init: bool = True) -> Bytes:
    """The model states of ``trainable`` parameters trained in mixed precision with Adam."""
    world = gpus_per_node * nodes
    s = setting
    if s.stage <= 2:
        sharded = {0: 18, 1: 16, 2: 18}[s.stage]  # what ZeRO partitions, of the 18 bytes
        # ZeRO-1 keeps every 16-bit gradient on each rank; its 32-bit gradients are made for the rank's
        # partition only (DeepSpeed's stage-1/2 optimizer; measured: benchmarks/plan_zero.py).
        kept = {0: 0, 1: 2, 2: 0}[s.stage]
        if s.offload_optimizer:
            return Bytes(2 * trainable, int(trainable * max(4 * world, 16) * BUFFER))
        return Bytes(2 * trainable + kept * trainable + int(sharded * trainable / (world if s.stage else 1)),
                     int(trainable * 4 * gpus_per_node * BUFFER))
    largest = 4 * largest_layer
    per_node = 1 / nodes
    if s.offload_optimizer and s.offload_params:
        cpu = trainable * 18 * per_node if zero_init else trainable * max(4 * gpus_per_node, 18 * per_node)
        return Bytes(largest, int(cpu * BUFFER))
    if s.offload_optimizer:
        cpu = trainable * 16 * per_node if zero_init else trainable * max(4 * gpus_per_node, 16 * per_node)
        return Bytes(largest + int(2 * trainable / world), int(cpu * BUFFER))
    cpu = largest_layer * 4 * gpus_per_node if zero_init else trainable * 4 * gpus_per_node
    return Bytes(largest + int(18 * trainable / world), int(cpu * BUFFER))


def frozen_bytes(shape: ModelShape, method: str, weight_bytes: int, quant_double: bool = True,
                 training: bool = True) -> int:
    """The frozen base of LoRA (``weight_bytes`` per parameter) or QLoRA (its linear layers but the LM
    head in 4 bits with one float32 absmax per 64 weights, or with double quantisation an 8-bit absmax and
    one float32 per 256 blocks; the rest at ``weight_bytes``, or in ``training`` in float32: peft's
    ``prepare_model_for_kbit_training``, which sdft runs before training, casts every 16-bit parameter
    that is not 4-bit to float32); 0 for full fine-tuning."""
    if method == "full":
        return 0
    if method == "lora":
        return shape.total_params * weight_bytes
    quantized = sum(i * o for n, (i, o) in shape.linear_params.items() if not n.endswith("lm_head"))
    per_weight = 0.5 + (1 / 64 + 4 / (64 * 256) if quant_double else 4 / 64)
    rest = 4 if training else weight_bytes
    return int(quantized * per_weight) + (shape.total_params - quantized) * rest


def model_states(shape: ModelShape, method: str, trainable: int, weight_bytes: int, setting: ZeroSetting,
                 gpus_per_node: int, nodes: int = 1) -> Bytes:
    """Weights, gradients and optimizer states per rank (GPU) and per node (CPU) for ``method`` (full,
    lora, qlora) with ``trainable`` parameters."""
    states = trainable_states(trainable, shape.largest_layer_params, setting, gpus_per_node, nodes)
    frozen = frozen_bytes(shape, method, weight_bytes)
    if setting.stage == 3:  # partitioned like the trainable weights; on the CPU with offloaded parameters
        share = frozen // (gpus_per_node * nodes)
        if setting.offload_params:
            return Bytes(states.gpu, states.cpu + share * gpus_per_node)
        return Bytes(states.gpu + share, states.cpu)
    return Bytes(states.gpu + frozen, states.cpu)


ADAM_TEMPORARY = {True: 4, False: 8}
"""Bytes per trained float32 parameter that torch's AdamW allocates for the length of its step, by
device (``cuda``): the denominator ``sqrt(v) / c + eps`` (its foreach path on CUDA makes one float32
temporary; its single-tensor path on the CPU two: measured, benchmarks/plan_zero.py)."""


def optimizer_step_bytes(trainable: int, setting: ZeroSetting, world: int, cuda: bool = True) -> int:
    """The optimizer step's temporaries on a rank: AdamW's over the rank's share of the trained
    parameters (all of them at ZeRO-0), none on the GPU when the optimizer runs on the CPU (offload)."""
    if setting.offload_optimizer:
        return 0
    return ADAM_TEMPORARY[cuda] * (trainable // world if setting.stage else trainable)


def kv_cache_bytes(shape: ModelShape, slots: int, capacity: int, dtype_bytes: int) -> int:
    """The generation engine's KV cache (``models/engine.py``), allocated once: per layer, K and V of
    [slots, kv_heads, capacity, head_dim], capacity = the longest prompt + the new tokens."""
    return shape.num_layers * 2 * slots * shape.num_kv_heads * capacity * shape.head_dim * dtype_bytes


def prefill_bytes(shape: ModelShape, rows: int, tokens: int, dtype_bytes: int) -> int:
    """The generation engine's first prefill, beside its KV cache: one forward over every slot's prompt
    (``rows`` x ``tokens``, the prompt at its bound), whose largest live set is one layer's MLP, three
    [rows, tokens, intermediate] tensors, with two of the residual stream [rows, tokens, hidden] (flash
    attention keeps no [tokens, tokens] scores)."""
    widest = max(o for n, (_, o) in shape.linear_params.items() if not n.endswith("lm_head"))
    return rows * tokens * (3 * widest + 2 * shape.hidden_size) * dtype_bytes
