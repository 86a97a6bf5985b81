"""Fused linear + divergence: a per-token divergence between the teacher's and the student's
next-token distributions, ``softmax(teacher_hidden @ teacher_weight.T)`` and
``softmax(student_hidden @ student_weight.T)``, without the [tokens, vocab] logits of either model.

The divergences (p_T the teacher's distribution, p_S the student's, per token, summed over the vocabulary):

    forward_kl   KL(p_T || p_S)                                  gradient wrt student logits: p_S - p_T
    reverse_kl   KL(p_S || p_T)                                  p_S * (d - KL), d = log p_S - log p_T
    jsd          beta KL(p_T || M) + (1 - beta) KL(p_S || M),    p_S * (g - sum p_S g),
                 M = beta p_T + (1 - beta) p_S                   g = (1 - beta) (log p_S - log M)

(``jsd`` is the generalised JSD of GKD and TRL; it tends to forward KL as beta -> 0 only after
rescaling, so the two KLs are their own choices.) With ``top_k`` the support is each token's ``k``
most likely teacher tokens, and both distributions are renormalised over it (the divergence of the
top-k conditionals, as TRL's ``topk_logits`` without its tail bucket).

Chunks of rows go through as in ``fused_linear_ce`` (Liger's layout): per chunk both logits are made,
turned into the student logits' gradient at once, and ``d_hidden = dlogits @ W_S`` and
``d_weight += dlogits.T @ hidden`` are accumulated; backward only scales them. The teacher side gets
no gradient. Two implementations of the per-chunk step, same contract: ``torch`` (float32 math) and
``triton`` (``sdft_kernels.triton_divergence``: the gradient written over the student's logits
chunk, no float32 [c, V] copies).
"""

from __future__ import annotations

import math

import torch

from sdft_kernels.fused_linear_ce import _pick_impl, default_chunk_rows, scaled_saved_grads

DIVERGENCES = ("forward_kl", "reverse_kl", "jsd")
CPU_MIN_CHUNK_ROWS = 64


