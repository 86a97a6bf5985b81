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


def load_model(path: str, dtype: str, device: torch.device, adapter: str | Path | None = None,
               quantization=None, zero3: bool = False):
    """Load a causal LM from a local folder (``builtin:`` names resolved), optionally quantized at load
    (a ``BitsAndBytesConfig``) and with a LoRA adapter folder on top. Returned in eval mode on ``device``.
    ``zero3``: loading into ZeRO-3 partitions, which place themselves (no device_map)."""
    from transformers import AutoModelForCausalLM

    kwargs = {}
    if quantization is not None:
        kwargs = {"quantization_config": quantization, **({} if zero3 else {"device_map": {"": device}})}
    model = AutoModelForCausalLM.from_pretrained(resolve_model_path(path), dtype=_DTYPES[dtype], **kwargs)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter))
    if quantization is None:  # a quantized model is placed at load and refuses .to()
        model = model.to(device)
    return model.eval()


def load_4bit(cfg: RunConfig, device: torch.device, adapter: str | Path | None = None, zero3: bool = False):
    """The seed quantized to 4 bits with the ``train.qlora_*`` settings (for QLoRA, its evaluation, and
    ``distill.quantized``). ``zero3``: store the packed weights in ``model.dtype`` so ZeRO-3 can
    partition them with the rest of the model."""
    from sdft.models.quantized import bnb_config, check_backend

    check_backend(device, cfg.train)
    storage = _DTYPES[cfg.model.dtype] if zero3 else torch.uint8
    return load_model(cfg.model.path, cfg.model.dtype, device, adapter=adapter,
                      quantization=bnb_config(cfg.train, storage), zero3=zero3)


def load_seed(cfg: RunConfig, device: torch.device):
    return load_model(cfg.model.path, cfg.model.dtype, device)


def load_distill_seed(cfg: RunConfig, device: torch.device):
    """The seed for distillation: in ``model.dtype``, or 4-bit with ``distill.quantized``."""
    return load_4bit(cfg, device) if cfg.distill.quantized else load_seed(cfg, device)


def load_tuned(cfg: RunConfig, device: torch.device):
    """The trained model from ``<output_dir>/train/final``: base + adapter (LoRA) or the full model."""
    final = Path(cfg.output_dir) / "train" / "final"
    if not (final / "COMPLETE.json").exists():
        raise FileNotFoundError(f"{final}: no finished training output; run `sdft train` first")
    if cfg.train.method == "qlora":  # evaluated as it was trained: the 4-bit base under the adapter
        return load_4bit(cfg, device, adapter=final)
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
