"""A model's shape for planning, from its ``config.json`` alone: the model is built on the meta device
(no weights, no memory), so its parameter counts are exact for any architecture transformers knows."""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ModelShape:
    """Parameter counts and the sizes that activations and the KV cache scale with."""

    total_params: int
    largest_layer_params: int
    """The most parameters one module holds itself (DeepSpeed's ZeRO-3 gathers a module at a time)."""
    linear_params: dict[str, tuple[int, int]]
    """``{module name: (in_features, out_features)}`` of every linear layer, the LM head included."""
    hidden_size: int
    num_layers: int
    vocab_size: int
    num_kv_heads: int
    head_dim: int
    tied_embeddings: bool
    fused_loss_blocker: str | None = None
    """Why the fused loss does not apply to this model (``train.objective.fused_loss_blocker``), or None."""

    def lora_params(self, targets: list[str], rank: int) -> int:
        """The LoRA parameters ``train.lora_targets`` adds at ``train.lora_r``: ``rank * (in + out)`` per
        targeted linear layer (``all-linear``: every one but the LM head, as peft chooses)."""
        if targets == ["all-linear"]:
            chosen = [n for n in self.linear_params if not n.endswith("lm_head")]
        else:
            chosen = [n for n in self.linear_params if any(re.fullmatch(rf"(.*\.)?{re.escape(t)}", n) for t in targets)]
        return sum(rank * (i + o) for i, o in (self.linear_params[n] for n in chosen))


def model_shape(config) -> ModelShape:
    """The shape of the causal LM that the transformers ``config`` describes (built on the meta device)."""
    from transformers import AutoModelForCausalLM

    from sdft.train.objective import fused_loss_blocker

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    largest = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())
    linear = {n: (m.in_features, m.out_features) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    heads = text.num_attention_heads
    return ModelShape(
        total_params=sum(p.numel() for p in model.parameters()), largest_layer_params=largest, linear_params=linear,
        hidden_size=text.hidden_size, num_layers=text.num_hidden_layers, vocab_size=text.vocab_size,
        num_kv_heads=getattr(text, "num_key_value_heads", None) or heads,
        head_dim=getattr(text, "head_dim", None) or text.hidden_size // heads,
        tied_embeddings=bool(getattr(config, "tie_word_embeddings", False)), fused_loss_blocker=fused_loss_blocker(model))
