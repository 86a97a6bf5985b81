"""Triton kernel for the fused divergence on CUDA: per-token divergence and its student-logit gradient,
written over the student's logits.

One program per row of a [c, K] chunk (K: the vocabulary, or the teacher's top-k support). Pass 1:
online log-sum-exp of both rows in float32. Forward KL then needs one more pass (loss and gradient
``p_S - p_T`` together); reverse KL and JSD need two, because their gradient
``p_S * (g - sum p_S g)`` needs the row's ``sum p_S g`` first. The teacher row is only read.
``TRITON_INTERPRET=1`` runs it on CPU tensors, which is how the CPU tests reach it.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl


@triton.jit
def _log_mix(lt, ls, log_beta, log_1m_beta):
    """log(beta p_T + (1 - beta) p_S) from the two log-probabilities."""
    a = lt + log_beta
    b = ls + log_1m_beta
    hi = tl.maximum(a, b)
    return hi + tl.log(tl.exp(a - hi) + tl.exp(b - hi))


@triton.jit
def _divergence_rows(s_ptr, s_stride, t_ptr, t_stride, loss_ptr, n_cols, beta, log_beta, log_1m_beta, scale,
                     KIND: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    s_base = s_ptr + row * s_stride
    t_base = t_ptr + row * t_stride
    offs = tl.arange(0, BLOCK)
    ms = float("-inf")
    ss = 0.0
    mt = float("-inf")
    st = 0.0
    for start in range(0, n_cols, BLOCK):
        cols = start + offs
        x = tl.load(s_base + cols, mask=cols < n_cols, other=float("-inf")).to(tl.float32)
        y = tl.load(t_base + cols, mask=cols < n_cols, other=float("-inf")).to(tl.float32)
        ms_new = tl.maximum(ms, tl.max(x, 0))
        ss = ss * tl.exp(ms - ms_new) + tl.sum(tl.exp(x - ms_new), 0)
        ms = ms_new
        mt_new = tl.maximum(mt, tl.max(y, 0))
        st = st * tl.exp(mt - mt_new) + tl.sum(tl.exp(y - mt_new), 0)
        mt = mt_new
    lse_s = ms + tl.log(ss)
    lse_t = mt + tl.log(st)
    loss = 0.0
    dot = 0.0  # sum p_S g (reverse KL and JSD)
    if KIND != 0:
        for start in range(0, n_cols, BLOCK):
            cols = start + offs
            valid = cols < n_cols
            ls = tl.load(s_base + cols, mask=valid, other=0.0).to(tl.float32) - lse_s
            lt = tl.load(t_base + cols, mask=valid, other=0.0).to(tl.float32) - lse_t
            ps = tl.where(valid, tl.exp(ls), 0.0)
            if KIND == 1:
                g = ls - lt
                loss += tl.sum(ps * g, 0)
            else:
                lm = _log_mix(lt, ls, log_beta, log_1m_beta)
                pt = tl.where(valid, tl.exp(lt), 0.0)
                g = (1.0 - beta) * (ls - lm)
                loss += tl.sum(beta * pt * (lt - lm) + ps * g, 0)
            dot += tl.sum(ps * g, 0)
    for start in range(0, n_cols, BLOCK):
        cols = start + offs
        valid = cols < n_cols
        ls = tl.load(s_base + cols, mask=valid, other=0.0).to(tl.float32) - lse_s
        lt = tl.load(t_base + cols, mask=valid, other=0.0).to(tl.float32) - lse_t
        ps = tl.exp(ls)
        if KIND == 0:
            pt = tl.exp(lt)
            loss += tl.sum(tl.where(valid, pt * (lt - ls), 0.0), 0)
            grad = ps - pt
        elif KIND == 1:
            grad = ps * (ls - lt - dot)
        else:
            grad = ps * ((1.0 - beta) * (ls - _log_mix(lt, ls, log_beta, log_1m_beta)) - dot)
        tl.store(s_base + cols, (grad * scale).to(s_ptr.dtype.element_ty), mask=valid)
    tl.store(loss_ptr + row, loss)


def divergence_grad_(student: torch.Tensor, teacher: torch.Tensor, kind: int, beta: float,
                     scale: float) -> torch.Tensor:
    """Overwrite ``student`` [c, K] logits with ``scale * d divergence / d student``.

    Args:
        student: [c, K] student logits, contiguous rows; modified in place.
        teacher: [c, K] teacher logits, contiguous rows; read only.
        kind: 0 forward KL, 1 reverse KL, 2 JSD (``fused_linear_divergence.DIVERGENCES``).
        beta: the JSD mixing weight (unused otherwise).
        scale: multiplies the gradient.
    Returns:
        [c] float32 per-row divergence (unscaled).
    """
    c, k = student.shape
    loss = torch.empty(c, dtype=torch.float32, device=student.device)
    if c:
        block = min(32768, triton.next_power_of_2(k))
        warps = 32 if block >= 32768 else 16 if block >= 8192 else 4
        log_beta = math.log(beta) if kind == 2 else 0.0
        log_1m_beta = math.log1p(-beta) if kind == 2 else 0.0
        _divergence_rows[(c,)](student, student.stride(0), teacher, teacher.stride(0), loss, k, beta, log_beta,
                               log_1m_beta, scale, KIND=kind, BLOCK=block, num_warps=warps)
    return loss
