"""``sdft plan``'s per-rank memory beside a real step's: plain PyTorch (ZeRO-0, one rank) and DeepSpeed
ZeRO 1-3 on 1 and 2 ranks (CPU, gloo).

    python benchmarks/plan_zero.py                  # every case (about 3 minutes on 2 cores)
    python benchmarks/plan_zero.py --cases zero2    # the cases whose name contains "zero2"

Where there is a GPU (and DeepSpeed), the same on CUDA with NCCL, measured by the allocator (allocated
now, and its peak), for as many ranks as there are GPUs. Each case runs under torchrun
(``--nproc_per_node`` 1 or 2): the mid-size random Llama of
``plan_accuracy.py`` (8 layers, 42M parameters), full fine-tuning in bfloat16 (DeepSpeed's bf16: 16-bit
weights and gradients, 32-bit master weights and Adam moments), sdft's fused loss over 2 rows of 512
tokens, the shipped ``ds_configs/zero<k>.json`` filled by sdft (``fill_ds_config``), sdft's engine
wrapper. Per rank, with glibc returning every block over 64 KiB to the system (``MALLOC_MMAP_THRESHOLD_``),
after a rehearsal of the whole case on a tiny model (so the code and the libraries' own buffers are
resident before the baseline):

- **held**: resident memory after two steps (gradients released) minus before the model was built,
  beside what the plan holds across steps (``StepMemory.held``: weights, master weights, moments);
- **peak**: the peak resident memory during a third step (``VmHWM`` reset through
  ``/proc/self/clear_refs``) minus the same baseline, beside the plan's step peak (held + the largest
  phase: forward and backward, the end of backward, the optimizer step; no allocator headroom).

``zero0-1rank`` is sdft's plain PyTorch training (``train.deepspeed`` empty: ``LocalBackend``, torch's
AdamW on the bfloat16 weights; ``-adamw8bit``: bitsandbytes' 8-bit AdamW, ``train.optimizer=adamw_8bit``);
the others run DeepSpeed's engine.

The CPU has no CUDA context or caching allocator, so the plan's headroom is left out on both sides.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

CASES = [dict(name="zero0-1rank", stage=0, world=1), dict(name="zero0-1rank-adamw8bit", stage=0, world=1,
                                                          optimizer="adamw_8bit")]
CASES += [dict(name=f"zero{stage}-{world}rank", stage=stage, world=world) for world in (1, 2) for stage in (1, 2, 3)]
ROWS, SEQ = 2, 512


def _run_config(model_dir: Path, stage: int, optimizer: str = "adamw"):
    from sdft.config import load_config

    return load_config(REPO / "examples" / "tiny.yaml",
                       [f"model.path={model_dir}", "model.dtype=bfloat16", "train.method=full",
                        f"train.micro_batch_size={ROWS}", "train.grad_accum=1", f"train.cutoff_len={SEQ}",
                        f"train.deepspeed={f'zero{stage}' if stage else ''}", "train.fused_loss=on",
                        f"train.optimizer={optimizer}", "train.lr=1e-5", "train.weight_decay=0"])


def predicted(model_dir: Path, stage: int, world: int, optimizer: str) -> tuple[int, int]:
    """The plan's (held across steps, step peak) bytes per rank."""
    import torch

    from sdft.plan.memory import ZeroSetting
    from sdft.plan.plan import TrainingMemory, load_model_config
    from sdft.plan.shape import model_shape

    cfg = _run_config(model_dir, stage, optimizer)
    config = load_model_config(cfg)
    memory = TrainingMemory(cfg, config, model_shape(config), world, 1, cuda=torch.cuda.is_available())
    setting = ZeroSetting(stage)
    return memory.phases(setting).held, memory.peak(setting, checkpointing=False)


