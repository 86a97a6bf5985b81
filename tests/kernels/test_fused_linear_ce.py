"""The chunked fused linear + cross-entropy against a float64 reference, on random data."""

import pytest
import torch

from sdft_kernels import fused_linear_cross_entropy

# Per-dtype tolerances on loss and gradients (bf16: inputs rounded to 8 bits of mantissa, the
# matmuls run in bf16; fp32 accumulation of softmax and d_weight keeps the rest tight).
TOL = {torch.float32: dict(rtol=1e-4, atol=1e-5), torch.bfloat16: dict(rtol=3e-2, atol=3e-3)}


def _reference(hidden, weight, labels, reduction):
    """float64 logits, torch cross-entropy; gradients by autograd."""
    h = hidden.detach().double().requires_grad_()
    w = weight.detach().double().requires_grad_()
    keep = labels != -100
    loss = torch.nn.functional.cross_entropy(h @ w.t(), labels, ignore_index=-100, reduction="sum")
    if reduction == "mean":
        loss = loss / keep.sum().clamp(min=1)
    (loss * 3.0).backward()  # a non-unit upstream gradient
    return loss, h.grad, w.grad


def _data(n, h, v, dtype, ignored, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=g).to(dtype)
    weight = (torch.randn(v, h, generator=g) / h ** 0.5).to(dtype)
    labels = torch.randint(0, v, (n,), generator=g)
    labels[torch.rand(n, generator=g) < ignored] = -100
    return hidden, weight, labels


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("n, h, v, ignored, chunk", [(64, 32, 256, 0.0, None), (37, 19, 101, 0.5, 4),
                                                       (50, 24, 300, 0.9, 8), (8, 16, 64, 0.0, 1)])
def test_loss_and_both_gradients_match_float64(dtype, reduction, n, h, v, ignored, chunk):
    hidden, weight, labels = _data(n, h, v, dtype, ignored)
    ref_loss, ref_dh, ref_dw = _reference(hidden, weight, labels, reduction)
    x = hidden.clone().requires_grad_()
    w = weight.clone().requires_grad_()
    loss = fused_linear_cross_entropy(x, w, labels, reduction=reduction, chunk_rows=chunk)
    (loss * 3.0).backward()
    assert loss.dtype == torch.float32
    scale = 1.0 if reduction == "mean" else 1.0 / n  # sums grow with n: compare per row
    torch.testing.assert_close(loss.double() * scale, ref_loss.detach() * scale, **TOL[dtype])
    torch.testing.assert_close(x.grad.double(), ref_dh, **TOL[dtype])  # one row's gradient: no n in it
    torch.testing.assert_close(w.grad.double() * scale, ref_dw * scale, **TOL[dtype])
    assert (x.grad[labels == -100] == 0).all()


def test_frozen_weight_skips_its_gradient():
    hidden, weight, labels = _data(32, 16, 64, torch.float32, 0.25)
    x = hidden.clone().requires_grad_()
    loss = fused_linear_cross_entropy(x, weight, labels)
    loss.backward()
    _, ref_dh, _ = _reference(hidden, weight, labels, "mean")
    torch.testing.assert_close(x.grad.double() * 3.0, ref_dh, rtol=1e-4, atol=1e-5)
    assert weight.grad is None


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_all_labels_ignored_gives_zero_not_nan(reduction):
    hidden, weight, labels = _data(10, 8, 32, torch.float32, 1.0)
    x = hidden.clone().requires_grad_()
    w = weight.clone().requires_grad_()
    loss = fused_linear_cross_entropy(x, w, labels, reduction=reduction)
    loss.backward()
    assert loss.item() == 0.0 and (x.grad == 0).all() and (w.grad == 0).all()


def test_bad_shapes_are_refused():
    hidden, weight, labels = _data(10, 8, 32, torch.float32, 0.0)
    with pytest.raises(ValueError, match=r"hidden \[N, H\] and weight \[V, H\]"):
        fused_linear_cross_entropy(hidden, weight[:, :4], labels)
    with pytest.raises(ValueError, match="labels"):
        fused_linear_cross_entropy(hidden, weight, labels[:5])
    with pytest.raises(ValueError, match="reduction"):
        fused_linear_cross_entropy(hidden, weight, labels, reduction="none")
