"""Rank-0 logging, and the run record every command writes: resolved config, argv, package versions."""

from __future__ import annotations

import logging
import platform
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import yaml

from sdft.distributed import runtime
from sdft.layout import RunLayout
from sdft.utils.io import atomic_write_text

_PACKAGES = ("sdft", "torch", "transformers", "datasets", "peft", "safetensors", "deepspeed",
             "bitsandbytes", "accelerate", "tokenizers", "gguf", "numpy")


def setup_logging(level: int = logging.INFO) -> None:
    """Log to stderr on rank 0 only; other ranks log warnings and errors."""
    logging.basicConfig(
        level=level if runtime.is_main() else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S", force=True)
    for noisy in ("httpx", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # bitsandbytes warns on every import that the hub package `kernels` is absent; we never want it.
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # weight-loading bars; our own bars stay


def package_versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    try:
        import torch

        out["cuda"] = torch.version.cuda or "none"
        # The cards the run saw (a figure read off a record means little without them).
        if torch.cuda.is_available():
            out["gpus"] = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
    except ImportError:  # pragma: no cover - torch is a hard dependency
        pass
    return out


def write_run_record(layout: RunLayout, command: str, config: dict) -> Path | None:
    """Rank 0: write ``run_info/<time>-<command>.yaml`` with the resolved config and versions, plus
    ``config.yaml`` (the latest resolved config). Returns the record's path (None on other ranks)."""
    if not runtime.is_main():
        return None
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
    record = {"command": command, "argv": sys.argv, "time_utc": stamp, "versions": package_versions(),
              "config": config}
    path = layout.run_record(stamp, command)
    atomic_write_text(path, yaml.safe_dump(record, sort_keys=False))
    atomic_write_text(layout.config_yaml, yaml.safe_dump(config, sort_keys=False))
    return path
