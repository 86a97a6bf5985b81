"""How close ``sdft plan``'s training-step memory is to a real step's, on this machine.

    python benchmarks/plan_accuracy.py                  # every CPU case (a few minutes on 2 cores)
    python benchmarks/plan_accuracy.py --cases lora     # the cases whose name contains "lora"
    python benchmarks/plan_accuracy.py --h100-anchor    # the plan beside RESULTS.md's H100 train step

Each case runs in its own process: a random Llama of the case's shape (or SmolLM2-135M), full or LoRA,
float32 or bfloat16, sdft's loss (``CausalLMLoss``, fused or plain; ``onpolicy``: on-policy training's
``SelfDistillationLoss`` with its seed teacher, rows of prompt + a 128-token answer, the answer scored),
AdamW; one warm-up step (the
optimizer's states exist after it), gradients set to None, then one measured step (forward, backward,
optimizer step) over [rows, seq] tokens, every position labelled.

Measured: on CUDA, the allocator's peak minus what was allocated before the step; on the CPU, the
process's peak resident memory during the step (``VmHWM`` reset through ``/proc/self/clear_refs``)
minus its resident memory before, with glibc returning every block over 64 KiB to the system
(``MALLOC_MMAP_THRESHOLD_``), so freed tensors leave the count.
Predicted: ``sdft plan``'s own figure for the step on one rank (``TrainingMemory.peak`` of plain PyTorch,
ZeRO-0) less what it holds across steps: the largest of forward and backward (the activations counted
on the meta device + the loss head, or backward's own peak traced there), the end of backward (every
gradient, + one recomputed layer under checkpointing) and AdamW's step (the gradients + its
temporaries). Printed: both and their ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

LORA = dict(r=16, lora_alpha=32, lora_dropout=0.1, target_modules="all-linear")
MID = dict(hidden_size=512, intermediate_size=1536, num_hidden_layers=8, num_attention_heads=8,
           num_key_value_heads=4, vocab_size=16384)

CASES = [dict(name=f"mid-{method}-{dtype}-{'fused' if fused else 'plain'}{'-ckpt' if ckpt else ''}",
              model="mid", method=method, dtype=dtype, fused=fused, ckpt=ckpt, rows=4, seq=512)
         for method in ("full", "lora") for dtype in ("float32", "bfloat16")
         for fused, ckpt in ((True, False), (False, False), (True, True))]
CASES += [dict(name=f"mid-{method}-{dtype}-onpolicy-{'fused' if fused else 'plain'}", model="mid", method=method,
               dtype=dtype, fused=fused, ckpt=False, rows=4, seq=512, objective="on_policy", answer=128)
          for method, dtype in (("lora", "float32"), ("full", "bfloat16")) for fused in (True, False)]
# On a GPU also the Llama-3.2-1B shape at the train-step benchmark's 2048-token rows.
GPU_CASES = [dict(name=f"1b-{method}-bfloat16-{'fused' if fused else 'plain'}{'-ckpt' if ckpt else ''}", model="llama3.2-1b",
                  method=method, dtype="bfloat16", fused=fused, ckpt=ckpt, rows=4, seq=2048)
             for method in ("full", "lora") for fused, ckpt in ((True, False), (False, False), (True, True))]
CASES += [dict(name=f"smollm2-{method}-float32-fused", model="smollm2", method=method, dtype="float32", fused=True,
               ckpt=False, rows=2, seq=512) for method in ("full", "lora")]
# QLoRA as sdft builds it (4-bit NF4 base with double quantisation, prepare_model_for_kbit_training, LoRA).
CASES += [dict(name="mid-qlora-bfloat16-fused", model="mid", method="qlora", dtype="bfloat16", fused=True, ckpt=False,
               rows=4, seq=512)]


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _build(case: dict, device: torch.device):
    from sdft.plan.activations import plan_model

    dtype = getattr(torch, case["dtype"])
    if case["model"] == "smollm2":
        from sdft.models.builtin import resolve_model_path
        from sdft.models.loading import load_model

        model = load_model(resolve_model_path("builtin:smollm2-135m-instruct"), case["dtype"], device)
        config = model.config
        if case["method"] == "lora":
            from peft import LoraConfig, get_peft_model

            model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", **LORA))
        return model.train(), config
    from transformers import LlamaConfig
    from workload import SHAPES

    torch.manual_seed(0)
    config = LlamaConfig(max_position_embeddings=4096, **(MID if case["model"] == "mid" else SHAPES[case["model"]]))
    if case["method"] == "qlora":
        return _build_qlora(case, config, device), config
    lora = LORA if case["method"] == "lora" else None
    from sdft.models.loading import cpu_sdpa_broken

    # sdft's own choice: eager where torch's CPU attention fails on bfloat16 (a forced kernel level below
    # AVX-512); eager keeps the [heads, T, T] probabilities the plan does not count, so the ratio drops.
    attention = "eager" if device.type == "cpu" and cpu_sdpa_broken() else "sdpa"
    return plan_model(config, dtype, lora, device=device.type, attention=attention), config


def _build_qlora(case: dict, config, device: torch.device):
    """The model ``train.method=qlora`` trains (``sdft.train.model.build_model``), from a random model
    saved in bfloat16; records in ``case`` the resident memory the built model added."""
    import tempfile

    from transformers import LlamaForCausalLM

    from sdft.config import load_config
    from sdft.train.model import build_model

    folder = Path(tempfile.mkdtemp())
    LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(folder)
    cfg = load_config(HERE.parent / "examples" / "tiny.yaml",
                      [f"model.path={folder}", f"model.dtype={case['dtype']}", "train.method=qlora",
                       f"train.lora_r={LORA['r']}", f"train.lora_alpha={LORA['lora_alpha']}",
                       f"train.lora_dropout={LORA['lora_dropout']}", "train.gradient_checkpointing=false"])
    build_model(cfg, device, None)  # a rehearsal: bitsandbytes' and peft's code resident before the baseline
    before = _status_kib("VmRSS")
    model = build_model(cfg, device, None)
    case["weights_measured"] = (_status_kib("VmRSS") - before) * 1024
    return model


def training_memory(case: dict, config, cuda: bool):
    """The plan's ``TrainingMemory`` of ``case`` on one rank (sdft's plain PyTorch step)."""
    from sdft.config import load_config
    from sdft.plan.plan import TrainingMemory
    from sdft.plan.shape import model_shape

    overrides = [f"model.dtype={case['dtype']}", f"train.method={case['method']}",
                 f"train.micro_batch_size={case['rows']}", f"train.cutoff_len={case['seq']}",
                 f"train.fused_loss={'on' if case['fused'] else 'off'}",
                 f"train.gradient_checkpointing={str(case['ckpt']).lower()}",
                 f"train.lora_r={LORA['r']}", f"train.lora_alpha={LORA['lora_alpha']}",
                 f"train.lora_dropout={LORA['lora_dropout']}", f"train.lora_targets=[{LORA['target_modules']}]"]
    if case.get("objective") == "on_policy":
        overrides += ["train.objective=on_policy", "train.on_policy.samples_per_prompt=1",
                      f"train.on_policy.sampling.max_new_tokens={case['answer']}"]
    cfg = load_config(HERE.parent / "examples" / "tiny.yaml", overrides)
    return TrainingMemory(cfg, config, model_shape(config), 1, 1, cuda=cuda)


def measure(case: dict) -> dict:
    """One case, in this process: (measured, predicted) bytes of one training step."""
    from sdft.plan.memory import ZeroSetting
    from sdft.train.objective import CausalLMLoss

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, config = _build(case, device)
    if case["ckpt"]:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if case["method"] == "lora":
            model.enable_input_require_grads()
    on_policy = case.get("objective") == "on_policy"
    rows, seq = case["rows"], case["seq"]
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, config.vocab_size, (rows, seq), generator=g).to(device)
    if on_policy:  # the student's and the teacher's prompt + the same answer, its last tokens scored
        from sdft.config.schema import RunConfig
        from sdft.train.on_policy import SelfDistillationLoss
        from sdft.train.teacher import Teacher

        run = RunConfig()
        teacher = Teacher(model, run.train.on_policy, lora=case["method"] == "lora")
        loss_fn = SelfDistillationLoss(model, teacher, run, case["fused"])
        scored = torch.zeros(rows, seq, dtype=torch.bool, device=device)
        scored[:, seq - 1 - case["answer"]:seq - 1] = True
        t_ids = torch.randint(3, config.vocab_size, (rows, seq), generator=g).to(device)
        mask = torch.ones_like(ids)
        batch = (ids, mask, scored, t_ids, mask, scored)
    else:
        loss_fn = CausalLMLoss(model, case["fused"])
        batch = (ids, ids.clone())
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5)

    def step():
        loss_fn(*batch).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        measured = torch.cuda.max_memory_allocated() - before
    else:
        before = _status_kib("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")
        step()
        measured = (_status_kib("VmHWM") - before) * 1024
    memory = training_memory(case, config, cuda=device.type == "cuda")
    plain = ZeroSetting(0)
    acts = memory.activations(case["ckpt"])
    head = memory.head()
    grads = sum(p.numel() * p.element_size() for p in params)
    # The plan's step peak above what stays between steps (weights and moments, measured in "before";
    # on-policy's teacher copy too): its largest phase, forward and backward, the end of backward, AdamW.
    predicted = memory.peak(plain, case["ckpt"]) - memory.phases(plain).held - memory.teacher()
    extra = {}
    if case["method"] == "qlora":  # the weights too: the 4-bit base, its float32 rest, the adapters
        from sdft.plan.memory import frozen_bytes
        from sdft.plan.shape import model_shape

        weights = frozen_bytes(model_shape(config), "qlora", 2) + grads  # adapters: float32, like their grads
        extra = {"weights_predicted_mib": weights / 2**20, "weights_measured_mib": case["weights_measured"] / 2**20}
    return {**extra, "case": case["name"], "activations_mib": acts / 2**20, "head_mib": head / 2**20,
            "backward_mib": memory.backward_peak(case["ckpt"]) / 2**20, "grads_mib": grads / 2**20,
            "predicted_mib": predicted / 2**20, "measured_mib": measured / 2**20, "ratio": predicted / measured}


GENERATION_SLOTS = (8, 32, 128)
PROMPT, NEW = 256, 64


def measure_generation(slots: int) -> dict:
    """Distillation's engine with ``slots`` rows on the ``mid`` model in bfloat16, ``slots`` prompts of
    ``PROMPT`` tokens each making ``NEW`` tokens (greedy, no end token): the peak the run adds beside the
    plan's KV cache and prefill (the weights, loaded before, are the plan's other generation figure)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from sdft.config.schema import SamplingConfig
    from sdft.models.engine import ContinuousEngine
    from sdft.plan.activations import prefill_bytes
    from sdft.plan.memory import kv_cache_bytes
    from sdft.plan.shape import model_shape

    class Tok:  # token ids only; no end token is ever drawn (it is not in the vocabulary's range used)
        pad_token_id, eos_token_id = 0, -1

    torch.manual_seed(0)
    config = LlamaConfig(max_position_embeddings=4096, attn_implementation="sdpa", **MID)
    model = LlamaForCausalLM(config).to(torch.bfloat16).eval()
    model.generation_config.eos_token_id = -1
    g = torch.Generator().manual_seed(0)
    prompts = {f"p{i}": torch.randint(3, MID["vocab_size"], (PROMPT,), generator=g).tolist() for i in range(slots)}
    engine = ContinuousEngine(model, Tok(), slots, SamplingConfig(max_new_tokens=NEW, temperature=0.0), seed=0)
    rehearsal = ContinuousEngine(model, Tok(), 1, SamplingConfig(max_new_tokens=2, temperature=0.0), seed=0)
    for _ in rehearsal.run_ids({"r": prompts["p0"][:8]}, desc=""):  # code paths and thread pools warm
        pass
    before = _status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")
    for _ in engine.run_ids(prompts, desc=""):
        pass
    measured = (_status_kib("VmHWM") - before) * 1024
    shape = model_shape(config)
    kv, prefill = kv_cache_bytes(shape, slots, PROMPT + NEW, 2), prefill_bytes(config, torch.bfloat16, slots, PROMPT)
    return {"case": f"generate-{slots}-slots", "kv_mib": kv / 2**20, "prefill_mib": prefill / 2**20,
            "measured_mib": measured / 2**20, "ratio": (kv + prefill) / measured}


