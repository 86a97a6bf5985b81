"""Packing: useful (non-pad) tokens/s and peak memory of forward + backward, padded vs packed.

    python benchmarks/packing.py                                        # CPU: small model, rows of 512
    python benchmarks/packing.py --shape llama3.2-1b --seq 2048 --dtype bfloat16 --steps 6   # GPU

Per length distribution (``--dist``, see ``benchmarks/workload.py``: the shipped math set, and a
long-tailed one), each step takes examples until they hold ``--tokens`` real tokens, the same
examples for both arms, and runs forward + backward (sdft's fused loss in both, so only the layout
differs; no optimizer):

- ``padded``: micro-batches padded to their longest example, each holding as many examples as fit
  the packed micro-batch's positions (``--rows x --seq``) with their padding: the same memory budget.
- ``packed``: the step's examples packed into rows of ``--seq`` tokens (best-fit-decreasing, block-
  diagonal attention mask), micro-batches of ``--rows`` rows.

Prints per arm: useful tokens/s, slot efficiency (real tokens / positions computed), peak memory
(GPU: max allocated; CPU: run one arm per process with ``--arms`` for RSS), and packed/padded ratios.
``--write-lengths`` regenerates the math distribution from the shipped data (needs the quickstart
model in the cache).
"""

from __future__ import annotations

import argparse
import json
import random

import torch
from workload import (
    LENGTHS,
    example_lengths,
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


def write_lengths() -> None:
    from sdft.config import load_config
    from sdft.models.builtin import resolve_model_path
    from sdft.models.loading import load_tokenizer
    from sdft.templates.prompts import encode_example

    cfg = load_config("examples/quickstart.yaml")
    tok = load_tokenizer(resolve_model_path(cfg.model.path))
    out = []
    with open(cfg.data.train) as f:
        for line in f:
            row = json.loads(line)
            ids, labels, _ = encode_example(tok, cfg.train.template, row[cfg.data.instruction_field],
                                            row[cfg.data.output_field], layout=cfg.prompt.layout)
            prompt = sum(1 for y in labels if y == -100)
            out.append([prompt, len(ids) - prompt])
    LENGTHS.write_text(json.dumps(out) + "\n")
    print(f"wrote {len(out)} (prompt, response) lengths to {LENGTHS}")


def step_examples(lengths, tokens: int, steps: int, seed: int = 0) -> list[list[int]]:
    """Example indices of each step: consecutive draws until the step holds ``tokens`` real tokens."""
    order = list(range(len(lengths)))
    random.Random(seed).shuffle(order)
    out, at = [], 0
    for _ in range(steps):
        mine, total = [], 0
        while total < tokens:
            i = order[at % len(order)]
            at += 1
            mine.append(i)
            total += sum(lengths[i])
        out.append(mine)
    return out


def micro_batches(arm: str, data, idx: list[int], args) -> list[dict]:
    if arm == "padded":
        return padded_batches(data, idx, args.rows * args.seq)
    rows = packed_batch(data, idx, args.seq)
    r = args.rows
    return [{k: v[j:j + r] for k, v in rows.items()} for j in range(0, rows["input_ids"].shape[0], r)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", default="small")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--dist", nargs="+", default=["math", "longtail"])
    p.add_argument("--seq", type=int, default=512, help="packed row length")
    p.add_argument("--rows", type=int, default=4, help="packed rows per micro-batch")
    p.add_argument("--tokens", type=int, default=4096, help="real tokens per step")
    p.add_argument("--steps", type=int, default=3, help="timed steps (after one warm-up step)")
    p.add_argument("--arms", default="padded,packed")
    p.add_argument("--write-lengths", action="store_true")
    args = p.parse_args()
    if args.write_lengths:
        return write_lengths()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = random_llama(args.shape, device, getattr(torch, args.dtype))
    loss_module = CausalLMLoss(model, fused=True)
    vocab = model.config.vocab_size
    for dist in args.dist:
        lengths = example_lengths(dist, 4000, args.seq)
        data = sft_set(lengths, vocab)
        steps = step_examples(lengths, args.tokens, args.steps + 1)
        res = {}
        for arm in args.arms.split(","):
            batches = [[{k: v.to(device) for k, v in b.items()} for b in micro_batches(arm, data, idx, args)]
                       for idx in steps]
            slots = sum(b["input_ids"].numel() for step in batches[1:] for b in step)
            real = sum(sum(lengths[i]) for idx in steps[1:] for i in idx)

            def step(micro):
                for b in micro:
                    loss_module(**b).backward()
                model.zero_grad(set_to_none=True)

            reset_peak(device)
            seconds = time_steps(step, batches, device)
            res[arm] = {"useful_tokens_per_s": real / seconds, "slot_efficiency": real / slots,
                        "peak_gib": peak_gib(device)}
            print(json.dumps({"dist": dist, "arm": arm, "shape": args.shape, "dtype": args.dtype, "seq": args.seq,
                              "device": str(device), "steps": args.steps, "real_tokens": real,
                              **{k: round(v, 4) for k, v in res[arm].items()}}), flush=True)
        if "padded" in res and "packed" in res:
            print_ratio(f"{dist}: packed / padded", res["packed"], res["padded"], "useful_tokens_per_s", "useful tokens/s")


if __name__ == "__main__":
    main()
