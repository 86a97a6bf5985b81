"""The fused linear + cross-entropy against a float64 reference, on random data: the chunked torch
path, and the Triton kernel (on CUDA, else in Triton's CPU interpreter when triton is installed)."""


import pytest
import torch

from sdft_kernels import fused_linear_cross_entropy

# Per-dtype tolerances on loss and gradients (bf16: inputs rounded to 8 bits of mantissa, the
# matmuls run in bf16; the softmax runs in fp32; d_weight accumulates over chunks in fp32 on the
# torch path and in bf16 on the Triton path, hence the looser d_weight bound there).
TOL = {torch.float32: dict(rtol=1e-4, atol=1e-5), torch.bfloat16: dict(rtol=3e-2, atol=3e-3)}
TOL_DW_TRITON_BF16 = dict(rtol=5e-2, atol=6e-3)


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
def test_loss_and_both_gradients_match_float64(impl_device, dtype, reduction, n, h, v, ignored, chunk):
    impl, device = impl_device
    hidden, weight, labels = _data(n, h, v, dtype, ignored)
    ref_loss, ref_dh, ref_dw = _reference(hidden, weight, labels, reduction)
    x = hidden.to(device).requires_grad_()
    w = weight.to(device).requires_grad_()
    loss = fused_linear_cross_entropy(x, w, labels.to(device), reduction=reduction, chunk_rows=chunk, impl=impl)
    (loss * 3.0).backward()
    assert loss.dtype == torch.float32
    scale = 1.0 if reduction == "mean" else 1.0 / n  # sums grow with n: compare per row
    tol_dw = TOL_DW_TRITON_BF16 if impl == "triton" and dtype == torch.bfloat16 else TOL[dtype]
    torch.testing.assert_close(loss.cpu().double() * scale, ref_loss.detach() * scale, **TOL[dtype])
    torch.testing.assert_close(x.grad.cpu().double(), ref_dh, **TOL[dtype])  # one row's gradient: no n in it
    torch.testing.assert_close(w.grad.cpu().double() * scale, ref_dw * scale, **tol_dw)
    assert (x.grad[labels.to(device) == -100] == 0).all()


def test_triton_kernel_rows_wider_than_one_block(triton_on_this_machine):
    """V above the kernel's widest (32768-column) block: the online log-sum-exp crosses blocks, with a ragged tail."""
    hidden, weight, labels = _data(6, 8, 32768 + 77, torch.float32, 0.0, seed=3)
    weight *= 8  # sharp softmax: a wrong running max would show
    ref_loss, ref_dh, ref_dw = _reference(hidden, weight, labels, "mean")
    x = hidden.to(triton_on_this_machine).requires_grad_()
    w = weight.to(triton_on_this_machine).requires_grad_()
    loss = fused_linear_cross_entropy(x, w, labels.to(triton_on_this_machine), impl="triton")
    (loss * 3.0).backward()
    torch.testing.assert_close(loss.cpu().double(), ref_loss.detach(), **TOL[torch.float32])
    torch.testing.assert_close(x.grad.cpu().double(), ref_dh, **TOL[torch.float32])
    torch.testing.assert_close(w.grad.cpu().double(), ref_dw, **TOL[torch.float32])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_auto_path_matches_float64_at_a_real_vocabulary(dtype):
    """impl="auto" on CUDA (the Triton kernel) at V=32000, H=512, half the labels ignored. fp32: the
    fp32 bar (rtol 5e-4, atol 1e-5). bf16: loss within Liger's bar (atol 5e-3, rtol 5e-2); each
    gradient's relative error (Frobenius) within torch's own bf16 error + 1e-2 (CCE's bar), torch
    computing bf16 logits and a float32 cross-entropy."""
    hidden, weight, labels = _data(2048, 512, 32000, dtype, 0.5, seed=5)
    ref_loss, ref_dh, ref_dw = _reference(hidden, weight, labels, "mean")

    def run(fn):
        x = hidden.cuda().requires_grad_()
        w = weight.cuda().requires_grad_()
        loss = fn(x, w, labels.cuda())
        (loss * 3.0).backward()
        return loss.detach().cpu().double(), x.grad.cpu().double(), w.grad.cpu().double()

    loss, dh, dw = run(fused_linear_cross_entropy)
    if dtype == torch.float32:
        tol = dict(rtol=5e-4, atol=1e-5)
        torch.testing.assert_close(loss, ref_loss.detach(), **tol)
        torch.testing.assert_close(dh, ref_dh, **tol)
        torch.testing.assert_close(dw, ref_dw, **tol)
        return
    torch.testing.assert_close(loss, ref_loss.detach(), rtol=5e-2, atol=5e-3)
    _, t_dh, t_dw = run(lambda x, w, y: torch.nn.functional.cross_entropy((x @ w.t()).float(), y, ignore_index=-100))

    def rel(a, b):
        return float((a - b).norm() / b.norm())

    assert rel(dh, ref_dh) <= rel(t_dh, ref_dh) + 1e-2
    assert rel(dw, ref_dw) <= rel(t_dw, ref_dw) + 1e-2


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_all_labels_ignored_gives_zero_not_nan(impl_device, reduction):
    impl, device = impl_device
    hidden, weight, labels = _data(10, 8, 32, torch.float32, 1.0)
    x = hidden.to(device).requires_grad_()
    w = weight.to(device).requires_grad_()
    loss = fused_linear_cross_entropy(x, w, labels.to(device), reduction=reduction, impl=impl)
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
    with pytest.raises(ValueError, match="cast one to the other"):
        fused_linear_cross_entropy(hidden.bfloat16(), weight, labels)
    with pytest.raises(ValueError, match="impl"):
        fused_linear_cross_entropy(hidden, weight, labels, impl="cuda")
