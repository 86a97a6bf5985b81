"""Generation: sdft's continuous engine vs transformers' ``generate`` on the same prompts, in one run.

    python benchmarks/generation.py                                   # CPU: the quickstart's distillation
    python benchmarks/generation.py --limit 64                        # the same, fewer prompts
    python benchmarks/generation.py --shape llama3.2-1b --batch 64 128 256 --prompt 256 --new 256   # GPU

Workloads:
- ``quickstart`` (default): SmolLM2-135M-Instruct (``builtin:``), the distillation prompts of
  ``examples/quickstart.yaml`` (chat template, instruction and reference answer), its sampling
  settings (T 0.95, top-p 0.7, top-k 50), ``distill.batch_size`` rows, 128 new tokens.
- ``--shape``: a random Llama of that shape (``benchmarks/workload.py``), greedy, ``--prompts`` prompts of
  ``--prompt`` random tokens; every row makes ``--new`` tokens (a random model does not end by itself).

Arms: ``hf`` = ``generate`` on static batches as sdft's ``generation.engine=hf`` runs it (``dynamic``
cache; ``static`` = ``cache_implementation="static"`` too on CUDA); ``hf-cb`` = transformers' own
continuous batching (``model.generate_batch``, paged cache, one seed for the whole run: no per-example
seeds); ``continuous`` = sdft's engine with as many slots. Prints one JSON line per arm (new tokens,
seconds, new tokens/s) and the ratios.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from workload import SHAPES, random_llama

from sdft.config import load_config
from sdft.config.schema import SamplingConfig
from sdft.models.engine import ContinuousEngine
from sdft.models.generation import generate_kwargs, left_pad, plan_batches

EOS = 2


def quickstart_workload(limit: int):
    """SmolLM2, the quickstart's distillation prompts and sampling, its batch size."""
    from sdft.data.examples import load_examples
    from sdft.models.loading import load_model, load_tokenizer
    from sdft.templates.prompts import DISTILL_TEMPLATE_NAMES, encode_prompt

    cfg = load_config("examples/quickstart.yaml")
    tok = load_tokenizer(cfg.model.path)
    model = load_model(cfg.model.path, cfg.model.dtype, torch.device("cpu"))
    examples, _ = load_examples(cfg.data.train, cfg.data, limit=limit or cfg.data.limit)
    template = DISTILL_TEMPLATE_NAMES[cfg.distill.template]
    prompts = {ex.id: encode_prompt(tok, template, ex.instruction, reference=ex.response, system=ex.system)
               for ex in examples}
    return model, tok, prompts, cfg.distill.sampling, cfg.distill.batch_size


class _Tok:
    """Token ids as text, for random models."""

    pad_token_id, eos_token_id = 0, EOS

    def decode(self, ids, skip_special_tokens=True):
        return " ".join(map(str, ids))


def hf_arm(model, tok, prompts, s: SamplingConfig, batch: int, cache: str) -> dict:
    """``generate`` on length-sorted static batches, seeded per batch (sdft's hf engine)."""
    device, new, start = next(model.parameters()).device, 0, time.perf_counter()
    eos = model.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [eos])
    extra = {"cache_implementation": "static"} if cache == "static" else {}
    for index, ids in enumerate(plan_batches(prompts, batch)):
        torch.manual_seed(index)
        x, mask = left_pad([prompts[i] for i in ids], tok.pad_token_id, device)
        with torch.no_grad():
            out = model.generate(input_ids=x, attention_mask=mask, pad_token_id=tok.pad_token_id,
                                 eos_token_id=list(eos), **generate_kwargs(s), **extra)
        for row in out[:, x.shape[1]:].tolist():  # new tokens up to and with the first end token
            new += next((k + 1 for k, t in enumerate(row) if t in eos), len(row))
    _sync(device)
    return {"new_tokens": new, "seconds": time.perf_counter() - start}


