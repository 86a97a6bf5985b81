"""The fused linear divergence against a float64 reference on random data: every divergence, top-k,
masked rows, odd shapes, fp32 and bf16; the chunked torch path, and the Triton kernel (on CUDA, else
in Triton's CPU interpreter when triton is installed)."""


import pytest
import torch

from sdft_kernels import fused_linear_divergence

TOL = {torch.float32: dict(rtol=1e-4, atol=1e-5), torch.bfloat16: dict(rtol=3e-2, atol=3e-3)}
TOL_DW_TRITON_BF16 = dict(rtol=5e-2, atol=6e-3)
CASES = [("forward_kl", 0.5), ("reverse_kl", 0.5), ("jsd", 0.5), ("jsd", 0.1)]


def reference_divergence(s_logits, t_logits, kind, beta, support=None):
    """Per-row divergence [N] of the teacher and student distributions, written out from the
    definitions (float64 in, float64 out; the same formulas as TRL's ``compute_divergence``), over
    the token ids ``support`` [N, k] when given."""
    if support is not None:
        s_logits, t_logits = s_logits.gather(1, support), t_logits.gather(1, support)
    ls, lt = s_logits.log_softmax(-1), t_logits.log_softmax(-1)
    ps, pt = ls.exp(), lt.exp()
    if kind == "forward_kl":
        return (pt * (lt - ls)).sum(-1)
    if kind == "reverse_kl":
        return (ps * (ls - lt)).sum(-1)
    m = beta * pt + (1 - beta) * ps
    return beta * (pt * (lt - m.log())).sum(-1) + (1 - beta) * (ps * (ls - m.log())).sum(-1)


def _reference(xs, ws, xt, wt, mask, kind, beta, top_k, reduction):
    h = xs.detach().double().requires_grad_()
    w = ws.detach().double().requires_grad_()
    # The top-k support as the teacher's logits in the input dtype rank it (bf16 rounding may swap
    # near-ties, which float64 logits would rank otherwise).
    support = (xt @ wt.t()).topk(top_k, dim=-1).indices if top_k else None
    per_row = reference_divergence(h @ w.t(), xt.double() @ wt.double().t(), kind, beta, support)
    loss = per_row[mask].sum()
    if reduction == "mean":
        loss = loss / mask.sum().clamp(min=1)
    (loss * 3.0).backward()  # a non-unit upstream gradient
    return loss.detach(), h.grad, w.grad


def _data(n, h, v, dtype, masked, seed=0, sharp=1.0):
    g = torch.Generator().manual_seed(seed)
    xs = torch.randn(n, h, generator=g).to(dtype)
    ws = (sharp * torch.randn(v, h, generator=g) / h ** 0.5).to(dtype)
    xt = (xs.float() + 0.5 * torch.randn(n, h, generator=g)).to(dtype)   # a teacher near the student
    wt = (ws.float() + 0.2 * torch.randn(v, h, generator=g) / h ** 0.5).to(dtype)
    mask = torch.rand(n, generator=g) >= masked
    return xs, ws, xt, wt, mask


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("kind, beta", CASES)
@pytest.mark.parametrize("n, h, v, masked, chunk, top_k, reduction", [
    (64, 32, 256, 0.0, None, 0, "sum"), (37, 19, 101, 0.5, 4, 0, "mean"), (50, 24, 300, 0.9, 8, 7, "sum"),
    (8, 16, 64, 0.0, 1, 63, "mean")])
def test_loss_and_student_gradients_match_float64(impl_device, dtype, kind, beta, n, h, v, masked, chunk, top_k,
                                                  reduction):
    impl, device = impl_device
    xs, ws, xt, wt, mask = _data(n, h, v, dtype, masked)
    ref_loss, ref_dh, ref_dw = _reference(xs, ws, xt, wt, mask, kind, beta, top_k, reduction)
    x, w = xs.to(device).requires_grad_(), ws.to(device).requires_grad_()
    t_x, t_w = xt.to(device).requires_grad_(), wt.to(device)
    loss = fused_linear_divergence(x, w, t_x, t_w, divergence=kind, beta=beta, top_k=top_k,
                                   mask=mask.to(device) if masked else None, reduction=reduction,
                                   chunk_rows=chunk, impl=impl)
    (loss * 3.0).backward()
    assert loss.dtype == torch.float32
    scale = 1.0 if reduction == "mean" else 1.0 / n
    tol_dw = TOL_DW_TRITON_BF16 if impl == "triton" and dtype == torch.bfloat16 else TOL[dtype]
    torch.testing.assert_close(loss.cpu().double() * scale, ref_loss * scale, **TOL[dtype])
    torch.testing.assert_close(x.grad.cpu().double(), ref_dh, **TOL[dtype])
    torch.testing.assert_close(w.grad.cpu().double() * scale, ref_dw * scale, **tol_dw)
    assert t_x.grad is None  # the teacher gets no gradient
    assert (x.grad.cpu()[~mask] == 0).all()


