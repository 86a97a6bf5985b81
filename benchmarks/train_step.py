"""A full fine-tuning step of a Llama-3.2-1B-shaped random model: HF's default vs sdft's (fused loss + packing).

    python benchmarks/train_step.py --shape llama3.2-1b --dtype bfloat16      # GPU (the issue's shape)
    python benchmarks/train_step.py --shape tiny --seq 256 --rows 2 --steps 2  # a CPU check of the script

bf16 (or fp32) weights, torch AdamW (fused on CUDA), sdpa attention, no gradient checkpointing
unless ``--ckpt``. Two workloads, each with the same examples for both arms:

- ``dense``: ``--rows`` x ``--seq`` random tokens, every position labelled, no padding (the layout of
  ``benchmarks/RESULTS.md``'s anchor table). Arms: ``hf`` = ``model(input_ids, labels=...).loss``
  (float32 logits, transformers' loss); ``sdft`` = ``CausalLMLoss`` with the fused loss.
- ``sft``: examples with prompt and response lengths from ``--dist`` (``benchmarks/workload.py``),
  about ``--rows x --seq`` real tokens per step. ``hf``: dynamically padded micro-batches of at most
  ``--rows x --seq`` positions (padding included), HF loss; ``sdft``: packed rows of ``--seq`` (micro-batches of ``--rows`` rows),
  fused loss (unlabelled prompt rows skipped before the head's matmul).

Prints tokens/s (real tokens), MFU = 6 N tokens/s over the card's measured bf16 matmul rate (an
8192^3 product, measured here; the datasheet figure is printed too), and peak memory
(GPU: max allocated; CPU: peak RSS, cumulative over arms).
"""

from __future__ import annotations

import argparse
import json

import torch
from workload import (
    example_lengths,
    matmul_ceiling_tflops,
    n_params,
    packed_batch,
    padded_batches,
    peak_gib,
    print_ratio,
    random_llama,
    reset_peak,
    sft_set,
    time_steps,
)

from sdft.train.objective import CausalLMLoss

DATASHEET_TFLOPS = {"H100": 989.0, "H200": 989.0}  # bf16 dense, SXM


def dense_batches(rows: int, seq: int, vocab: int, steps: int) -> list[list[dict]]:
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(steps):
        ids = torch.randint(3, vocab, (rows, seq), generator=g)
        out.append([{"input_ids": ids, "labels": ids.clone()}])
    return out


def sft_batches(arm: str, args, vocab: int, steps: int) -> tuple[list[list[dict]], int]:
    lengths = example_lengths(args.dist, 20000, args.seq)
    data = sft_set(lengths, vocab)
    out, at, real = [], 0, 0
    for s in range(steps):
        idx, total = [], 0
        while total < args.rows * args.seq:
            if total + sum(lengths[at]) > args.rows * args.seq and idx:
                break
            idx.append(at)
            total += sum(lengths[at])
            at += 1
        real += total if s else 0  # the first step is the warm-up
        if arm == "hf":
            out.append(padded_batches(data, idx, args.rows * args.seq))
        else:
            rows = packed_batch(data, idx, args.seq)
            out.append([{k: v[j:j + args.rows] for k, v in rows.items()}
                        for j in range(0, rows["input_ids"].shape[0], args.rows)])
    return out, real


def make_step(arm: str, model, opt):
    loss_module = CausalLMLoss(model, fused=True)

    def step(micro):
        for b in micro:
            if arm == "hf":
                loss = model(input_ids=b["input_ids"], attention_mask=b.get("attention_mask"), labels=b["labels"]).loss
            else:
                n = (b["labels"][:, 1:] != -100).sum()
                loss = loss_module(**b) / n
            loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", default="llama3.2-1b")
    p.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
    p.add_argument("--seq", type=int, default=2048)
    p.add_argument("--rows", type=int, default=8)
    p.add_argument("--dist", default="longtail", choices=["math", "longtail"])
    p.add_argument("--workloads", default="dense,sft")
    p.add_argument("--arms", default="hf,sdft")
    p.add_argument("--steps", type=int, default=5, help="timed steps (after one warm-up)")
    p.add_argument("--ckpt", action="store_true", help="gradient checkpointing")
    args = p.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, args.dtype)
    model = random_llama(args.shape, device, dtype)
    if args.ckpt:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    n = n_params(model)
    card = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    ceiling = matmul_ceiling_tflops(device, dtype, 8192 if device.type == "cuda" else 1024)
    sheet = next((v for k, v in DATASHEET_TFLOPS.items() if k in card), None)
    print(json.dumps({"card": card, "params": n, "matmul_tflops_measured": round(ceiling, 1),
                      "datasheet_tflops": sheet, "torch": torch.__version__}), flush=True)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=device.type == "cuda")
    for workload in args.workloads.split(","):
        res = {}
        for arm in args.arms.split(","):
            if workload == "dense":
                batches = dense_batches(args.rows, args.seq, model.config.vocab_size, args.steps + 1)
                real = args.steps * args.rows * args.seq
            else:
                batches, real = sft_batches(arm, args, model.config.vocab_size, args.steps + 1)
            batches = [[{k: v.to(device) for k, v in b.items()} for b in micro] for micro in batches]
            reset_peak(device)
            seconds = time_steps(make_step(arm, model, opt), batches, device)
            tps = real / seconds
            res[arm] = {"tokens_per_s": tps, "step_ms": 1000 * seconds / args.steps,
                        "mfu_6n": 6 * n * tps / (ceiling * 1e12),
                        "mfu_6n_datasheet": 6 * n * tps / (sheet * 1e12) if sheet else None,
                        "peak_gib": peak_gib(device)}
            print(json.dumps({"workload": workload, "arm": arm, "shape": args.shape, "dtype": args.dtype,
                              "seq": args.seq, "rows": args.rows, "ckpt": args.ckpt,
                              "dist": args.dist if workload == "sft" else None,
                              **{k: (round(v, 4) if v is not None else None) for k, v in res[arm].items()}}),
                  flush=True)
            del batches
        if "hf" in res and "sdft" in res:
            print_ratio(f"{workload}: sdft / hf", res["sdft"], res["hf"], "tokens_per_s", "tokens/s")


if __name__ == "__main__":
    main()
