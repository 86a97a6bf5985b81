"""Step 5: a standalone transformers folder (safetensors) that ``AutoModelForCausalLM.from_pretrained``
loads with no peft: the LoRA adapter merged into the seed's weights, or the fully tuned model."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import torch

from sdft.config.schema import RunConfig
from sdft.models.loading import load_model
from sdft.utils.io import atomic_publish_dir

log = logging.getLogger(__name__)


def export_model(cfg: RunConfig, final_dir: Path, out_dir: Path, tok) -> Path:
    """Merge (LoRA) or copy (full) ``final_dir`` into ``out_dir/model``; returns that folder."""
    if not (final_dir / "COMPLETE.json").exists():
        raise FileNotFoundError(f"{final_dir}: no finished training output; run `sdft train` first")
    cpu = torch.device("cpu")
    if (final_dir / "adapter_config.json").exists():
        model = load_model(cfg.model.path, cfg.export.dtype, cpu, adapter=final_dir).merge_and_unload()
    else:
        model = load_model(str(final_dir), cfg.export.dtype, cpu)
    model.config.use_cache = True
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir, prefix=".model-"))
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    target = out_dir / "model"
    atomic_publish_dir(tmp, target)
    log.info("export: wrote %s", target)
    return target
