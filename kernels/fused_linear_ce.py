"""Fused linear + cross-entropy: ``CE(hidden @ weight.T, labels)`` without the [tokens, vocab] logits.

Chunked PyTorch path (CPU, and the fallback everywhere): rows whose label is ``ignore_index`` are
dropped first, so prompt tokens cost no matmul; the kept rows go through in chunks sized so that a
chunk's logits are about as large as the input (Liger's rule, ``default_chunk_rows``).
Per chunk: logits in the input dtype, softmax and loss in float32, then the gradient is built at
once (as Liger does): ``d_hidden = dlogits @ W`` and, when ``weight`` requires grad,
``d_weight += dlogits.T @ hidden`` accumulated in float32. Backward only scales the stored gradients
by the incoming gradient. A frozen weight (LoRA) skips ``d_weight`` entirely.

Unlike ``torch.nn.functional.cross_entropy``, ``reduction="mean"`` with every label ignored returns 0
(and zero gradients), not NaN: a fully masked micro-batch must not poison a training step.
"""

from __future__ import annotations

import torch


def default_chunk_rows(n: int, hidden: int, vocab: int) -> int:
    """Rows per chunk: a power of two near ``n / ceil(vocab / hidden)`` (logits chunk ~ input size)."""
    inc = max(1, -(-vocab // hidden))
    rows = max(1, -(-n // inc))
    return 1 << (rows - 1).bit_length()


class _ChunkedLinearCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, labels, ignore_index, reduction, chunk_rows):
        n_all, h = hidden.shape
        keep = (labels != ignore_index).nonzero()[:, 0]            # [n] kept row indices
        n = keep.numel()
        grad_hidden = torch.zeros_like(hidden) if hidden.requires_grad else None
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if weight.requires_grad else None
        loss = torch.zeros((), dtype=torch.float32, device=hidden.device)
        rows = chunk_rows or default_chunk_rows(max(n, 1), h, weight.shape[0])
        for start in range(0, n, rows):
            idx = keep[start:start + rows]
            x = hidden.index_select(0, idx)                          # [c, H]
            y = labels.index_select(0, idx)                          # [c]
            logits = (x @ weight.t()).float()                        # [c, V]
            lse = torch.logsumexp(logits, dim=-1)                    # [c]
            loss += (lse - logits.gather(1, y[:, None])[:, 0]).sum()
            dlogits = logits.sub_(lse[:, None]).exp_()               # softmax, in place of the logits
            dlogits[torch.arange(len(idx), device=y.device), y] -= 1.0
            if grad_hidden is not None:
                grad_hidden.index_copy_(0, idx, (dlogits.to(weight.dtype) @ weight).to(hidden.dtype))
            if grad_weight is not None:
                grad_weight.addmm_(dlogits.t(), x.float())
        scale = 1.0 / n if reduction == "mean" and n > 0 else 1.0
        if scale != 1.0:
            loss *= scale
            if grad_hidden is not None:
                grad_hidden *= scale
            if grad_weight is not None:
                grad_weight *= scale
        ctx.save_for_backward(grad_hidden, grad_weight.to(weight.dtype) if grad_weight is not None else None)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        grad_hidden, grad_weight = ctx.saved_tensors
        gh = grad_hidden * grad_loss.to(grad_hidden.dtype) if grad_hidden is not None else None
        gw = grad_weight * grad_loss.to(grad_weight.dtype) if grad_weight is not None else None
        return gh, gw, None, None, None, None


def fused_linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, *,
                               ignore_index: int = -100, reduction: str = "mean",
                               chunk_rows: int | None = None) -> torch.Tensor:
    """Cross-entropy of ``hidden @ weight.T`` against ``labels``, without the full logits.

    Args:
        hidden: [N, H] final hidden states (fp32 or bf16).
        weight: [V, H] output projection (the lm_head weight); frozen or trainable.
        labels: [N] int64 target ids, ``ignore_index`` where no loss is taken.
        reduction: ``"mean"`` over kept rows (0 when none) or ``"sum"``.
        chunk_rows: rows per chunk (default: logits chunk about the input's size).
    Returns:
        scalar float32 loss.
    """
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction={reduction!r}: expected 'mean' or 'sum'")
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(f"expected hidden [N, H] and weight [V, H], got {tuple(hidden.shape)} and {tuple(weight.shape)}")
    if labels.shape != hidden.shape[:1]:
        raise ValueError(f"labels {tuple(labels.shape)} must be [N] with N = {hidden.shape[0]}")
    return _ChunkedLinearCE.apply(hidden, weight, labels, ignore_index, reduction, chunk_rows)
