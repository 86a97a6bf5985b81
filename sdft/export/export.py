"""Step 5: a standalone transformers folder (safetensors) that ``AutoModelForCausalLM.from_pretrained``
loads with no peft: the LoRA adapter merged into the seed's weights, or the fully tuned model, with its
model card (``README.md``: ``model_card``).
Stage entry: ``run_export(ctx)``.

After QLoRA the adapter is merged into the *dequantized* 4-bit base (the weights it was trained
against), saved in bfloat16 by default; the adapter alone is copied to ``export/adapter`` for every
LoRA method, for users who serve the base and the adapter separately."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import torch

from sdft.config.schema import RunConfig
from sdft.context import RunContext
from sdft.errors import StageError
from sdft.export.model_card import model_card
from sdft.layout import RunLayout
from sdft.models.loading import load_model
from sdft.models.quantized import dequantize_into, load_4bit
from sdft.models.run_models import is_adapter
from sdft.utils.io import publishing

log = logging.getLogger(__name__)


def run_export(ctx: RunContext) -> dict:
    """The export stage (rank 0): ``export/model`` (and ``export/adapter`` after LoRA)."""
    return {"model": str(export_model(ctx.cfg, ctx.layout, ctx.tok))}


def export_dtype(cfg: RunConfig) -> str:
    if cfg.export.dtype != "auto":
        return cfg.export.dtype
    return "bfloat16" if cfg.train.method == "qlora" else cfg.model.dtype


def merged_qlora_model(cfg: RunConfig, adapter_dir: Path, dtype: str):
    """Base in ``dtype`` with every 4-bit layer's dequantized weight, the adapter merged into it."""
    from peft import PeftModel

    cpu = torch.device("cpu")
    base = load_model(cfg.model.path, dtype, cpu)
    quantized = load_4bit(cfg, cpu)
    n = dequantize_into(base, quantized)
    del quantized
    log.info("export: %d layers set to their dequantized 4-bit weights", n)
    return PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()


def export_model(cfg: RunConfig, layout: RunLayout, tok) -> Path:
    """Merge (LoRA, QLoRA) or copy (full) ``train/final`` into ``export/model``; returns that folder."""
    final_dir = layout.final
    if not final_dir.is_dir():
        raise StageError(f"{final_dir}: no finished training output; run `sdft train` first")
    cpu, dtype = torch.device("cpu"), export_dtype(cfg)
    adapter = is_adapter(final_dir)
    if cfg.train.method == "qlora":
        model = merged_qlora_model(cfg, final_dir, dtype)
    elif adapter:
        model = load_model(cfg.model.path, dtype, cpu, adapter=final_dir).merge_and_unload()
    else:
        model = load_model(str(final_dir), dtype, cpu)
    model.config.use_cache = True
    if adapter:
        with publishing(layout.export_adapter) as tmp:
            for f in final_dir.glob("adapter_*"):
                shutil.copy2(f, tmp / f.name)
    with publishing(layout.export_model) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        (tmp / layout.model_card.name).write_text(model_card(cfg, layout, dtype), encoding="utf-8")
    log.info("export: wrote %s (%s)", layout.export_model, dtype)
    return layout.export_model
