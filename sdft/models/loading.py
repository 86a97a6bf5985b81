"""Load the seed model, a tuned model (seed + adapter, or a full checkpoint) and the tokenizer."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from sdft.config.schema import RunConfig
from sdft.models.builtin import resolve_model_path

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device=cuda but no CUDA device is visible; use device=cpu or device=auto")
    return torch.device(name)


def load_tokenizer(path: str):
    """Load a tokenizer from a local folder and make sure it can pad (for batched work)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(resolve_model_path(path))
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(path: str, dtype: str, device: torch.device, adapter: str | Path | None = None):
    """Load a causal LM from a local folder (``builtin:`` names resolved), optionally with a LoRA
    adapter folder on top. Returned in eval mode on ``device``."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(resolve_model_path(path), dtype=_DTYPES[dtype])
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter))
    return model.to(device).eval()


def load_seed(cfg: RunConfig, device: torch.device):
    return load_model(cfg.model.path, cfg.model.dtype, device)


def load_tuned(cfg: RunConfig, device: torch.device):
    """The trained model from ``<output_dir>/train/final``: base + adapter (LoRA) or the full model."""
    final = Path(cfg.output_dir) / "train" / "final"
    if not (final / "COMPLETE.json").exists():
        raise FileNotFoundError(f"{final}: no finished training output; run `sdft train` first")
    if (final / "adapter_config.json").exists():
        return load_model(cfg.model.path, cfg.model.dtype, device, adapter=final)
    return load_model(str(final), cfg.model.dtype, device)
