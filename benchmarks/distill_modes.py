"""Distillation wall time on 2 ranks: replica vs ZeRO-3 (whole-model gather per batch) vs ZeRO-3
(per-layer gather at every token, ``synced_gpus``), against 1 process, on the same data.

    python benchmarks/distill_modes.py [--model builtin:tiny-llama] [--limit 32] [--max-new-tokens 24]

Runs ``sdft distill`` through torchrun for each mode into a temporary folder and prints the distill
stage's seconds (from its COMPLETE.json) and the ratio to the 1-process run. CPU ranks use gloo.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(mode: str, out: Path, args) -> float:
    common = ["distill", str(REPO / "examples" / "tiny.yaml"), f"output_dir={out}", f"model.path={args.model}",
              f"data.limit={args.limit}", f"distill.max_new_tokens={args.max_new_tokens}", "distill.do_sample=false",
              "distill.batch_size=8"]
    if mode == "1 process":
        cmd = [sys.executable, "-m", "sdft", *common]
    else:
        name, _, how = mode.partition(" ")
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_port()}",
               "-m", "sdft", *common, f"distill.mode={name}", f"distill.zero3_gather={how != 'per-layer'}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "HF_HUB_OFFLINE": "1"}
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    if res.returncode != 0:
        sys.exit(f"{mode} failed:\n{res.stderr[-3000:]}")
    return json.loads((out / "distill" / "COMPLETE.json").read_text())["seconds"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="builtin:tiny-llama")
    p.add_argument("--limit", type=int, default=32)
    p.add_argument("--max-new-tokens", type=int, default=24)
    args = p.parse_args()
    modes = ["1 process", "replica", "zero3 gather", "zero3 per-layer"]
    with tempfile.TemporaryDirectory() as tmp:
        secs = {m: run(m, Path(tmp) / m.replace(" ", "_"), args) for m in modes}
    print(f"model {args.model}, {args.limit} examples, {args.max_new_tokens} new tokens, greedy, batch 8")
    print(f"{'mode':<18}{'seconds':>9}{'vs 1 process':>14}")
    for m in modes:
        print(f"{m:<18}{secs[m]:>9.1f}{secs[m] / secs['1 process']:>13.2f}x")


if __name__ == "__main__":
    main()
