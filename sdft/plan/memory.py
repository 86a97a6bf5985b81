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

A step's peak is what stays between steps plus its largest phase (``step_memory``): DeepSpeed's states
less the gradients, which exist in backward and the optimizer step only; ZeRO-0 on one rank is sdft's
plain PyTorch step, counted as what it holds.
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


ADAM_TEMPORARY = {True: 1, False: 2}
"""Temporaries torch's AdamW allocates for its step, in copies of the tensors it steps, by device
(``cuda``): the denominator ``sqrt(v) / c + eps``, one copy of every tensor at once on CUDA (its foreach
path), two copies of one tensor at a time on the CPU (its single-tensor path). DeepSpeed steps the rank's
share as one flat float32 tensor (measured: 4 and 8 bytes a parameter, benchmarks/plan_zero.py); plain
PyTorch steps each parameter at its own width."""
LIVE_PARAMETERS = 10**9
"""DeepSpeed's ``stage3_max_live_parameters`` and ``stage3_max_reuse_distance`` (the shipped configs keep
the defaults): ZeRO-3 leaves a gathered parameter gathered when it is used again within this many
parameters, as every one is in backward; measured on two ranks, the whole 42M-parameter model stayed
gathered through forward and backward (benchmarks/plan_zero.py)."""
PEFT_ADAPTER_BYTES = 4
"""peft keeps LoRA adapters in float32 whatever the base's dtype (``autocast_adapter_dtype``)."""


@dataclass(frozen=True)
class StepMemory:
    """A training step's bytes on a rank, phase by phase, beside its activations and loss head."""

    held: int
    """Across steps: weights, master weights and optimizer moments (the gradients are freed)."""
    backward: int
    """Beside the activations in forward and backward: ZeRO's gradient buffers, ZeRO-3's gathered weights."""
    step: int
    """The optimizer step's own: the gradients it reads (float32 under DeepSpeed) and AdamW's temporaries."""
    gradients: int
    """At the end of backward, when the activations are freed (but one recomputed layer under gradient
    checkpointing): the gradients, and ZeRO-3's gathered weights."""


def plain_pytorch(setting: ZeroSetting, world: int) -> bool:
    """Whether sdft trains without DeepSpeed: ZeRO-0 on one rank (``train.deepspeed`` empty)."""
    return setting.stage == 0 and world == 1


def step_memory(shape: ModelShape, method: str, trainable: int, weight_bytes: int, setting: ZeroSetting,
                gpus_per_node: int, nodes: int = 1, cuda: bool = True, optimizer: str = "adamw") -> StepMemory:
    """The phases of a training step on a rank for ``method`` with ``trainable`` parameters.

    Plain PyTorch (one rank): ``optimizer`` (``train.optimizer``) on the trained weights at their own
    width (the model's dtype; LoRA's float32 adapters), the gradients set to None after each step;
    torch's AdamW keeps its moments at the weights' width, bitsandbytes' 8-bit ones a byte each (and
    one float32 scale per block of 256), and updates in place, with no temporaries.
    DeepSpeed (mixed precision, measured phase by phase with ``benchmarks/plan_zero.py``): between steps
    the 16-bit weights (ZeRO-3: the rank's share, the largest module and the share's 16-bit gradients)
    and the rank's share of the 32-bit master weights and moments; in backward ZeRO-1 fills every 16-bit
    gradient, ZeRO-2 the share's in two buffers; the step makes the share's 32-bit gradients and AdamW's
    temporaries. Offloaded optimizers step on the CPU; their GPU figures are DeepSpeed's estimators'.
    """
    world = gpus_per_node * nodes
    frozen = frozen_bytes(shape, method, weight_bytes)
    if plain_pytorch(setting, world):
        width = weight_bytes if method == "full" else PEFT_ADAPTER_BYTES
        grads = width * trainable
        moments = int(trainable * (2 + 8 / 256)) if optimizer.endswith("8bit") else 2 * grads
        stepped = trainable if cuda else min(shape.largest_layer_params, trainable)  # at once
        temporaries = ADAM_TEMPORARY[cuda] * width * stepped if optimizer == "adamw" else 0
        return StepMemory(held=grads + moments + frozen, backward=0, step=grads + temporaries, gradients=grads)
    states = model_states(shape, method, trainable, weight_bytes, setting, gpus_per_node, nodes)
    share = trainable // world if setting.stage else trainable
    gathered = 0
    if setting.stage == 3 and world > 1:
        whole = frozen + 2 * trainable if method != "full" else 2 * trainable
        gathered = int(whole * min(1.0, LIVE_PARAMETERS / shape.total_params))
    if setting.offload_optimizer or setting.stage == 0:  # estimators' figures, gradients included
        return StepMemory(held=states.gpu, backward=gathered,
                          step=0 if setting.offload_optimizer else 4 * ADAM_TEMPORARY[cuda] * share, gradients=gathered)
    # DeepSpeed's 18 bytes a parameter (ZeRO-3: 16 of the share's) count the 16-bit gradients and the
    # 32-bit ones, which exist in backward and the step only.
    gradient_states = {1: 2 * trainable + 4 * share, 2: 6 * share, 3: 2 * share}[setting.stage]
    backward = {1: 2 * share, 2: 4 * share, 3: 0}[setting.stage]
    # ZeRO-1's step makes the share's 32-bit gradients before it frees the 16-bit ones.
    gradients = {1: 2 * trainable + 4 * share, 2: 4 * share, 3: 0}[setting.stage]
    return StepMemory(held=states.gpu - gradient_states, backward=backward + gathered,
                      step=4 * (1 + ADAM_TEMPORARY[cuda]) * share, gradients=gradients + gathered)


def kv_cache_bytes(shape: ModelShape, slots: int, capacity: int, dtype_bytes: int) -> int:
    """The generation engine's KV cache (``models/engine.py``), allocated once: per layer, K and V of
    [slots, kv_heads, capacity, head_dim], capacity = the longest prompt + the new tokens."""
    return shape.num_layers * 2 * slots * shape.num_kv_heads * capacity * shape.head_dim * dtype_bytes
