"""4-bit (bitsandbytes) models, from the ``quantization`` settings: loading the seed quantized at
load (QLoRA training, its evaluation, ``distill.quantized``), a backend check, the preflight refusals,
and the dequantized base that export merges the adapter into.

bitsandbytes quantizes every ``nn.Linear`` but the output head at load (``Linear4bit``: packed 4-bit
weights plus per-block scales). Two facts shape this module:

- ZeRO-3 partitions parameters by dtype: the packed weights must be stored in the same dtype as the
  rest of the model (``bnb_4bit_quant_storage`` = the load dtype), or ZeRO-3 stops partitioning them.
- On CPU, a 4-bit layer that runs once in eval mode without grad repacks its weight into a CPU-only
  layout with no autograd kernel; LoRA layers below it then get zero gradients, silently
  (bitsandbytes 0.50). So the 4-bit model for training is put in train mode at once and never run
  in eval mode before training; ``tests/train/test_qlora.py`` asserts non-zero LoRA gradients.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from sdft.config.schema import QuantizationConfig, RunConfig
from sdft.errors import ConfigError
from sdft.models.loading import DTYPES, load_model

_WHO = "4-bit weights (train.method=qlora or distill.quantized)"


def bnb_config(q: QuantizationConfig, storage_dtype: torch.dtype = torch.uint8):
    """The ``BitsAndBytesConfig`` of the ``quantization`` section. ``storage_dtype``: dtype the packed
    weights are stored in (the load dtype under ZeRO-3, else uint8)."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=q.quant_type,
                              bnb_4bit_use_double_quant=q.double_quant,
                              bnb_4bit_compute_dtype=DTYPES[q.compute_dtype],
                              bnb_4bit_quant_storage=storage_dtype)


def check_backend(device: torch.device, q: QuantizationConfig) -> None:
    """Fail before any work when bitsandbytes cannot quantize on ``device`` (missing package, or a
    build without a backend for this device)."""
    try:
        import bitsandbytes.functional as F
    except ImportError as e:
        raise ConfigError(f"{_WHO} need bitsandbytes: pip install bitsandbytes") from e
    try:
        w = torch.randn(64, 64, device=device, dtype=DTYPES[q.compute_dtype])
        packed, state = F.quantize_4bit(w, quant_type=q.quant_type, compress_statistics=q.double_quant)
        err = (F.dequantize_4bit(packed, state) - w).abs().mean().item()
    except Exception as e:  # bitsandbytes raises RuntimeError/NotImplementedError/... per backend
        raise ConfigError(f"{_WHO}: this bitsandbytes build cannot quantize on {device} "
                          f"({type(e).__name__}: {e}); install a bitsandbytes with a {device.type} backend") from e
    if not err < 0.5:
        raise ConfigError(f"{_WHO}: bitsandbytes 4-bit round trip on {device} is broken "
                          f"(mean error {err:.3g}); check the bitsandbytes install")


def load_4bit(cfg: RunConfig, device: torch.device, adapter: str | Path | None = None, zero3: bool = False):
    """The seed quantized to 4 bits with the ``quantization`` settings, optionally with a LoRA adapter
    on top. ``zero3``: store the packed weights in ``model.dtype`` so ZeRO-3 can partition them with the
    rest of the model."""
    check_backend(device, cfg.quantization)
    storage = DTYPES[cfg.model.dtype] if zero3 else torch.uint8
    return load_model(cfg.model.path, cfg.model.dtype, device, adapter=adapter,
                      quantization=bnb_config(cfg.quantization, storage), zero3=zero3)


@torch.no_grad()
def dequantize_into(full_model, quantized_model) -> int:
    """Copy the dequantized weight of every 4-bit layer of ``quantized_model`` into the same-named
    linear layer of ``full_model`` (same architecture, full precision). Returns how many layers.

    The adapter was trained against these dequantized weights, not the original ones; merging into
    them reproduces what the tuned model computed.
    """
    import bitsandbytes as bnb
    import bitsandbytes.functional as F

    full = dict(full_model.named_modules())
    n = 0
    for name, module in quantized_model.named_modules():
        if isinstance(module, bnb.nn.Linear4bit):
            target = full[name]
            w = F.dequantize_4bit(module.weight.data, module.weight.quant_state)
            target.weight.copy_(w.reshape(target.weight.shape).to(target.weight.dtype))
            n += 1
    return n


def preflight(cfg: RunConfig, device: torch.device) -> None:
    """Refuse, before any stage runs, what cannot work: a quantized checkpoint as the seed (sdft
    quantizes at load), or 4-bit work on a device bitsandbytes cannot serve."""
    config = Path(cfg.model.path) / "config.json"
    if config.is_file():
        quant = json.loads(config.read_text()).get("quantization_config")
        if quant:
            kind = quant.get("quant_method", "quantized")
            raise ConfigError(f"model.path={cfg.model.path} is a {kind} checkpoint ({config} has quantization_config): "
                              "its weights cannot be fine-tuned or merged. Point model.path at the full-precision "
                              "model; train.method=qlora quantizes it to 4 bits at load")
    if cfg.train.method == "qlora" or cfg.distill.quantized:
        check_backend(device, cfg.quantization)
