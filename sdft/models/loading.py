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


def load_seed_zero3(cfg: RunConfig, device: torch.device):
    """The seed model partitioned over ranks at load (ZeRO-3 ``zero.Init``), for ``distill.mode=zero3``.

    With ``distill.zero3_gather`` the bare partitioned module is returned: the caller gathers it
    whole around each generate call, and no per-layer hook may fire (hooks would re-partition
    layers mid-generation and start collectives that only this rank joins). Otherwise the module
    goes through ``deepspeed.initialize``, whose hooks gather each layer as forward reaches it.
    """
    import deepspeed
    from transformers import AutoConfig
    from transformers.integrations import HfDeepSpeedConfig

    from sdft.config.schema import ConfigError
    from sdft.distributed import runtime
    from sdft.distributed.ds_config import fill_ds_config, load_ds_config, zero_stage

    raw, source = load_ds_config(cfg.distill.deepspeed)
    hidden = AutoConfig.from_pretrained(resolve_model_path(cfg.model.path)).hidden_size
    ds = fill_ds_config(raw, cfg, runtime.world_size(), hidden, source)
    if zero_stage(ds) != 3:
        raise ConfigError(f"distill.deepspeed={cfg.distill.deepspeed!r} is ZeRO-{zero_stage(ds)}; "
                          "distill.mode=zero3 needs a stage-3 config (e.g. zero3)")
    keep_alive = HfDeepSpeedConfig(ds)  # noqa: F841 - from_pretrained loads into partitions while it lives
    model = load_model(cfg.model.path, cfg.model.dtype, device)
    if not cfg.distill.zero3_gather:
        engine, *_ = deepspeed.initialize(model=model, config=ds)
        model.__dict__["_sdft_engine"] = engine  # keep it (and its hooks) alive; not a submodule: that would be a cycle
    return model.eval()
