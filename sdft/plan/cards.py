"""Accelerators ``sdft plan --gpu NAME`` knows: memory (as ``nvidia-smi`` or ``rocm-smi`` reports it, in
GiB), dense bfloat16 peak (TFLOP/s, no sparsity) and memory bandwidth (TB/s), from the vendors' data
sheets. Any other card: ``--gpu <memory>`` (e.g. ``48GiB``)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from sdft.errors import ConfigError


@dataclass(frozen=True)
class Card:
    name: str
    memory_gib: float
    bf16_tflops: float | None = None
    bandwidth_tbs: float | None = None


CARDS = {c.name.lower(): c for c in (
    Card("H200", 140.4, 989, 4.8),
    Card("H100", 79.6, 989, 3.35),  # SXM
    Card("H100-PCIe", 79.6, 756, 2.0),
    Card("A100-80GB", 80.0, 312, 2.04),
    Card("A100-40GB", 40.0, 312, 1.56),
    Card("L40S", 45.0, 362, 0.86),
    Card("A10G", 22.5, 70, 0.6),
    Card("RTX4090", 24.0, 165, 1.01),
    Card("MI300X", 192.0, 1307, 5.3),
)}


def card(spec: str) -> Card:
    """The card ``--gpu`` names, or one with the memory it gives (``48``, ``48GiB``, ``80GB``)."""
    if spec.lower() in CARDS:
        return CARDS[spec.lower()]
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(GiB|GB|G)?", spec.strip(), flags=re.IGNORECASE)
    if not m or float(m.group(1)) <= 0:
        raise ConfigError(f"--gpu {spec!r}: name a card ({', '.join(c.name for c in CARDS.values())}) or give its "
                          "memory, e.g. 48GiB")
    gib = float(m.group(1)) * (1e9 / 2**30 if (m.group(2) or "").upper() == "GB" else 1)
    return Card(f"{gib:.1f} GiB card", gib)
