"""The training objective: what a step computes from its examples. The recipe's step calls it: the SFT
loss here, on-policy self-distillation in ``on_policy``.

An ``Objective`` gives the module the backend runs (``forward(**micro_batch) -> summed loss``), turns
a step's global batch into this rank's micro-batches with the token count the step's loss is
normalised by, and a fully masked stand-in micro-batch for ranks with nothing to do.

``SFTObjective``: next-token cross-entropy on the response tokens (prompt tokens masked), summed over
the global batch and divided by its response tokens, so the same global batch gives the same update
at any world size, micro-batch size or accumulation. With ``train.packing`` the global batch is packed
into full rows first and the rows are dealt to the same micro-batch slots (``packing``); the update is
unchanged. Micro-batch ``a * world + r`` of a step runs on rank ``r`` at micro-step ``a``.

``CausalLMLoss`` wraps the (peft) causal LM and is what the backend runs, so under DeepSpeed the
whole loss is computed inside the engine's forward. Two ways to the same number:

- fused (``train.fused_loss``): the decoder body gives the final hidden states [B, T, H] and
  ``sdft_kernels.fused_linear_cross_entropy`` takes them with the lm_head weight, dropping unlabelled
  positions before the matmul and never building the [B, T, V] logits. Under ZeRO-3 the lm_head
  weight is registered as an external parameter of this module, so the engine gathers it for this
  forward and for the start of backward (where the fused loss hands it its gradient). It is gathered
  once per micro-batch, not per chunk, so ranks with different label counts (different chunk
  counts) run the same collectives.
- plain: ``model(...).logits`` and torch's cross-entropy on float32 logits (the transformers default).

The fused path needs ``logits = lm_head(body(x))`` exactly; ``fused_loss_blocker`` names what breaks
that (logit soft-capping or scaling, a bias, LoRA on the head) so ``auto`` falls back and ``on`` fails.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol

import torch

from sdft.config.schema import RunConfig, TrainConfig
from sdft.data.tokenize import causal_lm_loss_sum, collate, tokenize_rows
from sdft.models.loading import attention_mask_for, causal_lm
from sdft.train.batching import TokenSlots, step_token_slots
from sdft.train.packing import collate_packed, packing_blocker, plan_packed_step
from sdft.utils.switches import resolve_switch

log = logging.getLogger(__name__)

Batch = dict[str, torch.Tensor]


@dataclass
class StepBatches:
    """One optimizer step's work on this rank."""

    micro: list[Batch | None]
    """``grad_accum`` micro-batches, in order; None where this rank has no examples at that micro-step."""
    n_tokens: int
    """The tokens the step's summed loss is divided by, counted over every rank."""
    slots: TokenSlots
    """The step's token accounting, over every rank."""


class Objective(Protocol):
    """What a training objective gives the recipe. It owns its training examples (``len`` of them)."""

    name: str
    """Its ``train.objective`` name."""
    skipped_overlength: list[str]
    """Ids of the examples left out for being longer than ``train.cutoff_len``."""

    @classmethod
    def build(cls, cfg: RunConfig, rows: list[dict], tok, world: int, rank: int, device: torch.device,
              zero_stage: int | None) -> Objective:
        """The objective for ``rows`` on this rank (the recipe's one way to make any objective)."""

    def __len__(self) -> int: ...

    def digest(self) -> dict:
        """The exact training data, for the checkpoint fingerprint."""

    def loss_module(self, model) -> torch.nn.Module:
        """The module the backend runs: ``forward(**micro_batch) -> summed loss``, wrapping ``model``."""

    def step_batches(self, batch_ids: list[int], step: int, backend) -> StepBatches:
        """This rank's micro-batches of the 0-based ``step`` whose global batch is ``batch_ids``
        (``backend`` gives the current model to an objective that generates)."""

    def stand_in(self) -> Batch:
        """A short, fully masked micro-batch (loss 0) that joins every collective of a real one."""

    def after_step(self) -> None:
        """Called after every optimizer step."""

    def state_dict(self) -> dict[str, torch.Tensor]:
        """This rank's objective state a checkpoint must keep (beyond weights, optimizer and RNG)."""

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None: ...

    def summary(self) -> dict:
        """What the objective reports in the training summary."""


