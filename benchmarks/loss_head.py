"""The loss head, forward + backward: sdft's fused linear cross-entropy vs torch (fp32 logits) vs Liger.

    python benchmarks/loss_head.py                                   # CPU defaults: N=4096, H=1024, V=32000
    python benchmarks/loss_head.py --n 8192 32768 --h 4096 --v 32000 128256 --dtype bfloat16   # GPU

Each case (N tokens, hidden H, vocab V, share of ignored labels, trainable or frozen weight): inputs
are made, then each implementation runs forward + backward once untimed (Triton compiles) and
``--repeat`` times timed. On CPU each implementation runs in a fresh process (peak RSS is per
process); on CUDA all run in this one. Printed per implementation: median ms, peak memory over the
inputs (GPU: max_memory_allocated minus what the inputs hold; CPU: peak RSS minus RSS after making
the inputs), ``extra_gib`` = that peak minus the gradients returned (d_hidden, d_weight: the
transient the loss needs beyond its outputs), the ratios to torch and to Liger, and the relative
error of the loss and gradients against torch's (float32 logits).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from workload import has_liger, in_fresh_process, rss_kib

IMPLS = ("torch", "sdft", "sdft_torch", "liger")  # sdft_torch: sdft's chunked torch path (on CUDA: without Triton)


def _inputs(n, h, v, dtype, device, ignored, trainable):
    g = torch.Generator(device=device).manual_seed(0)  # made on the device: CPU randn of a 128k x 4k weight takes seconds
    hidden = torch.randn(n, h, generator=g, device=device, dtype=dtype).requires_grad_()
    weight = torch.randn(v, h, generator=g, device=device, dtype=dtype)
    weight.mul_(h ** -0.5)
    weight.requires_grad_(trainable)
    labels = torch.randint(0, v, (n,), generator=g, device=device)
    labels[torch.rand(n, generator=g, device=device) < ignored] = -100
    return hidden, weight, labels


def _loss_fn(impl):
    if impl == "torch":
        return lambda x, w, y: torch.nn.functional.cross_entropy((x @ w.t()).float(), y, ignore_index=-100)
    if impl in ("sdft", "sdft_torch"):
        from sdft_kernels import fused_linear_cross_entropy

        mode = "auto" if impl == "sdft" else "torch"
        return lambda x, w, y: fused_linear_cross_entropy(x, w, y, impl=mode)
    from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

    liger = LigerFusedLinearCrossEntropyLoss(ignore_index=-100)
    return lambda x, w, y: liger(w, x, y)


def _run_case(impl, case, queue):
    device = torch.device(case["device"])
    x, w, y = _inputs(case["n"], case["h"], case["v"], getattr(torch, case["dtype"]), device, case["ignored"],
                      case["trainable"])
    fn = _loss_fn(impl)
    fn(x, w, y).backward()  # warm-up: Triton compiles, allocators settle
    x.grad = None
    w.grad = None
    if device.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        base = rss_kib("VmRSS:")
    times = []
    for _ in range(case["repeat"]):
        x.grad = None
        w.grad = None
        start = time.perf_counter()
        loss = fn(x, w, y)
        loss.backward()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    peak = ((torch.cuda.max_memory_allocated() - base) / 2**30 if device.type == "cuda"
            else (rss_kib("VmHWM:") - base) / 2**20)
    outputs = sum(t.numel() * t.element_size() for t in (x.grad, w.grad) if t is not None) / 2**30
    # numpy, not tensors: torch would share tensor memory through file descriptors of this process
    grads = [x.grad.float().cpu().numpy()] + ([w.grad.float().cpu().numpy()] if w.grad is not None else [])
    out = {"ms": 1000 * statistics.median(times), "peak_gib": peak, "extra_gib": peak - outputs, "loss": loss.item(),
           "grads": grads}
    if queue is None:
        return out
    queue.put(out)


def run(impl, case):
    if case["device"] == "cuda":
        out = _run_case(impl, case, None)
        torch.cuda.empty_cache()
        return out
    return in_fresh_process(_run_case, impl, case)


def _rel(a, b) -> float:
    a, b = torch.from_numpy(a), torch.from_numpy(b)
    return float((a - b).norm() / b.norm().clamp(min=1e-30))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, nargs="+", default=[4096])
    p.add_argument("--h", type=int, default=1024)
    p.add_argument("--v", type=int, nargs="+", default=[32000])
    p.add_argument("--ignored", type=float, nargs="+", default=[0.0, 0.5])
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--frozen", action="store_true", help="weight without grad (LoRA): no d_weight")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--impls", default=",".join(IMPLS))
    args = p.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    impls = [i for i in args.impls.split(",") if (i != "liger" or has_liger()) and (i != "sdft_torch" or device == "cuda")]
    for n in args.n:
        for v in args.v:
            for ignored in args.ignored:
                case = dict(n=n, h=args.h, v=v, ignored=ignored, dtype=args.dtype, device=device,
                            trainable=not args.frozen, repeat=args.repeat)
                res = {impl: run(impl, case) for impl in impls}
                ref, liger = res["torch"], res.get("liger")
                for impl, r in res.items():
                    row = {**{k: case[k] for k in ("n", "h", "v", "ignored", "dtype", "device", "trainable")},
                           "impl": impl, "ms": round(r["ms"], 2), "peak_gib": round(r["peak_gib"], 4),
                           "extra_gib": round(r["extra_gib"], 4),
                           "time_vs_torch": round(r["ms"] / ref["ms"], 3),
                           "mem_vs_torch": round(r["peak_gib"] / ref["peak_gib"], 3) if ref["peak_gib"] > 0 else None,
                           "time_vs_liger": round(r["ms"] / liger["ms"], 3) if liger else None,
                           "mem_vs_liger": round(r["peak_gib"] / liger["peak_gib"], 3) if liger else None,
                           "loss_rel_err": abs(r["loss"] - ref["loss"]) / abs(ref["loss"]),
                           "grad_rel_err": max(_rel(a, b) for a, b in zip(r["grads"], ref["grads"]))}
                    print(json.dumps(row), flush=True)



if __name__ == "__main__":
    main()
