"""QLoRA training step: sdft's path vs a plain transformers + peft + bitsandbytes loop, side by side.

    python benchmarks/qlora_step.py --shape llama3-8b --seq 2048 --steps 6      # on a GPU
    python benchmarks/qlora_step.py --shape tiny --seq 128 --steps 3            # a CPU check of the script

A random model of the named shape is written once (bf16 safetensors) to --cache, then each arm loads
it quantized on load (nf4, double quant, bf16 compute), adds LoRA r=16 on all linear layers, turns on
gradient checkpointing, and trains micro-batch 1 on random tokens of length --seq. Prints tokens/s
(after one warm-up step), peak memory (GPU: torch.cuda.max_memory_allocated; CPU: the process's peak
RSS) and the ratio of sdft to the plain loop. The arms share nothing but the saved model folder.

- ``hf``: AutoModelForCausalLM.from_pretrained(quantization_config=...), prepare_model_for_kbit_training,
  get_peft_model, torch AdamW, model(labels=...).loss.
- ``sdft``: ``sdft.train.model.build_model`` and ``build_optimizer`` (what ``train.method=qlora``
  runs) and sdft's training forward (``sdft.train.objective``: the fused loss where the model allows it).
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import torch
from workload import SHAPES


def random_model(shape: str, cache: Path) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    path = cache / f"random-{shape}"
    if (path / "config.json").exists():
        return path
    torch.manual_seed(0)
    config = LlamaConfig(max_position_embeddings=8192, rope_theta=500000.0, **SHAPES[shape])
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(path, safe_serialization=True)
    del model
    return path


def peak_memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # kB -> GiB


def hf_arm(path: Path, device: torch.device):
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                           bnb_4bit_compute_dtype=torch.bfloat16)
    model = AutoModelForCausalLM.from_pretrained(path, quantization_config=q, dtype=torch.bfloat16,
                                                 device_map={"": device}).train()
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True,
                                            gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear",
                                             task_type="CAUSAL_LM"))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step(ids):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()

    return step


def sdft_arm(path: Path, device: torch.device):
    from sdft.config.schema import RunConfig
    from sdft.train.model import build_model, build_optimizer
    from sdft.train.objective import build_loss_module

    cfg = RunConfig()
    cfg.model.path, cfg.model.dtype = str(path), "bfloat16"
    t = cfg.train
    t.method, t.lora_targets, t.lora_r, t.lora_alpha, t.lora_dropout = "qlora", ["all-linear"], 16, 32, 0.0
    t.gradient_checkpointing, t.lr = True, 1e-4
    model = build_model(cfg, device, None)
    opt = build_optimizer(t, [p for p in model.parameters() if p.requires_grad])
    loss_module = build_loss_module(model, t.fused_loss)

    def step(ids):
        loss = loss_module(input_ids=ids, labels=ids) / (ids.numel() - ids.shape[0])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()

    return step


def measure(make_step, path: Path, device: torch.device, seq: int, steps: int, vocab: int) -> dict:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    step = make_step(path, device)
    g = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, vocab, (1, seq), generator=g).to(device) for _ in range(steps + 1)]
    step(batches[0])  # warm-up: kernels, allocator
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    losses = [step(b) for b in batches[1:]]
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return {"tokens_per_s": steps * seq / seconds, "peak_gib": peak_memory_gib(device), "loss": losses[-1]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", choices=list(SHAPES), default="tiny")
    p.add_argument("--seq", type=int, default=2048)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--cache", type=Path, default=Path("/tmp/sdft-bench"))
    p.add_argument("--arms", default="hf,sdft")
    args = p.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    path = random_model(args.shape, args.cache)
    arms = {"hf": hf_arm, "sdft": sdft_arm}
    results = {}
    for name in args.arms.split(","):
        # Each arm in turn in this process; on CPU the RSS peak is cumulative, so run one arm per
        # process (--arms hf, then --arms sdft) for CPU memory figures.
        results[name] = measure(arms[name], path, device, args.seq, args.steps, SHAPES[args.shape]["vocab_size"])
        print(json.dumps({"arm": name, "shape": args.shape, "seq": args.seq, "device": str(device),
                          **{k: round(v, 4) for k, v in results[name].items()}}), flush=True)
    if "hf" in results and "sdft" in results:
        print(f"sdft / hf: tokens/s {results['sdft']['tokens_per_s'] / results['hf']['tokens_per_s']:.3f}x, "
              f"peak memory {results['sdft']['peak_gib'] / results['hf']['peak_gib']:.3f}x")


if __name__ == "__main__":
    main()