def hf_cb_arm(model, tok, prompts, s: SamplingConfig, batch: int) -> dict:
    """transformers' ``generate_batch`` (continuous batching with a paged cache)."""
    from transformers import GenerationConfig

    kw = generate_kwargs(s)
    config = GenerationConfig(**{k: v for k, v in kw.items() if v is not None}, eos_token_id=EOS if tok.eos_token_id is None
                              else model.generation_config.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    start = time.perf_counter()
    out = model.generate_batch(list(prompts.values()), generation_config=config, progress_bar=False)
    _sync(next(model.parameters()).device)
    return {"new_tokens": sum(len(o.generated_tokens) for o in out.values()), "seconds": time.perf_counter() - start}


def engine_arm(model, tok, prompts, s: SamplingConfig, batch: int) -> dict:
    engine = ContinuousEngine(model, tok, batch, s, seed=0)
    start = time.perf_counter()
    for _ in engine.run(prompts, desc="continuous"):
        pass
    _sync(next(model.parameters()).device)
    return {"new_tokens": engine.new_tokens, "seconds": time.perf_counter() - start}


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--limit", type=int, default=0, help="quickstart: examples (default: the config's data.limit)")
    p.add_argument("--shape", choices=sorted(SHAPES), help="a random Llama instead of the quickstart workload")
    p.add_argument("--batch", type=int, nargs="+", default=None)
    p.add_argument("--prompts", type=int, default=512, help="--shape: number of prompts")
    p.add_argument("--prompt", type=int, default=256, help="--shape: prompt tokens")
    p.add_argument("--new", type=int, default=256, help="--shape: new tokens per row")
    p.add_argument("--arms", default="hf,continuous", help="any of hf, hf-cb, continuous")
    p.add_argument("--dtype", default="bfloat16")
    args = p.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.shape:
        model = random_llama(args.shape, device, getattr(torch, args.dtype)).eval()
        model.config.use_cache = True
        model.generation_config.eos_token_id = EOS
        tok = _Tok()
        g = torch.Generator().manual_seed(0)
        prompts = {f"p{i:05d}": torch.randint(3, model.config.vocab_size, (args.prompt,), generator=g).tolist()
                   for i in range(args.prompts)}
        sampling, batches = SamplingConfig(max_new_tokens=args.new, do_sample=False), args.batch or [128]
        workload = f"{args.shape} {args.dtype}, {args.prompts} prompts of {args.prompt}, {args.new} new, greedy"
    else:
        torch.set_num_threads(torch.get_num_threads())
        model, tok, prompts, sampling, batch = quickstart_workload(args.limit)
        batches = args.batch or [batch]
        workload = f"quickstart distillation: SmolLM2-135M, {len(prompts)} prompts, {sampling}"
    print(json.dumps({"workload": workload, "device": str(device), "threads": torch.get_num_threads()}), flush=True)
    for batch in batches:
        res = {}
        for arm in args.arms.split(","):
            if arm == "hf":
                for cache in (["dynamic", "static"] if device.type == "cuda" else ["dynamic"]):
                    res[f"hf-{cache}"] = hf_arm(model, tok, prompts, sampling, batch, cache)
            elif arm == "hf-cb":
                res[arm] = hf_cb_arm(model, tok, prompts, sampling, batch)
            else:
                res[arm] = engine_arm(model, tok, prompts, sampling, batch)
        for name, r in res.items():
            r["new_tokens_per_s"] = r["new_tokens"] / r["seconds"]
            print(json.dumps({"batch": batch, "arm": name, **{k: round(v, 2) for k, v in r.items()}}), flush=True)
        if "continuous" in res:
            for name in [n for n in res if n.startswith("hf")]:
                print(f"batch {batch}: continuous / {name}: new tokens/s "
                      f"{res['continuous']['new_tokens_per_s'] / res[name]['new_tokens_per_s']:.2f}x", flush=True)


if __name__ == "__main__":
    main()