# benchmarks/RESULTS.md, "Train step" (H100, run 2): peak allocated GiB of the dense 8 x 2048 workload.
H100_TRAIN_STEP = {"fused": 34.7, "plain": 57.2}


def h100_anchor() -> None:
    """The plan's figures for RESULTS.md's H100 train step (Llama-3.2-1B shape, bf16 weights, torch AdamW
    with bf16 moments, gradients set to None between steps, so the peak holds weights and moments only)."""
    from transformers import LlamaConfig
    from workload import SHAPES

    from sdft.plan.memory import ZeroSetting

    config = LlamaConfig(max_position_embeddings=8192, **SHAPES["llama3.2-1b"])
    for arm, measured in H100_TRAIN_STEP.items():
        case = dict(dtype="bfloat16", method="full", rows=8, seq=2048, fused=arm == "fused", ckpt=False)
        memory = training_memory(case, config, cuda=True)
        held, acts, head = memory.phases(ZeroSetting(0)).held, memory.activations(False), memory.head()
        backward = memory.backward_peak(False)
        predicted = memory.peak(ZeroSetting(0), False) / 2**30
        print(f"H100 train step, {arm} loss: held {held / 2**30:.2f} + the larger of activations {acts / 2**30:.2f} "
              f"+ head {head / 2**30:.2f} and backward's peak {backward / 2**30:.2f} = {predicted:.2f} GiB predicted, "
              f"{measured} measured: {predicted / measured:.3f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", default="", help="run the cases whose name contains this")
    p.add_argument("--one", help=argparse.SUPPRESS)  # a case as JSON: run it here
    p.add_argument("--generation", action="store_true",
                   help=f"only distillation's engine at {', '.join(map(str, GENERATION_SLOTS))} slots")
    p.add_argument("--one-generation", type=int, help=argparse.SUPPRESS)
    p.add_argument("--h100-anchor", action="store_true", help="only the plan for RESULTS.md's H100 train step")
    args = p.parse_args()
    if args.h100_anchor:
        h100_anchor()
        return
    if args.one:
        print(json.dumps(measure(json.loads(args.one))), flush=True)
        return
    if args.one_generation:
        print(json.dumps(measure_generation(args.one_generation)), flush=True)
        return
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    if args.generation:
        generation(env)
        return
    print("| case | activations MiB | head MiB | backward peak MiB | grads MiB | predicted MiB | measured MiB | "
          "predicted / measured |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    ratios, weights = [], []
    for case in CASES + (GPU_CASES if torch.cuda.is_available() else []):
        if args.cases not in case["name"]:
            continue
        out = subprocess.run([sys.executable, __file__, "--one", json.dumps(case)], env=env, capture_output=True,
                             text=True)
        if out.returncode:
            print(f"| {case['name']} | failed: {out.stderr.strip().splitlines()[-1]} |")
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        ratios.append(r["ratio"])
        print(f"| {r['case']} | {r['activations_mib']:.1f} | {r['head_mib']:.1f} | {r['backward_mib']:.1f} | "
              f"{r['grads_mib']:.1f} | "
              f"{r['predicted_mib']:.1f} | {r['measured_mib']:.1f} | {r['ratio']:.3f} |", flush=True)
        if "weights_measured_mib" in r:
            weights.append(r)
    if ratios:
        print(f"ratios: min {min(ratios):.3f}, max {max(ratios):.3f}; within +-15%: "
              f"{sum(0.85 <= r <= 1.15 for r in ratios)} of {len(ratios)}")
    for r in weights:
        print(f"{r['case']}: weights (4-bit base, float32 rest, adapters) {r['weights_predicted_mib']:.1f} MiB "
              f"predicted, {r['weights_measured_mib']:.1f} measured: {r['weights_predicted_mib'] / r['weights_measured_mib']:.3f}")
    h100_anchor()


def generation(env: dict) -> None:
    """Each slot count in its own process: the plan's KV cache beside the peak the engine's run adds."""
    print("| case | plan KV cache MiB | plan prefill MiB | measured MiB | plan / measured |")
    print("|---|---:|---:|---:|---:|")
    for slots in GENERATION_SLOTS:
        out = subprocess.run([sys.executable, __file__, "--one-generation", str(slots)], env=env, capture_output=True,
                             text=True)
        if out.returncode:
            print(f"| generate-{slots}-slots | failed: {out.stderr.strip().splitlines()[-1]} |")
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"| {r['case']} | {r['kv_mib']:.1f} | {r['prefill_mib']:.1f} | {r['measured_mib']:.1f} | "
              f"{r['ratio']:.3f} |", flush=True)


if __name__ == "__main__":
    main()
