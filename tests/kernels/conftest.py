"""Fixtures of the kernel tests: where the Triton path can run here."""

import os

import pytest
import torch


@pytest.fixture(scope="module")
def triton_on_this_machine():
    """The device ``impl="triton"`` runs on here: CUDA, else CPU through Triton's interpreter
    (``TRITON_INTERPRET=1``, set by conftest before triton is imported)."""
    pytest.importorskip("triton")
    if torch.cuda.is_available():
        return "cuda"
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("no CUDA and TRITON_INTERPRET is not set")
    return "cpu"


@pytest.fixture(params=["torch", "triton"])
def impl_device(request):
    """(impl, device) pairs to run: torch on CPU, triton where it can run."""
    if request.param == "torch":
        return "torch", "cpu"
    return "triton", request.getfixturevalue("triton_on_this_machine")
