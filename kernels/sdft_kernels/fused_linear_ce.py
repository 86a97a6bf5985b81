"""Fused linear + cross-entropy: ``CE(hidden @ weight.T, labels)`` without the [tokens, vocab] logits.

Rows whose label is ``ignore_index`` are dropped first, so prompt tokens cost no matmul (one host
sync per call, for the kept-row count; none per chunk). The kept rows go through in chunks sized so
that a chunk's logits are about as large as the input (Liger's rule, ``default_chunk_rows``). Per
chunk the gradient is built at once (as Liger does): ``d_hidden = dlogits @ W`` and, when ``weight``
requires grad, ``d_weight += dlogits.T @ hidden``; backward only scales the stored gradients by the
incoming gradient. A frozen weight (LoRA) skips ``d_weight`` entirely.

Two implementations of the per-chunk softmax gradient, same contract:
- ``torch`` (CPU, and the fallback): logits to float32, log-sum-exp and softmax in float32;
  ``d_weight`` accumulated in float32 across chunks.
- ``triton`` (CUDA): ``sdft_kernels.triton_ce`` turns the chunk's logits into their gradient in place
  (float32 math, no float32 [c, V] copy); the three matmuls are cuBLAS in the input dtype (float32
  accumulation inside each), and ``d_weight`` accumulates across chunks in the weight's dtype, which
  keeps peak memory at one [V, H] gradient (a float32 accumulator would add 2 GiB at V=128k, H=4096).

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


def _torch_softmax_grad(logits: torch.Tensor, y: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(float32 ``scale * (softmax - onehot)`` [c, V], float32 summed loss of the chunk)."""
    logits = logits.float()
    lse = torch.logsumexp(logits, dim=-1)                            # [c]
    loss = (lse - logits.gather(1, y[:, None])[:, 0]).sum()
    grad = logits.sub_(lse[:, None]).exp_()                          # softmax, in place of the logits
    grad[torch.arange(len(y), device=y.device), y] -= 1.0
    if scale != 1.0:
        grad *= scale
    return grad, loss


def _triton_softmax_grad(logits: torch.Tensor, y: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    from sdft_kernels.triton_ce import softmax_grad_

    return logits, softmax_grad_(logits, y, scale).sum()


class _ChunkedLinearCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, labels, ignore_index, reduction, chunk_rows, impl):
        n_all, h = hidden.shape
        keep = (labels != ignore_index).nonzero()[:, 0]            # [n] kept row indices (the one sync)
        n = keep.numel()
        scale = 1.0 / n if reduction == "mean" and n > 0 else 1.0
        softmax_grad = _triton_softmax_grad if impl == "triton" else _torch_softmax_grad
        acc_dtype = weight.dtype if impl == "triton" else torch.float32
        grad_hidden = torch.zeros_like(hidden) if hidden.requires_grad else None
        grad_weight = torch.zeros(weight.shape, dtype=acc_dtype, device=weight.device) if weight.requires_grad else None
        loss = torch.zeros((), dtype=torch.float32, device=hidden.device)
        # Chunk size from all N rows, not the kept ones: dropping rows then means fewer chunks of the
        # same (efficient) size, not as many smaller ones.
        rows = chunk_rows or default_chunk_rows(n_all, h, weight.shape[0])
        every_row = n == n_all  # then chunks are slices: no gather of hidden, no scatter of its gradient
        for start in range(0, n, rows):
            if every_row:
                idx = slice(start, start + rows)
                x, y = hidden[idx], labels[idx]                      # [c, H], [c]
            else:
                idx = keep[start:start + rows]
                x, y = hidden.index_select(0, idx), labels.index_select(0, idx)
            dlogits, chunk_loss = softmax_grad(x @ weight.t(), y, scale)  # [c, V]
            loss += chunk_loss
            if grad_hidden is not None:
                dx = dlogits.to(weight.dtype) @ weight
                if every_row:
                    grad_hidden[idx] = dx
                else:
                    grad_hidden.index_copy_(0, idx, dx)
            if grad_weight is not None:
                grad_weight.addmm_(dlogits.t(), x.to(dlogits.dtype))
            del dlogits  # before the next chunk's logits are allocated: one [c, V] buffer alive, not two
        loss *= scale
        ctx.save_for_backward(grad_hidden, grad_weight.to(weight.dtype) if grad_weight is not None else None)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        return (*scaled_saved_grads(ctx, grad_loss), None, None, None, None, None)


def scaled_saved_grads(ctx, grad_loss: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The (d_hidden, d_weight) a fused loss stored in forward, times the incoming gradient. In place:
    the stored gradients are used once, and a copy would double d_weight's memory."""
    grad_hidden, grad_weight = ctx.saved_tensors
    gh = grad_hidden.mul_(grad_loss.to(grad_hidden.dtype)) if grad_hidden is not None else None
    gw = grad_weight.mul_(grad_loss.to(grad_weight.dtype)) if grad_weight is not None else None
    return gh, gw


def _pick_impl(impl: str, hidden: torch.Tensor) -> str:
    if impl == "auto":
        if not hidden.is_cuda:
            return "torch"
        try:
            import triton  # noqa: F401
        except ImportError:
            return "torch"
        return "triton"
    if impl not in ("torch", "triton"):
        raise ValueError(f"impl={impl!r}: expected 'auto', 'torch' or 'triton'")
    return impl


def fused_linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, *,
                               ignore_index: int = -100, reduction: str = "mean",
                               chunk_rows: int | None = None, impl: str = "auto") -> torch.Tensor:
    """Cross-entropy of ``hidden @ weight.T`` against ``labels``, without the full logits.

    Args:
        hidden: [N, H] final hidden states (fp32, bf16 or fp16), the dtype of ``weight``.
        weight: [V, H] output projection (the lm_head weight); frozen or trainable.
        labels: [N] int64 target ids, ``ignore_index`` where no loss is taken.
        reduction: ``"mean"`` over kept rows (0 when none) or ``"sum"``.
        chunk_rows: rows per chunk (default: logits chunk about the input's size).
        impl: ``"auto"`` (Triton on CUDA when installed, else torch), ``"torch"`` or ``"triton"``.
    Returns:
        scalar float32 loss.
    """
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction={reduction!r}: expected 'mean' or 'sum'")
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(f"expected hidden [N, H] and weight [V, H], got {tuple(hidden.shape)} and {tuple(weight.shape)}")
    if hidden.dtype != weight.dtype:
        raise ValueError(f"hidden is {hidden.dtype} but weight is {weight.dtype}: cast one to the other")
    if labels.shape != hidden.shape[:1]:
        raise ValueError(f"labels {tuple(labels.shape)} must be [N] with N = {hidden.shape[0]}")
    return _ChunkedLinearCE.apply(hidden, weight, labels, ignore_index, reduction, chunk_rows,
                                  _pick_impl(impl, hidden))