# Config fields that transform the logits after lm_head in some architectures' forward.
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_softcapping", "logit_scale", "logits_scaling",
                     "output_multiplier_scale", "mup_width_multiplier")


def fused_loss_blocker(model) -> str | None:
    """Why the fused loss would not equal the model's own logits' loss, or None when it does."""
    base = causal_lm(model)
    head = base.get_output_embeddings()
    if not type(base).__name__.endswith("ForCausalLM") or head is None:
        return f"{type(base).__name__} is not a plain *ForCausalLM with an output embedding"
    if hasattr(head, "base_layer"):
        return "the lm_head is adapted by LoRA (remove it from train.lora_targets)"
    if type(head) is not torch.nn.Linear:
        return f"the lm_head is a {type(head).__name__}, not a plain Linear"
    if head.bias is not None:
        return "the lm_head has a bias"
    cfg = base.config.get_text_config() if hasattr(base.config, "get_text_config") else base.config
    for attr in _LOGIT_TRANSFORMS:
        value = getattr(cfg, attr, None)
        if value not in (None, 1, 1.0):
            return f"the model's config sets {attr}={value} (a transform of the logits)"
    return None


def register_head(module: torch.nn.Module, model) -> None:
    """Under ZeRO-3, have the engine gather ``model``'s lm_head weight for ``module``'s forward (a fused
    loss reads it outside the head's own forward). Gathered once per micro-batch, not per chunk, so
    ranks with different token counts run the same collectives."""
    weight = causal_lm(model).get_output_embeddings().weight
    if hasattr(weight, "ds_id"):
        import deepspeed

        deepspeed.zero.register_external_parameter(module, weight)


def hidden_and_head(model, input_ids, attention_mask=None, position_ids=None) -> tuple[torch.Tensor, torch.Tensor]:
    """([B, T, H] final hidden states, [V, H] lm_head weight), both in the dtype the head's matmul
    runs in (the autocast dtype under autocast, as ``lm_head`` itself would run)."""
    base = causal_lm(model)
    hidden = base.get_decoder()(input_ids=input_ids, attention_mask=attention_mask,
                                position_ids=position_ids).last_hidden_state
    weight = base.get_output_embeddings().weight
    dtype = weight.dtype
    if torch.is_autocast_enabled(hidden.device.type):
        dtype = torch.get_autocast_dtype(hidden.device.type)
    return hidden.to(dtype), weight.to(dtype)


class CausalLMLoss(torch.nn.Module):
    """``forward(input_ids, labels, attention_mask=None, position_ids=None) -> loss_sum``.

    Args (to forward):
        input_ids: [B, T] token ids.
        labels: [B, T] targets, -100 where no loss is taken (position t is predicted from t - 1).
        attention_mask: [B, T] padding mask, or [B, 1, T, T] bool block mask of a packed batch.
        position_ids: [B, T], restarting per example in a packed batch.
    Returns:
        scalar float32: the summed token loss (the caller normalises it).
    """

    def __init__(self, model, fused: bool):
        super().__init__()
        self.model = model
        self.fused = fused
        if fused:
            register_head(self, model)

    def forward(self, input_ids, labels, attention_mask=None, position_ids=None):
        if attention_mask is not None and attention_mask.dim() == 4:  # a packed batch's block mask
            attention_mask = attention_mask_for(self.model, attention_mask)
        if not self.fused:
            logits = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).logits
            return causal_lm_loss_sum(logits, labels)[0]
        from sdft_kernels import fused_linear_cross_entropy

        hidden, weight = hidden_and_head(self.model, input_ids, attention_mask, position_ids)   # [B, T, H], [V, H]
        # Position t predicts labels[t + 1]; the last position of each row predicts nothing.
        targets = torch.cat([labels[:, 1:], labels.new_full((labels.shape[0], 1), -100)], dim=1)
        with torch.autocast(hidden.device.type, enabled=False):
            return fused_linear_cross_entropy(hidden.reshape(-1, hidden.shape[-1]), weight, targets.reshape(-1),
                                              reduction="sum")


