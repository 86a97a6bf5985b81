"""How long a run takes: the work (tokens to generate and to train) over what the cluster does per second.

- Training: ``flops_per_token x tokens`` over ``world x bf16 peak x TRAIN_EFFICIENCY``. A token costs
  2N FLOPs forward and 2N for the gradients of the activations, 2N more for the weights' gradients when
  every weight trains (LoRA's are negligible), 2N more for the forward recomputed under checkpointing.
- Generation (distillation; evaluation's task benchmark on the seed and the tuned model): decoding is
  bound by memory bandwidth, each step reading the weights and the KV cache once for all the slots of a
  rank, so ``ceil(examples / (slots x world)) x new tokens`` steps of ``bytes / (bandwidth x
  DECODE_EFFICIENCY)``; the prompts' prefill at the training efficiency. New tokens are taken at their
  bound (``max_new_tokens``): the estimate is an upper one for answers that end early.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from sdft.config.schema import RunConfig
from sdft.plan.cards import Card
from sdft.plan.memory import kv_cache_bytes
from sdft.plan.shape import ModelShape

TRAIN_EFFICIENCY = 0.38
"""sdft's training step on an H100: 0.380 of the datasheet bf16 peak (``benchmarks/RESULTS.md``, "Train
step": Llama-3.2-1B shape, 8 x 2048 tokens, fused loss; 0.473 of the card's measured matmul rate)."""
DECODE_EFFICIENCY = 0.5
"""The share of the card's memory bandwidth a decode step reaches: assumed, not yet measured on a GPU."""


@dataclass(frozen=True)
class Workload:
    """The data a run works through."""

    examples: int
    test_examples: int
    prompt_tokens: float
    """Mean prompt tokens of a training example (after ``train.cutoff_len``)."""
    response_tokens: float
    source: str
    """Where the figures come from, printed with the estimate."""


def measure_workload(cfg: RunConfig) -> Workload | None:
    """The training set's size and mean token counts, read and tokenized as training does; None when
    ``data.train`` is not a local file or the model folder has no tokenizer."""
    from pathlib import Path

    from sdft.data.examples import read_examples
    from sdft.data.tokenize import tokenize_rows
    from sdft.models.loading import load_tokenizer

    if cfg.data.train.startswith("hub:") or not Path(cfg.data.train).is_file():
        return None
    try:
        tok = load_tokenizer(cfg.model.path)
    except (OSError, ValueError):
        return None
    examples = read_examples(cfg.data.train, cfg.data, limit=cfg.data.limit)
    t = cfg.train
    data = tokenize_rows([e.to_dict() for e in examples], tok, t.template, t.cutoff_len, "truncate", t.loss_turns,
                         cfg.prompt.layout)
    kept = len(data.input_ids) or 1
    response = sum(sum(1 for x in labels if x != -100) for labels in data.labels) / kept
    prompt = sum(len(ids) for ids in data.input_ids) / kept - response
    test = 0
    if cfg.data.test and not cfg.data.test.startswith("hub:") and Path(cfg.data.test).is_file():
        test = len(read_examples(cfg.data.test, cfg.data, limit=cfg.eval.limit, response_required=False))
    return Workload(len(examples), test, prompt, response, f"{cfg.data.train}, tokenized")


def stated_workload(examples: int, tokens: int, cfg: RunConfig) -> Workload:
    """A workload from the command line: ``examples`` of ``tokens`` each, half prompt, half response."""
    return Workload(examples, 0, tokens / 2, tokens / 2, f"--examples {examples} --avg-tokens {tokens} (stated)")


def train_flops_per_token(params: int, method: str, checkpointing: bool) -> int:
    """FLOPs of one trained token (see the module docstring)."""
    return 2 * params * (2 + (method == "full") + checkpointing)


def _generation_seconds(shape: ModelShape, card: Card, world: int, examples: int, slots: int, prompt: float,
                        new: int, width: int) -> float:
    steps = math.ceil(examples / (slots * world)) * new
    kv = kv_cache_bytes(shape, min(slots, examples), int(prompt + new / 2), width)  # the cache's mean fill
    decode = steps * (shape.total_params * width + kv) / (card.bandwidth_tbs * 1e12 * DECODE_EFFICIENCY)
    prefill = 2 * shape.total_params * examples * prompt / (world * card.bf16_tflops * 1e12 * TRAIN_EFFICIENCY)
    return decode + prefill


def estimate(cfg: RunConfig, shape: ModelShape, card: Card, world: int, work: Workload, width: int) -> dict | None:
    """Seconds per stage (distill, train, eval) on ``world`` cards ``card``; None for a card given by its
    memory alone (no peak or bandwidth to divide by)."""
    if card.bf16_tflops is None or card.bandwidth_tbs is None:
        return None
    t = cfg.train
    global_batch = t.micro_batch_size * t.grad_accum * world
    steps = t.max_steps or math.ceil(t.epochs * work.examples / global_batch)
    tokens = steps * global_batch * (work.prompt_tokens + work.response_tokens)
    train = train_flops_per_token(shape.total_params, t.method, t.gradient_checkpointing) * tokens
    out = {"distill": _generation_seconds(shape, card, world, work.examples, cfg.distill.batch_size,
                                          work.prompt_tokens + work.response_tokens,  # the prompt shows the answer
                                          cfg.distill.sampling.max_new_tokens, width),
           "train": train / (world * card.bf16_tflops * 1e12 * TRAIN_EFFICIENCY)}
    if work.test_examples:  # the seed and the tuned model answer the task's test set
        out["eval"] = 2 * _generation_seconds(shape, card, world, work.test_examples, cfg.eval.batch_size,
                                              work.prompt_tokens, cfg.eval.sampling.max_new_tokens, width)
    return {"seconds": out, "optimizer_steps": steps, "train_tokens": tokens, "source": work.source,
            "train_efficiency": TRAIN_EFFICIENCY, "decode_efficiency": DECODE_EFFICIENCY}
