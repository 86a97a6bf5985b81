"""Load a causal LM and its tokenizer from a local folder, and the helpers every model user shares:
the dtype names of the config, the device choice, and the transformers model under a peft wrapper."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from sdft.errors import ConfigError
from sdft.models.builtin import resolve_model_path

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
"""Config dtype names (``model.dtype``, ``quantization.compute_dtype``, ``export.dtype``) -> torch."""


def pick_device(name: str) -> torch.device:
    """The device ``device: auto|cpu|cuda`` names (``auto``: CUDA when visible)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda but no CUDA device is visible; use device=cpu or device=auto")
    return torch.device(name)


def cpu_sdpa_broken() -> bool:
    """True when torch's CPU attention kernel fails on bfloat16 (PyTorch 2.13: "pack_vnni2 is only supported
    when avx512 is supported", from sequences of a few hundred tokens on): ``ATEN_CPU_CAPABILITY`` picked
    kernels below AVX-512 on a CPU with AVX-512 BF16, whose hardware check still sends bfloat16 attention
    down the AVX-512 packing path. Models then use eager attention on the CPU."""
    capability = torch.backends.cpu.get_cpu_capability()
    return not capability.startswith("AVX512") and torch.cpu._is_avx512_bf16_supported()


def load_tokenizer(path: str):
    """Load a tokenizer from a local folder and make sure it can pad (for batched work)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(resolve_model_path(path))
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(path: str, dtype: str, device: torch.device, adapter: str | Path | None = None,
               quantization=None, zero3: bool = False):
    """Load a causal LM from a local folder (``builtin:`` names resolved), optionally quantized at load
    (a ``BitsAndBytesConfig``) and with a LoRA adapter folder on top. Returned in eval mode on ``device``.
    ``zero3``: loading into ZeRO-3 partitions, which place themselves (no device_map)."""
    from transformers import AutoModelForCausalLM

    kwargs = {}
    if quantization is not None:
        kwargs = {"quantization_config": quantization, **({} if zero3 else {"device_map": {"": device}})}
    if device.type == "cpu" and cpu_sdpa_broken():
        kwargs["attn_implementation"] = "eager"
    model = AutoModelForCausalLM.from_pretrained(resolve_model_path(path), dtype=DTYPES[dtype], **kwargs)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter))
    if quantization is None:  # a quantized model is placed at load and refuses .to()
        model = model.to(device)
    return model.eval()


def causal_lm(model):
    """The transformers ``*ForCausalLM`` under a peft wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


MASK_ATTENTION = ("sdpa", "eager")
"""Attention implementations that apply a custom 4D mask as given."""


def mask_blocker(model, model_types: tuple[str, ...], what: str, longest: int | None = None) -> str | None:
    """Why ``model`` would not apply a custom 4D mask (``what``) exactly, or None: a model type outside the
    tested ``model_types``, an attention that does not take 4D masks, or a sliding window (any, or one
    shorter than ``longest`` tokens)."""
    cfg = causal_lm(model).config
    cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    if cfg.model_type not in model_types:
        return f"model_type {cfg.model_type!r} is not among the tested {', '.join(model_types)}"
    attn = getattr(cfg, "_attn_implementation", None) or "eager"
    if attn not in MASK_ATTENTION:
        return f"attention {attn!r} does not take {what} (use sdpa or eager)"
    window = getattr(cfg, "sliding_window", None)
    if window and getattr(cfg, "use_sliding_window", True) and (longest is None or window < longest):
        return f"sliding-window attention (sliding_window={window}" + (f" < {longest} tokens)" if longest else ")")
    return None


def attention_mask_for(model, mask: torch.Tensor) -> torch.Tensor:
    """A 4D bool mask (True: attend) as ``model``'s attention takes it: as is for sdpa, additive (0 where
    True, a large negative number where False) for eager attention, which adds its mask to the scores."""
    cfg = causal_lm(model).config
    if (getattr(cfg, "_attn_implementation", None) or "eager") != "eager":
        return mask
    return torch.zeros(mask.shape, dtype=torch.float32, device=mask.device).masked_fill(~mask, torch.finfo(torch.float32).min)


def hidden_size(path: str) -> int:
    """The model's hidden size, read from its config alone (DeepSpeed sizes its buckets by it)."""
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(resolve_model_path(path)).hidden_size
