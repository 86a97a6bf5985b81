"""The training forward: a micro-batch in, its summed next-token cross-entropy out.

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

import torch

from sdft.train.data import causal_lm_loss_sum

log = logging.getLogger(__name__)

# Config fields that transform the logits after lm_head in some architectures' forward.
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_softcapping", "logit_scale", "logits_scaling",
                     "output_multiplier_scale", "mup_width_multiplier")


def causal_lm(model):
    """The transformers ``*ForCausalLM`` under a peft wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


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
            weight = causal_lm(model).get_output_embeddings().weight
            if hasattr(weight, "ds_id"):  # partitioned by ZeRO-3: gather it for this module's forward
                import deepspeed

                deepspeed.zero.register_external_parameter(self, weight)

    def forward(self, input_ids, labels, attention_mask=None, position_ids=None):
        if not self.fused:
            logits = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).logits
            return causal_lm_loss_sum(logits, labels)[0]
        from sdft_kernels import fused_linear_cross_entropy

        base = causal_lm(self.model)
        hidden = base.get_decoder()(input_ids=input_ids, attention_mask=attention_mask,
                                    position_ids=position_ids).last_hidden_state          # [B, T, H]
        weight = base.get_output_embeddings().weight                                        # [V, H]
        # Position t predicts labels[t + 1]; the last position of each row predicts nothing.
        targets = torch.cat([labels[:, 1:], labels.new_full((labels.shape[0], 1), -100)], dim=1)
        dtype = weight.dtype
        if torch.is_autocast_enabled(hidden.device.type):  # the head's matmul in the autocast dtype, as lm_head would run
            dtype = torch.get_autocast_dtype(hidden.device.type)
        with torch.autocast(hidden.device.type, enabled=False):
            return fused_linear_cross_entropy(hidden.reshape(-1, hidden.shape[-1]).to(dtype), weight.to(dtype),
                                              targets.reshape(-1), reduction="sum")


def build_loss_module(model, mode: str) -> CausalLMLoss:
    """Wrap ``model`` with the loss ``train.fused_loss`` asks for (``auto`` / ``on`` / ``off``)."""
    blocker = fused_loss_blocker(model) if mode != "off" else None
    if mode == "on" and blocker:
        raise ValueError(f"train.fused_loss=on: {blocker}; set train.fused_loss=auto or off")
    fused = mode != "off" and blocker is None
    if mode == "auto" and blocker:
        log.info("train: fused loss off (%s); using the model's logits", blocker)
    return CausalLMLoss(model, fused)
