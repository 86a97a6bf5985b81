"""Triton kernel for the fused loss on CUDA: cross-entropy and its logit gradient, in place.

One program per row of a [c, V] logits chunk (bf16, fp16 or fp32, as the matmul produced it): an
online max / sum-exp pass over the vocabulary in float32 gives the log-sum-exp, the row's loss is
``lse - logit[label]``, and a second pass overwrites the logits with ``scale * (softmax - onehot)``.
The chunk's logits buffer is thus reused for its gradient (no float32 [c, V] copy), which is what
lets the surrounding matmuls stay in cuBLAS (Liger-Kernel's layout). Rows given here are always
labelled: ignored rows were dropped before the matmul.

``TRITON_INTERPRET=1`` runs the kernel on CPU tensors (slowly), which is how the CPU tests reach it.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _softmax_grad_rows(logits_ptr, stride, labels_ptr, loss_ptr, n_cols, scale, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    base = logits_ptr + row * stride
    label = tl.load(labels_ptr + row)
    offs = tl.arange(0, BLOCK)
    # Online log-sum-exp with one running max per row (Liger's form): one exp per element, where a
    # running max per lane would take two. Masked lanes load -inf and add exp(-inf) = 0.
    m = float("-inf")
    s = 0.0
    for start in range(0, n_cols, BLOCK):
        cols = start + offs
        x = tl.load(base + cols, mask=cols < n_cols, other=float("-inf")).to(tl.float32)
        m_new = tl.maximum(m, tl.max(x, 0))  # finite after the first block: a block holds >= 1 column
        s = s * tl.exp(m - m_new) + tl.sum(tl.exp(x - m_new), 0)
        m = m_new
    lse = m + tl.log(s)
    target = tl.load(base + label).to(tl.float32)
    tl.store(loss_ptr + row, lse - target)
    for start in range(0, n_cols, BLOCK):
        cols = start + offs
        valid = cols < n_cols
        x = tl.load(base + cols, mask=valid, other=0.0).to(tl.float32)
        g = tl.exp(x - lse) - tl.where(cols == label, 1.0, 0.0)
        tl.store(base + cols, (g * scale).to(logits_ptr.dtype.element_ty), mask=valid)


def softmax_grad_(logits: torch.Tensor, labels: torch.Tensor, scale: float) -> torch.Tensor:
    """Overwrite ``logits`` [c, V] with ``scale * (softmax(logits) - onehot(labels))``.

    Args:
        logits: [c, V], contiguous rows; modified in place.
        labels: [c] int64 in [0, V).
        scale: multiplies the gradient (1 / n for a mean over n rows).
    Returns:
        [c] float32 per-row cross-entropy (unscaled).
    """
    c, v = logits.shape
    loss = torch.empty(c, dtype=torch.float32, device=logits.device)
    if c:
        # Liger's launch shape: wide blocks, many warps per row. Autotuning over six shapes on an H100
        # chose this one too for V = 32000 and 128256 (benchmarks/RESULTS.md).
        block = min(32768, triton.next_power_of_2(v))
        warps = 32 if block >= 32768 else 16 if block >= 8192 else 4
        _softmax_grad_rows[(c,)](logits, logits.stride(0), labels, loss, v, scale, BLOCK=block, num_warps=warps)
    return loss