@pytest.mark.parametrize("kind, beta", CASES)
def test_triton_rows_wider_than_one_block(triton_on_this_machine, kind, beta):
    """V above the kernel's widest block: the online log-sum-exps and the row sums cross blocks. Sharp
    distributions over 32845 tokens in float32: the bar is the CUDA one for real vocabularies (rtol
    5e-4), which the torch path's float32 error needs as well."""
    xs, ws, xt, wt, mask = _data(4, 8, 32768 + 77, torch.float32, 0.0, seed=3, sharp=8.0)
    ref_loss, ref_dh, ref_dw = _reference(xs, ws, xt, wt, mask, kind, beta, 0, "sum")
    dev = triton_on_this_machine
    x, w = xs.to(dev).requires_grad_(), ws.to(dev).requires_grad_()
    loss = fused_linear_divergence(x, w, xt.to(dev), wt.to(dev), divergence=kind, beta=beta, impl="triton")
    (loss * 3.0).backward()
    tol = dict(rtol=5e-4, atol=1e-5)
    torch.testing.assert_close(loss.cpu().double(), ref_loss, **tol)
    torch.testing.assert_close(x.grad.cpu().double(), ref_dh, **tol)
    torch.testing.assert_close(w.grad.cpu().double(), ref_dw, **tol)


def test_a_teacher_equal_to_the_student_gives_zero_loss_and_gradient():
    xs, ws, _, _, _ = _data(12, 8, 40, torch.float64, 0.0)
    for kind in ("forward_kl", "reverse_kl", "jsd"):
        x = xs.clone().requires_grad_()
        loss = fused_linear_divergence(x, ws, xs, ws, divergence=kind, impl="torch")
        loss.backward()
        assert abs(loss.item()) < 1e-12 and x.grad.abs().max() < 1e-12


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_every_row_masked_gives_zero_not_nan(impl_device, reduction):
    impl, device = impl_device
    xs, ws, xt, wt, _ = _data(10, 8, 32, torch.float32, 0.0)
    x, w = xs.to(device).requires_grad_(), ws.to(device).requires_grad_()
    loss = fused_linear_divergence(x, w, xt.to(device), wt.to(device), mask=torch.zeros(10, dtype=torch.bool,
                                   device=device), reduction=reduction, impl=impl)
    loss.backward()
    assert loss.item() == 0.0 and (x.grad == 0).all() and (w.grad == 0).all()


def test_a_frozen_student_weight_gets_no_gradient():
    xs, ws, xt, wt, _ = _data(9, 8, 30, torch.float32, 0.0)
    x = xs.clone().requires_grad_()
    fused_linear_divergence(x, ws, xt, wt, impl="torch").backward()
    assert ws.grad is None and x.grad is not None


def test_bad_arguments_are_refused():
    xs, ws, xt, wt, _ = _data(4, 8, 16, torch.float32, 0.0)
    with pytest.raises(ValueError, match="divergence"):
        fused_linear_divergence(xs, ws, xt, wt, divergence="kl")
    with pytest.raises(ValueError, match="strictly between"):
        fused_linear_divergence(xs, ws, xt, wt, divergence="jsd", beta=1.0)
    with pytest.raises(ValueError, match="equal shapes"):
        fused_linear_divergence(xs, ws, xt[:3], wt)
    with pytest.raises(ValueError, match="one dtype"):
        fused_linear_divergence(xs, ws, xt.double(), wt)
    with pytest.raises(ValueError, match="mask"):
        fused_linear_divergence(xs, ws, xt, wt, mask=torch.ones(3, dtype=torch.bool))