def worker(model_dir: Path, stage: int, optimizer: str) -> None:
    """One rank of a case: a rehearsal on a tiny model (so DeepSpeed's and torch's code paths, thread
    pools and import-time state are resident before the baseline), then the mid model: build, two steps,
    one measured step; rank 0 prints the JSON row."""
    import gc

    import deepspeed
    import torch
    import torch.distributed as dist
    from plan_accuracy import MID, _status_kib
    from transformers import LlamaConfig, LlamaForCausalLM

    from sdft.distributed import runtime
    from sdft.distributed.deepspeed import deepspeed_config
    from sdft.models.loading import cpu_sdpa_broken
    from sdft.train.backends import build_backend
    from sdft.train.model import build_optimizer
    from sdft.train.objective import CausalLMLoss

    cuda = torch.cuda.is_available()
    device = torch.device("cuda", runtime.local_rank()) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    runtime.skip_deepspeed_shm_build()  # as sdft does
    if stage:
        deepspeed.init_distributed(dist_backend="nccl" if cuda else "gloo")
    rank, world = (dist.get_rank(), dist.get_world_size()) if stage else (0, 1)
    cfg = _run_config(model_dir, stage, optimizer)
    attention = "eager" if not cuda and cpu_sdpa_broken() else "sdpa"

    def used() -> int:  # bytes this rank holds now: the CUDA allocator's, else resident memory
        return torch.cuda.memory_allocated() if cuda else _status_kib("VmRSS") * 1024

    def run(dims: dict) -> tuple[int, int]:
        before = used()
        torch.manual_seed(0)
        config = LlamaConfig(max_position_embeddings=4096, attn_implementation=attention, **dims)
        model = LlamaForCausalLM(config).to(device, torch.bfloat16).train()
        opt = build_optimizer(cfg.train, model.parameters())  # torch's AdamW unless the case names another
        ids = torch.randint(3, config.vocab_size, (ROWS, SEQ), generator=torch.Generator().manual_seed(rank)).to(device)
        ds = deepspeed_config(f"zero{stage}", "train.deepspeed", cfg, world, config.hidden_size) if stage else None
        # sdft's own backends: plain PyTorch (clipping, AdamW, gradients set to None) or the DeepSpeed engine.
        backend = build_backend(CausalLMLoss(model, fused=True), opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1),
                                ds, 1.0, False, device)

        def step():
            backend.backward(backend.forward(dict(input_ids=ids, labels=ids.clone())), ids.numel())
            backend.step()

        step()
        step()
        states = used() - before
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        else:
            Path("/proc/self/clear_refs").write_text("5")
        step()
        peak = (torch.cuda.max_memory_allocated() if cuda else _status_kib("VmHWM") * 1024) - before
        if stage:
            backend.engine.destroy()
        return states, peak

    run(dict(MID, num_hidden_layers=1, hidden_size=64, intermediate_size=128, vocab_size=512))
    gc.collect()
    states, peak = run(MID)
    rows = [(states, peak)]
    if stage:
        rows = [None] * world
        dist.all_gather_object(rows, (states, peak))
    if rank == 0:
        print("ROW " + json.dumps({"states": [r[0] for r in rows], "peak": [r[1] for r in rows]}), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", default="", help="run the cases whose name contains this")
    p.add_argument("--worker", nargs=3, metavar=("MODEL_DIR", "STAGE", "OPTIMIZER"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(Path(args.worker[0]), int(args.worker[1]), args.worker[2])
        return
    import torch
    from plan_accuracy import MID
    from transformers import LlamaConfig

    gpu = torch.cuda.is_available()

    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": "1"}
    if not gpu:
        env["DS_ACCELERATOR"] = "cpu"
    print("| case | plan held MiB | measured held MiB (per rank) | ratio | plan peak MiB | measured peak MiB | ratio |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    ratios = []
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp)
        LlamaConfig(max_position_embeddings=4096, **MID).save_pretrained(model_dir)
        for case in CASES:
            if args.cases not in case["name"] or case["world"] > max(1, torch.cuda.device_count()) and gpu:
                continue
            cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={case['world']}",
                   "--standalone", __file__, "--worker", str(model_dir),
                   str(case["stage"]), case.get("optimizer", "adamw")]
            for _ in range(2):  # once more if it failed before its row (a rare gloo abort, cpu-stack.md)
                out = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=REPO)
                # A row printed is a finished measurement, whatever happened at the processes' exit.
                rows = [x for x in out.stdout.splitlines() if x.startswith("ROW ")]
                if rows:
                    break
            if not rows:
                print(f"| {case['name']} | failed: {(out.stderr.strip().splitlines() or ['?'])[-1]} |", flush=True)
                continue
            got = json.loads(rows[-1][4:])
            states, peak = predicted(model_dir, case["stage"], case["world"], case.get("optimizer", "adamw"))
            ms, mp = max(got["states"]), max(got["peak"])
            ratios += [states / ms, peak / mp]
            per_rank = " / ".join(f"{x / 2**20:.0f}" for x in got["states"])
            print(f"| {case['name']} | {states / 2**20:.0f} | {per_rank} | {states / ms:.3f} | {peak / 2**20:.0f} | "
                  f"{' / '.join(f'{x / 2**20:.0f}' for x in got['peak'])} | {peak / mp:.3f} |", flush=True)
    if ratios:
        print(f"ratios (plan / the larger rank's measurement): min {min(ratios):.3f}, max {max(ratios):.3f}; "
              f"within +-15%: {sum(0.85 <= r <= 1.15 for r in ratios)} of {len(ratios)}")


if __name__ == "__main__":
    main()
