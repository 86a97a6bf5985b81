"""The on-policy loss head, forward + backward: sdft's fused linear divergence vs torch vs Liger's fused JSD.

    python benchmarks/divergence_head.py                     # CPU defaults: N=4096, H=1024, V=32000, fp32
    python benchmarks/divergence_head.py --n 8192 --h 4096 --v 128256 --dtype bfloat16      # GPU

Inputs: student hidden states [N, H] (trainable), the student's head [V, H] (trainable unless
``--frozen``), the teacher's hidden states and head (no gradient). Implementations:

- ``torch``: both logits [N, V] in float32, log-softmax, the divergence per token, autograd (what a
  plain implementation does: ``sdft_kernels.token_divergence`` on full logits).
- ``sdft``: ``sdft_kernels.fused_linear_divergence`` (Triton on CUDA, the chunked torch path on CPU);
  ``sdft_torch``: its torch path on CUDA.
- ``liger``: Liger-Kernel's ``LigerFusedLinearJSD`` (CUDA only; its JSD with beta, so the row compares
  ``--divergence jsd``).

Each implementation runs once untimed, then ``--repeat`` times timed, in a fresh process on CPU (peak
RSS is per process). Printed: median ms, peak memory over the inputs (CPU: peak RSS minus RSS after
making the inputs; GPU: max allocated minus what the inputs hold), ``extra_gib`` = that peak minus the
gradients returned, the ratios to torch, and the loss's relative error against torch's.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from workload import has_liger, in_fresh_process, rss_kib

IMPLS = ("torch", "sdft", "sdft_torch", "liger")


def _inputs(case, device):
    g = torch.Generator(device=device).manual_seed(0)
    dtype = getattr(torch, case["dtype"])
    n, h, v = case["n"], case["h"], case["v"]
    xs = torch.randn(n, h, generator=g, device=device, dtype=dtype).requires_grad_()
    ws = torch.randn(v, h, generator=g, device=device, dtype=dtype).mul_(h ** -0.5).requires_grad_(case["trainable"])
    xt = torch.randn(n, h, generator=g, device=device, dtype=dtype)
    wt = torch.randn(v, h, generator=g, device=device, dtype=dtype).mul_(h ** -0.5)
    return xs, ws, xt, wt


def _loss_fn(impl, case):
    from sdft_kernels import fused_linear_divergence, token_divergence

    kind, beta = case["divergence"], case["beta"]
    if impl == "torch":
        return lambda xs, ws, xt, wt: token_divergence((xs @ ws.t()).float(), (xt @ wt.t()).float(),
                                                       divergence=kind, beta=beta).sum()
    if impl in ("sdft", "sdft_torch"):
        mode = "auto" if impl == "sdft" else "torch"
        return lambda xs, ws, xt, wt: fused_linear_divergence(xs, ws, xt, wt, divergence=kind, beta=beta, impl=mode)
    from liger_kernel.transformers import LigerFusedLinearJSD

    liger = LigerFusedLinearJSD(jsd_beta=beta)
    return lambda xs, ws, xt, wt: liger(xs, ws, xt, wt) * xs.shape[0]  # Liger averages over tokens


def _run_case(impl, case, queue):
    device = torch.device(case["device"])
    xs, ws, xt, wt = _inputs(case, device)
    fn = _loss_fn(impl, case)
    fn(xs, ws, xt, wt).backward()
    xs.grad = ws.grad = None
    if device.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        base = rss_kib("VmRSS:")
    times = []
    for _ in range(case["repeat"]):
        xs.grad = ws.grad = None
        start = time.perf_counter()
        loss = fn(xs, ws, xt, wt)
        loss.backward()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    peak = ((torch.cuda.max_memory_allocated() - base) / 2**30 if device.type == "cuda"
            else (rss_kib("VmHWM:") - base) / 2**20)
    outputs = sum(t.numel() * t.element_size() for t in (xs.grad, ws.grad) if t is not None) / 2**30
    out = {"ms": 1000 * statistics.median(times), "peak_gib": peak, "extra_gib": peak - outputs, "loss": loss.item()}
    if queue is None:
        return out
    queue.put(out)


def run(impl, case):
    if case["device"] == "cuda":
        out = _run_case(impl, case, None)
        torch.cuda.empty_cache()
        return out
    return in_fresh_process(_run_case, impl, case)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=4096)
    p.add_argument("--h", type=int, default=1024)
    p.add_argument("--v", type=int, default=32000)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--divergence", nargs="+", default=["forward_kl", "jsd"])
    p.add_argument("--beta", type=float, default=0.5)
    p.add_argument("--frozen", action="store_true", help="student head without grad (LoRA): no d_weight")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--impls", default=",".join(IMPLS))
    args = p.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    for kind in args.divergence:
        case = dict(n=args.n, h=args.h, v=args.v, dtype=args.dtype, device=device, trainable=not args.frozen,
                    divergence=kind, beta=args.beta, repeat=args.repeat)
        impls = [i for i in args.impls.split(",") if (i != "liger" or (has_liger() and kind == "jsd"))
                 and (i != "sdft_torch" or device == "cuda")]
        res = {impl: run(impl, case) for impl in impls}
        ref = res["torch"]
        for impl, r in res.items():
            row = {**{k: case[k] for k in ("n", "h", "v", "dtype", "device", "trainable", "divergence")}, "impl": impl,
                   "ms": round(r["ms"], 2), "peak_gib": round(r["peak_gib"], 4), "extra_gib": round(r["extra_gib"], 4),
                   "time_vs_torch": round(r["ms"] / ref["ms"], 3),
                   "mem_vs_torch": round(r["peak_gib"] / ref["peak_gib"], 3) if ref["peak_gib"] > 0 else None,
                   "loss_rel_err": abs(r["loss"] - ref["loss"]) / abs(ref["loss"])}
            print(json.dumps(row), flush=True)



if __name__ == "__main__":
    main()
