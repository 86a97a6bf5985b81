"""Step 5: a standalone transformers folder (safetensors) that ``AutoModelForCausalLM.from_pretrained``
loads with no peft: the LoRA adapter merged into the seed's weights, or the fully tuned model.

After QLoRA the adapter is merged into the *dequantized* 4-bit base (the weights it was trained
against), saved in bfloat16 by default; the adapter alone is copied to ``export/adapter`` for every
LoRA method, for users who serve the base and the adapter separately."""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

import torch

from sdft.config.schema import RunConfig
from sdft.models.loading import load_4bit, load_model
from sdft.utils.io import atomic_publish_dir

log = logging.getLogger(__name__)


def export_dtype(cfg: RunConfig) -> str:
    if cfg.export.dtype != "auto":
        return cfg.export.dtype
    return "bfloat16" if cfg.train.method == "qlora" else cfg.model.dtype


def merged_qlora_model(cfg: RunConfig, adapter_dir: Path, dtype: str):
    """Base in ``dtype`` with every 4-bit layer's dequantized weight, the adapter merged into it."""
    from peft import PeftModel

    from sdft.models.quantized import dequantize_into

    cpu = torch.device("cpu")
    base = load_model(cfg.model.path, dtype, cpu)
    quantized = load_4bit(cfg, cpu)
    n = dequantize_into(base, quantized)
    del quantized
    log.info("export: %d layers set to their dequantized 4-bit weights", n)
    return PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()


def _publish(out_dir: Path, name: str, write) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir, prefix=f".{name}-"))
    write(tmp)
    target = out_dir / name
    atomic_publish_dir(tmp, target)
    return target


def export_model(cfg: RunConfig, final_dir: Path, out_dir: Path, tok) -> Path:
    """Merge (LoRA, QLoRA) or copy (full) ``final_dir`` into ``out_dir/model``; returns that folder."""
    if not (final_dir / "COMPLETE.json").exists():
        raise FileNotFoundError(f"{final_dir}: no finished training output; run `sdft train` first")
    cpu, dtype = torch.device("cpu"), export_dtype(cfg)
    is_adapter = (final_dir / "adapter_config.json").exists()
    if cfg.train.method == "qlora":
        model = merged_qlora_model(cfg, final_dir, dtype)
    elif is_adapter:
        model = load_model(cfg.model.path, dtype, cpu, adapter=final_dir).merge_and_unload()
    else:
        model = load_model(str(final_dir), dtype, cpu)
    model.config.use_cache = True
    if is_adapter:
        _publish(out_dir, "adapter", lambda tmp: [shutil.copy2(f, tmp / f.name) for f in final_dir.glob("adapter_*")])

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)

    target = _publish(out_dir, "model", write)
    log.info("export: wrote %s (%s)", target, dtype)
    return target