class SFTObjective:
    """Supervised fine-tuning: the summed cross-entropy of the response tokens, normalised by the global
    batch's response tokens; micro-batches padded, or packed with ``train.packing``."""

    name = "sft"

    def __init__(self, t: TrainConfig, rows: list[dict], tok, world: int, rank: int, layout: str = "paper"):
        data = tokenize_rows(rows, tok, t.template, t.cutoff_len, t.overlength, t.loss_turns, layout)
        self.t, self.data, self.pad_id, self.world, self.rank = t, data, tok.pad_token_id, world, rank
        self.skipped_overlength = data.skipped_overlength
        # Counted once, not per step: the loss's denominator and the packing plan's input.
        self.targets = data.response_tokens()
        self.lengths = [len(ids) for ids in data.input_ids]
        self.fused = self.packing = False

    @classmethod
    def build(cls, cfg: RunConfig, rows: list[dict], tok, world: int, rank: int, device: torch.device,
              zero_stage: int | None) -> SFTObjective:
        return cls(cfg.train, rows, tok, world, rank, cfg.prompt.layout)

    def __len__(self) -> int:
        return len(self.data)

    def digest(self) -> dict:
        d = self.data
        return {"ids": d.ids, "tokens": [sum(map(len, d.input_ids)),
                                         sum(sum(1 for y in lab if y != -100) for lab in d.labels)]}

    def loss_module(self, model) -> CausalLMLoss:
        t = self.t
        module = build_loss_module(model, t.fused_loss)
        self.fused = module.fused
        blocker = None
        if t.packing != "off":
            blocker = ("train.loss_average=micro_batches averages HF-style micro-batches of train.micro_batch_size "
                       "examples" if t.loss_average == "micro_batches" else packing_blocker(model))
        self.packing = resolve_switch("train.packing", t.packing, blocker)
        return module

    def step_batches(self, batch_ids: list[int], step: int = 0, backend=None) -> StepBatches:
        t, n_micro = self.t, self.t.grad_accum * self.world
        plan = plan_packed_step(self.lengths, batch_ids, n_micro, t.cutoff_len) if self.packing else None
        micro = []
        for a in range(t.grad_accum):
            slot = a * self.world + self.rank
            if plan is not None:
                micro.append(collate_packed(self.data, plan[slot], self.pad_id) if plan[slot] else None)
            else:
                mine = batch_ids[slot * t.micro_batch_size:(slot + 1) * t.micro_batch_size]
                micro.append(collate(self.data, mine, self.pad_id) if mine else None)
        return StepBatches(micro, sum(self.targets[i] for i in batch_ids),
                           step_token_slots(self.lengths, batch_ids, n_micro, t.micro_batch_size, plan))

    def stand_in(self) -> Batch:
        b = collate(self.data, [0], self.pad_id)
        b = {k: v[:, :8] for k, v in b.items()}
        b["labels"].fill_(-100)
        return b

    def after_step(self) -> None:
        pass

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        pass

    def summary(self) -> dict:
        return {"objective": "sft", "fused_loss": self.fused, "packing": self.packing,
                "truncated": len(self.data.truncated), "skipped_empty": len(self.data.skipped_empty)}


def fused_loss_on(model, mode: str) -> bool:
    """``train.fused_loss`` (``auto`` / ``on`` / ``off``) resolved for ``model``."""
    return resolve_switch("train.fused_loss", mode, fused_loss_blocker(model) if mode != "off" else None)


def build_loss_module(model, mode: str) -> CausalLMLoss:
    """``model`` wrapped with the loss ``train.fused_loss`` asks for."""
    return CausalLMLoss(model, fused_loss_on(model, mode))
