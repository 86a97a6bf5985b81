"""Tolerances that follow from the numerics, not from the CPU one run happened on.

A float computation's rounding error scales with the size of what it adds up, so a result is compared
with a reference (float64, or a second float computation of the same mathematics) within a budget of
``k`` machine epsilons of the reference tensor's largest entry (its scale). ``k`` covers the accumulation
depth of the small models the tests use: float32 gradients of 2-layer models against float64 were
measured at most 11 eps of their scale at each of torch's kernel levels here (native AVX-512,
``ATEN_CPU_CAPABILITY=avx2`` and ``=default``; scripted in ``tests/train/test_objective.py``), so 128 eps
leaves a margin of 10. A real error (a mask that leaks, a shifted label, a wrong normaliser) moves a
result by O(1) of its scale, far outside any budget here.

Compare gradients, not weights after an Adam step: Adam's first update is about lr * g / |g| per
element, so rounding noise on a gradient element that is nearly zero becomes a whole learning-rate
step in either direction, whatever the precision.
"""

from __future__ import annotations

import os

import pytest
import torch

BUDGET_EPS = {torch.float32: 128, torch.bfloat16: 8}


def budget(dtype: torch.dtype, scale: float) -> float:
    """The absolute error allowed for a ``dtype`` result whose reference has magnitude ``scale``."""
    return BUDGET_EPS[dtype] * torch.finfo(dtype).eps * scale


def assert_close_scaled(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype = torch.float32,
                        msg: str | None = None, sides: int = 1) -> None:
    """Every entry of ``actual`` within ``budget(dtype, max|expected|)`` of ``expected``.

    ``sides=2`` when both are ``dtype`` computations of the same exact value (each may be off by a
    budget), 1 when ``expected`` is a float64 reference.
    """
    expected, actual = expected.detach().double(), actual.detach().double()
    atol = sides * budget(dtype, expected.abs().max().item())
    torch.testing.assert_close(actual, expected, rtol=0, atol=atol, msg=msg)


def assert_scalar_close(actual: float, expected: float, dtype: torch.dtype = torch.float32, sides: int = 1) -> None:
    """A scalar (a loss) within ``sides`` budgets of its own magnitude."""
    assert abs(actual - expected) <= sides * budget(dtype, abs(expected)), (actual, expected)


def bf16_sdpa_unavailable() -> str:
    """Why torch's bfloat16 attention cannot run in this process, or "".

    Its CPU flash-attention kernel asks the hardware (not ``ATEN_CPU_CAPABILITY``) whether AMX can pack
    the operands, then calls a packing routine that only the AVX-512 build of the kernel contains. So a
    run forced to ``avx2`` or ``default`` on an AMX CPU fails with "pack_vnni2 is only supported when
    avx512 is supported", a combination no real AVX2 CPU reaches (it has no AMX and takes the unpacked
    path). Such a run skips the bf16 attention tests; the native level runs them.
    """
    forced = os.environ.get("ATEN_CPU_CAPABILITY", "").lower()
    if forced in ("avx2", "default") and torch.cpu._is_amx_tile_supported():
        return (f"ATEN_CPU_CAPABILITY={forced} on an AMX CPU: torch's bf16 attention kernel asks the hardware for "
                "AVX-512 packing that this kernel level lacks (no real AVX2 CPU takes that path)")
    return ""


requires_bf16_sdpa = pytest.mark.skipif(bool(bf16_sdpa_unavailable()), reason=bf16_sdpa_unavailable() or "-")
