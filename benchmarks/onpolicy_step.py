"""One on-policy self-distillation optimizer step, sdft vs TRL's ``trl.experimental.sdft`` at equal settings.

    python benchmarks/onpolicy_step.py                         # CPU: SmolLM2-135M, 8 prompts, 64 new tokens
    python benchmarks/onpolicy_step.py --model <folder> --device cuda --prompts 32 --new-tokens 256   # GPU

Both arms, each in a fresh process (peak RSS is per process): the same model (LoRA r=16 on every
linear layer, float32), the same prompts (the shipped math problems, chat template) and teacher
prompt (the question, the demonstration as an example response, the request to answer in its own
words), one sample per prompt at temperature 1 (no top-k / top-p) up to ``--new-tokens``, the frozen
seed as teacher (adapters disabled), per-token forward KL over the whole vocabulary, no tokens
skipped, no importance-sampling correction (the samples are on-policy in both), AdamW at a constant
lr, ``--prompts`` prompts per optimizer step in one micro-batch. TRL samples with HF ``generate``;
sdft with its continuous engine and scores with its fused divergence.

Printed per arm: median seconds per optimizer step over ``--steps`` steps after one warm-up step,
the answers' mean length (the work a step does depends on it: both sample at temperature 1 from
the same model, but from different random streams), seconds per 1k answer tokens, peak RSS (GiB,
CPU; max allocated on CUDA), and sdft's ratios to TRL. TRL is a benchmark dependency only
(``pip install trl``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

from workload import in_fresh_process, peak_gib

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
REPO = Path(__file__).resolve().parent.parent
TEACHER = ("{prompt}\n\nThis is an example for a response to the question:\n{privileged_context}\n\n"
           "Now answer with a response of your own, including the thinking process.")


def _rows(n: int) -> list[dict]:
    lines = (REPO / "examples" / "data" / "math_train.jsonl").read_text().splitlines()[:n]
    return [json.loads(x) for x in lines]



def run_sdft(args, queue) -> None:
    import torch

    from sdft.config.schema import RunConfig
    from sdft.config.validate import validate
    from sdft.layout import RunLayout
    from sdft.models.loading import load_tokenizer
    from sdft.train.recipe import TrainRecipe

    cfg = RunConfig()
    cfg.model.path, cfg.device = args.model, args.device
    t = cfg.train
    t.objective, t.template, t.method, t.lora_r, t.lora_alpha, t.lora_dropout = "on_policy", "chat", "lora", 16, 32, 0.0
    t.lora_targets, t.lr, t.lr_scheduler, t.micro_batch_size, t.grad_accum = ["all-linear"], 1e-4, "constant", args.prompts, 1
    t.max_steps, t.cutoff_len, t.save_every = args.steps + 1, 2048, 0
    o = t.on_policy
    o.divergence, o.top_k, o.skip_first = "forward_kl", 0, 0
    o.sampling.max_new_tokens, o.sampling.temperature, o.sampling.top_p, o.sampling.top_k = args.new_tokens, 1.0, 1.0, 0
    o.teacher_template = TEACHER.replace("{prompt}", "{instruction}").replace("{privileged_context}", "{demonstration}")
    validate(cfg)
    rows = [{"id": r["id"], "instruction": r["question"], "response": r["answer"]}
            for r in _rows(args.prompts * (args.steps + 1))]
    device = torch.device(args.device)
    tok = load_tokenizer(args.model)
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        recipe = TrainRecipe(cfg, RunLayout(Path(tmp)), tok, device)
        recipe.setup(rows)
        times, tokens = [], []
        for step in range(args.steps + 1):
            start = time.perf_counter()
            row = recipe.train_step(step)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
            tokens.append(row["tokens"] + args.prompts * o.skip_first)
    queue.put({"times": times[1:], "answer_tokens": tokens[1:], "peak_gib": peak_gib(torch.device(args.device))})


def run_trl(args, queue) -> None:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl.experimental.sdft import SDFTConfig, SDFTTrainer

    from sdft.models.builtin import resolve_model_path
    from sdft.models.loading import load_tokenizer

    path = resolve_model_path(args.model)
    rows = _rows(args.prompts * (args.steps + 1))
    data = Dataset.from_list([{"prompt": [{"role": "user", "content": r["question"]}],
                               "privileged_context": r["answer"]} for r in rows])
    times, tokens = [], []

    class Timer(TrainerCallback):
        def on_step_begin(self, *a, **k):
            self.start = time.perf_counter()

        def on_step_end(self, *a, **k):
            if args.device == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - self.start)

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    config = SDFTConfig(
        output_dir=os.path.join(os.environ.get("TMPDIR", "/tmp"), "trl-sdft-bench"), max_steps=args.steps + 1,
        per_device_train_batch_size=args.prompts, gradient_accumulation_steps=1, num_generations=1,
        learning_rate=1e-4, lr_scheduler_type="constant", warmup_steps=0, max_completion_length=args.new_tokens,
        temperature=1.0, top_p=1.0, top_k=0, distillation_mode="full_logits", distillation_alpha=0.0,
        distillation_is_clip=None, num_loss_tokens_to_skip=0, teacher_model_kind="base",
        teacher_prompt_template=TEACHER, max_prompt_length=2048, report_to="none", save_strategy="no",
        logging_steps=1, use_cpu=args.device == "cpu", bf16=False, seed=42, shuffle_dataset=False,
        dataloader_num_workers=0)
    trainer = SDFTTrainer(model=model, args=config, train_dataset=data, processing_class=load_tokenizer(args.model),
                          peft_config=LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear",
                                                 task_type="CAUSAL_LM"), callbacks=[Timer()])
    original = trainer._generate_transformers

    def counted(prompt_ids):  # the answer lengths of each step's samples
        out = original(prompt_ids)
        tokens.append(sum(len(c) for c in out[1]))
        return out

    trainer._generate_transformers = counted
    trainer.train()
    queue.put({"times": times[1:], "answer_tokens": tokens[1:len(times)], "peak_gib": peak_gib(torch.device(args.device))})



def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="builtin:smollm2-135m-instruct")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--prompts", type=int, default=8, help="prompts per optimizer step (one sample each)")
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--steps", type=int, default=4, help="timed steps (after one warm-up step)")
    args = p.parse_args()
    print(f"on-policy step: {args.model}, {args.device}, {args.prompts} prompts x 1 sample, <= {args.new_tokens} "
          f"new tokens, forward KL over the vocabulary, LoRA r=16 all-linear, {args.steps} timed steps", flush=True)
    results = {}
    for name, fn in (("trl", run_trl), ("sdft", run_sdft)):
        r = in_fresh_process(fn, args)
        med = statistics.median(r["times"])
        mean_len = statistics.mean(r["answer_tokens"]) / args.prompts
        per_k = 1000 * sum(r["times"]) / max(1, sum(r["answer_tokens"]))
        results[name] = {"s_per_step": med, "mean_answer_tokens": mean_len, "s_per_1k_answer_tokens": per_k,
                         "peak_gib": r["peak_gib"], "steps_s": r["times"]}
        print(f"  {name:5s} {med:7.2f} s/step (median)  answers {mean_len:5.1f} tokens  {per_k:6.2f} s per 1k answer "
              f"tokens  peak {r['peak_gib']:.2f} GiB  steps {[round(x, 2) for x in r['times']]}", flush=True)
    s, t = results["sdft"], results["trl"]
    print(f"  sdft vs trl: {t['s_per_step'] / s['s_per_step']:.2f}x steps/s, "
          f"{t['s_per_1k_answer_tokens'] / s['s_per_1k_answer_tokens']:.2f}x answer tokens/s, "
          f"peak memory {s['peak_gib'] / t['peak_gib']:.2f}x")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