def _torch_divergence_grad(s: torch.Tensor, t: torch.Tensor, kind: str, beta: float,
                           scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(``scale * d loss / d s`` [c, K], summed loss) for student and teacher logits [c, K], in float32
    (float64 for float64 inputs)."""
    math_dtype = torch.promote_types(s.dtype, torch.float32)
    ls = s.to(math_dtype).log_softmax(dim=-1)
    lt = t.to(math_dtype).log_softmax(dim=-1)
    ps = ls.exp()
    if kind == "forward_kl":
        pt = lt.exp()
        loss = (pt * (lt - ls)).sum()
        grad = ps.sub_(pt)
    elif kind == "reverse_kl":
        d = ls.sub_(lt)                                                   # log p_S - log p_T
        kl = (ps * d).sum(dim=-1, keepdim=True)
        loss = kl.sum()
        grad = d.sub_(kl).mul_(ps)
    else:
        lm = torch.logaddexp(lt + math.log(beta), ls + math.log1p(-beta))  # log M
        loss = beta * (lt.exp() * (lt - lm)).sum() + (1 - beta) * (ps * (ls - lm)).sum()
        g = ls.sub_(lm).mul_(1 - beta)
        grad = g.sub_((ps * g).sum(dim=-1, keepdim=True)).mul_(ps)
    if scale != 1.0:
        grad *= scale
    return grad, loss


def _triton_divergence_grad(s: torch.Tensor, t: torch.Tensor, kind: str, beta: float,
                            scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    from sdft_kernels.triton_divergence import divergence_grad_

    s = s.contiguous()
    return s, divergence_grad_(s, t.contiguous(), DIVERGENCES.index(kind), beta, scale).sum()


def token_divergence(student_logits: torch.Tensor, teacher_logits: torch.Tensor, *, divergence: str = "forward_kl",
                     beta: float = 0.5, top_k: int = 0) -> torch.Tensor:
    """The unfused form, with autograd through ``student_logits``: per-token divergence [N] of logits
    [N, V] (float32 math; float64 for float64 logits). The teacher side is detached."""
    math_dtype = torch.promote_types(student_logits.dtype, torch.float32)
    s, t = student_logits.to(math_dtype), teacher_logits.detach().to(math_dtype)
    if top_k and top_k < s.shape[-1]:
        support = t.topk(top_k, dim=-1).indices
        s, t = s.gather(1, support), t.gather(1, support)
    ls, lt = s.log_softmax(dim=-1), t.log_softmax(dim=-1)
    if divergence == "forward_kl":
        return (lt.exp() * (lt - ls)).sum(-1)
    if divergence == "reverse_kl":
        return (ls.exp() * (ls - lt)).sum(-1)
    lm = torch.logaddexp(lt + math.log(beta), ls + math.log1p(-beta))
    return beta * (lt.exp() * (lt - lm)).sum(-1) + (1 - beta) * (ls.exp() * (ls - lm)).sum(-1)


class _ChunkedLinearDivergence(torch.autograd.Function):
    @staticmethod
    def forward(ctx, s_hidden, s_weight, t_hidden, t_weight, mask, kind, beta, top_k, reduction, chunk_rows, impl):
        n_all, h = s_hidden.shape
        keep = mask.nonzero()[:, 0] if mask is not None else None     # the one host sync
        n = keep.numel() if keep is not None else n_all
        scale = 1.0 / n if reduction == "mean" and n > 0 else 1.0
        step = _triton_divergence_grad if impl == "triton" else _torch_divergence_grad
        acc_dtype = s_weight.dtype if impl == "triton" else torch.promote_types(s_weight.dtype, torch.float32)
        grad_hidden = torch.zeros_like(s_hidden) if s_hidden.requires_grad else None
        grad_weight = (torch.zeros(s_weight.shape, dtype=acc_dtype, device=s_weight.device)
                       if s_weight.requires_grad else None)
        loss = torch.zeros((), dtype=torch.promote_types(s_hidden.dtype, torch.float32), device=s_hidden.device)
        rows = chunk_rows or default_chunk_rows(n_all, h, s_weight.shape[0])
        if not chunk_rows and not s_hidden.is_cuda:
            # On CPU a chunk of a few rows re-reads both [V, H] heads for little work (N = 500 scored
            # tokens, H = 576, V = 49152 gives 8-row chunks): at least 64 rows, whose [c, V] float32
            # buffers stay ~12 MB each at V = 49152.
            rows = max(rows, CPU_MIN_CHUNK_ROWS)
        for start in range(0, n, rows):
            idx = keep[start:start + rows] if keep is not None else slice(start, start + rows)
            xs = s_hidden[idx]                                             # [c, H]
            with torch.no_grad():
                s_logits = xs @ s_weight.t()                               # [c, V]
                t_logits = t_hidden[idx] @ t_weight.t()
                if top_k:
                    support = t_logits.topk(top_k, dim=-1).indices         # [c, k], the teacher's top-k
                    dk, chunk_loss = step(s_logits.gather(1, support), t_logits.gather(1, support), kind, beta, scale)
                    dlogits = torch.zeros(s_logits.shape, dtype=dk.dtype, device=dk.device).scatter_(1, support, dk)
                else:
                    dlogits, chunk_loss = step(s_logits, t_logits, kind, beta, scale)
                del s_logits, t_logits
                loss += chunk_loss
                if grad_hidden is not None:
                    grad_hidden[idx] = dlogits.to(s_weight.dtype) @ s_weight
                if grad_weight is not None:
                    grad_weight.addmm_(dlogits.t(), xs.to(dlogits.dtype))
                del dlogits
        loss *= scale
        ctx.save_for_backward(grad_hidden, grad_weight.to(s_weight.dtype) if grad_weight is not None else None)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        return (*scaled_saved_grads(ctx, grad_loss), *[None] * 9)


def fused_linear_divergence(student_hidden: torch.Tensor, student_weight: torch.Tensor,
                            teacher_hidden: torch.Tensor, teacher_weight: torch.Tensor, *,
                            divergence: str = "forward_kl", beta: float = 0.5, top_k: int = 0,
                            mask: torch.Tensor | None = None, reduction: str = "sum",
                            chunk_rows: int | None = None, impl: str = "auto") -> torch.Tensor:
    """The summed (or mean) per-token divergence between teacher and student, without the logits.

    Args:
        student_hidden: [N, H] the student's final hidden states at the scored positions (fp32, bf16, fp16).
        student_weight: [V, H] the student's output projection; frozen or trainable.
        teacher_hidden: [N, H] the teacher's hidden states at the same positions (no gradient).
        teacher_weight: [V, H] the teacher's output projection (may be ``student_weight``; no gradient).
        divergence: ``forward_kl``, ``reverse_kl`` or ``jsd`` (see the module docstring).
        beta: the mixing weight of ``jsd``, in (0, 1).
        top_k: score only each token's ``top_k`` most likely teacher tokens (0: the whole vocabulary).
        mask: [N] bool, the rows that count (None: all).
        reduction: ``"sum"`` or ``"mean"`` over counted rows (0 when none).
        chunk_rows: rows per chunk (default: a logits chunk about the input's size).
        impl: ``"auto"`` (Triton on CUDA when installed, else torch), ``"torch"`` or ``"triton"``.
    Returns:
        scalar float32 loss (float64 for float64 inputs); gradients reach ``student_hidden`` and ``student_weight`` only.
    """
    if divergence not in DIVERGENCES:
        raise ValueError(f"divergence={divergence!r}: expected one of {DIVERGENCES}")
    if divergence == "jsd" and not 0.0 < beta < 1.0:
        raise ValueError(f"beta={beta}: the jsd mixing weight must lie strictly between 0 and 1")
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction={reduction!r}: expected 'mean' or 'sum'")
    shapes = [tuple(x.shape) for x in (student_hidden, student_weight, teacher_hidden, teacher_weight)]
    if (any(x.dim() != 2 for x in (student_hidden, student_weight, teacher_hidden, teacher_weight))
            or student_hidden.shape != teacher_hidden.shape or student_weight.shape != teacher_weight.shape
            or student_hidden.shape[1] != student_weight.shape[1]):
        raise ValueError(f"expected hidden states [N, H] and weights [V, H] of equal shapes, got {shapes}")
    if len({x.dtype for x in (student_hidden, student_weight, teacher_hidden, teacher_weight)}) != 1:
        raise ValueError("student and teacher hidden states and weights must share one dtype")
    if mask is not None and (mask.shape != student_hidden.shape[:1] or mask.dtype != torch.bool):
        raise ValueError(f"mask must be [N] bool with N = {student_hidden.shape[0]}")
    if not 0 <= top_k:
        raise ValueError(f"top_k={top_k}: expected >= 0")
    top_k = top_k if top_k < student_weight.shape[0] else 0
    return _ChunkedLinearDivergence.apply(student_hidden, student_weight, teacher_hidden.detach(),
                                          teacher_weight.detach(), mask, divergence, beta, top_k, reduction,
                                          chunk_rows, _pick_impl(impl, student_hidden))
