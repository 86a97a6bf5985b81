"""Generation: sdft's continuous engine vs transformers' ``generate`` on the same prompts, in one run.

    python benchmarks/generation.py                                   # CPU: the quickstart's distillation
    python benchmarks/generation.py --limit 64                        # the same, fewer prompts
    python benchmarks/generation.py --repeat 3                        # three rounds, arms alternating, median
    python benchmarks/generation.py --shape llama3.2-1b --batch 64 128 256 --prompt 256 --new 256   # GPU
    python benchmarks/generation.py --shape llama3.2-1b --batch 128 --lengths heavy      # GPU, long-tailed

Workloads:
- ``quickstart`` (default): SmolLM2-135M-Instruct (``builtin:``), the distillation prompts of
  ``examples/quickstart.yaml`` (chat template, instruction and reference answer), its sampling
  settings (T 0.95, top-p 0.7, top-k 50), ``distill.batch_size`` rows, 128 new tokens.
- ``--shape``: a random Llama of that shape (``benchmarks/workload.py``), greedy, ``--prompts`` prompts of
  ``--prompt`` random tokens. A random model does not end by itself: with ``--lengths fixed`` every row
  makes ``--new`` tokens; ``math`` and ``heavy`` end rows at lengths drawn from the quickstart's
  rewrites (``benchmarks/data/math_rewrite_lengths.json``, 8-128 tokens, 18 of 160 at the 128 cap;
  ``--write-lengths`` measures them again) or from a lognormal with median ``--new``/8 (sigma 1,
  capped at ``--new``): the long tail where static batches wait for their longest row
  (``LengthSchedule``: the same rule in every arm).

Arms: ``hf`` = ``generate`` on static batches as sdft's ``generation.engine=hf`` runs it (``dynamic``
cache; ``static`` = ``cache_implementation="static"`` too on CUDA); ``hf-cb`` = transformers' own
continuous batching (``model.generate_batch``, paged cache, one seed for the whole run: no per-example
seeds); ``continuous`` = sdft's engine with as many slots; ``graphs`` = the same replaying its decode
step as CUDA graphs (``generation.cuda_graphs``; CUDA only). Prints one JSON line per arm (new tokens,
seconds, new tokens/s; with ``--timeline``, where the engine's time went: prefill forwards, and decode
steps by how many slots were busy) and the ratios. With ``--repeat N`` the arms run N rounds, in reverse
order every other round (this machine's speed drifts over minutes), and the ratio line gives every
round's ratio and their median.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import time
from pathlib import Path

import torch
from workload import SHAPES, random_llama

from sdft.config import load_config
from sdft.config.schema import SamplingConfig
from sdft.models.engine import ContinuousEngine
from sdft.models.generation import generate_kwargs, left_pad, plan_batches
from sdft.models.sampler import uniform

EOS = 2
REWRITE_LENGTHS = Path(__file__).resolve().parent / "data" / "math_rewrite_lengths.json"


def answer_lengths(dist: str, new: int, n: int = 100_000) -> list[int]:
    """Answer lengths (new tokens, the end token included) to end rows at: the quickstart's rewrites, or
    ``n`` draws of a lognormal with median ``new``/8 and sigma 1; all capped at ``new``."""
    if dist == "math":
        return [min(k, new) for k in json.loads(REWRITE_LENGTHS.read_text())]
    rng = random.Random(0)
    return [min(new, max(1, round(rng.lognormvariate(math.log(new / 8), 1.0))))
            for _ in range(n)]


class LengthSchedule:
    """Ends the rows of a random model at lengths that follow ``lengths``, the same way in every arm.

    A forward hook on the model: the token drawn from the logits at position ``p`` is the row's new
    token ``k = p - (prompt - 1)``; it is forced to the end token when a uniform hashed from (the row's
    token at ``p``, ``p``) falls below the hazard ``P(L = k + 1) / P(L > k)`` of the length
    distribution. The rule reads nothing but the row's own tokens and positions, so ``generate`` and
    the engine end a row at the same step (greedy), and over many rows the lengths follow ``lengths``.
    """

    def __init__(self, lengths: list[int], prompt: int, new: int, eos: int):
        counts = torch.bincount(torch.tensor(lengths), minlength=new + 1)[1:new + 1].double()
        at_least = counts.flip(0).cumsum(0).flip(0)                            # [new]: P(L >= k + 1) * n
        self.hazard = torch.where(at_least > 0, counts / at_least.clamp(min=1), torch.ones_like(counts))
        self.prompt, self.new, self.eos = prompt, new, eos

    def __call__(self, module, args, kwargs, output):
        ids, pos = kwargs["input_ids"][:, -1], kwargs["position_ids"][:, -1]
        k = pos - (self.prompt - 1)
        u = uniform(ids.cpu(), pos.cpu(), torch.zeros(len(ids), 1, dtype=torch.long))[:, 0]
        stop = ((k >= 0) & (u < self.hazard[k.clamp(0, self.new - 1).cpu()])).to(output.logits.device)
        last = output.logits[:, -1]
        last[stop] = torch.finfo(last.dtype).min
        last[stop, self.eos] = 0
        return output


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
    prompts = {ex.id: encode_prompt(tok, template, ex.instruction, reference=ex.response, system=ex.system,
                                    layout=cfg.prompt.layout) for ex in examples}
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


def engine_arm(model, tok, prompts, s: SamplingConfig, batch: int, timeline: bool = False,
               decode: str = "dynamic") -> dict:
    engine = ContinuousEngine(model, tok, batch, s, seed=0, decode=decode)
    steps = _time_steps(engine) if timeline else None
    start = time.perf_counter()
    for _ in engine.run(prompts, desc="graphs" if decode == "graphs" else "continuous"):
        pass
    _sync(next(model.parameters()).device)
    out = {"new_tokens": engine.new_tokens, "seconds": time.perf_counter() - start}
    if steps is not None:
        out["timeline"] = _timeline(steps, batch)
    return out


def _time_steps(engine: ContinuousEngine) -> list[tuple[str, int, float]]:
    """Record (kind, rows, seconds) of every prefill and decode forward of ``engine``."""
    steps, device = [], next(engine.model.parameters()).device

    def timed(kind, forward):
        def run(cache, rows, *args):
            start = time.perf_counter()
            out = forward(cache, rows, *args)
            _sync(device)
            steps.append((kind, len(args[0]) if kind == "prefill" else rows.n, time.perf_counter() - start))
            return out
        return run

    engine._prefill = timed("prefill", engine._prefill)
    engine._decode = timed("decode", engine._decode)
    return steps


def _timeline(steps: list[tuple[str, int, float]], slots: int) -> dict:
    """Prefill and decode seconds, decode split by how full the slots were (quarters of ``slots``)."""
    out = {"prefill": {"forwards": 0, "seconds": 0.0}}
    for kind, rows, sec in steps:
        if kind == "decode":
            q = min(3, (rows - 1) * 4 // slots)
            kind = f"decode rows {q * slots // 4 + 1}-{(q + 1) * slots // 4}"
        part = out.setdefault(kind, {"forwards": 0, "seconds": 0.0, "tokens": 0})
        part["forwards"] += 1
        part["seconds"] = round(part["seconds"] + sec, 3)
        if "tokens" in part:
            part["tokens"] += rows
    for part in out.values():
        if part.get("tokens"):
            part["ms_per_token"] = round(1000 * part["seconds"] / part["tokens"], 2)
    return dict(sorted(out.items()))


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def write_rewrite_lengths() -> None:
    """The engine's answer lengths on the quickstart workload, for ``--lengths math``."""
    model, tok, prompts, sampling, batch = quickstart_workload(0)
    lengths = []
    for done in ContinuousEngine(model, tok, batch, sampling, seed=0).run_ids(prompts, desc="rewrites"):
        lengths += [len(ids) for ids in done.values()]
    REWRITE_LENGTHS.write_text(json.dumps(sorted(lengths)) + "\n")
    print(f"wrote {len(lengths)} lengths to {REWRITE_LENGTHS}")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--limit", type=int, default=0, help="quickstart: examples (default: the config's data.limit)")
    p.add_argument("--shape", choices=sorted(SHAPES), help="a random Llama instead of the quickstart workload")
    p.add_argument("--batch", type=int, nargs="+", default=None)
    p.add_argument("--prompts", type=int, default=512, help="--shape: number of prompts")
    p.add_argument("--prompt", type=int, default=256, help="--shape: prompt tokens")
    p.add_argument("--new", type=int, default=256, help="--shape: new tokens per row")
    p.add_argument("--lengths", choices=["fixed", "math", "heavy"], default="fixed",
                   help="--shape: where rows end (see the module docstring)")
    p.add_argument("--arms", default=None, help="any of hf, hf-cb, continuous, graphs (default: hf,continuous "
                                                 "and on CUDA graphs)")
    p.add_argument("--repeat", type=int, default=1, help="rounds of every arm (alternating order)")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--timeline", action="store_true", help="the engine's prefill and decode time, by busy rows")
    p.add_argument("--write-lengths", action="store_true", help=f"measure {REWRITE_LENGTHS.name} and exit")
    args = p.parse_args()
    args.arms = args.arms or "hf,continuous" + (",graphs" if torch.cuda.is_available() else "")
    if "graphs" in args.arms.split(",") and not torch.cuda.is_available():
        p.error("--arms graphs needs a CUDA device")
    if args.write_lengths:
        return write_rewrite_lengths()
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
        if args.lengths != "fixed":
            lengths = answer_lengths(args.lengths, args.new)
            model.register_forward_hook(LengthSchedule(lengths, args.prompt, args.new, EOS), with_kwargs=True)
            workload += f", {args.lengths} answer lengths (mean {statistics.mean(lengths):.1f})"
    else:
        torch.set_num_threads(torch.get_num_threads())
        model, tok, prompts, sampling, batch = quickstart_workload(args.limit)
        batches = args.batch or [batch]
        workload = f"quickstart distillation: SmolLM2-135M, {len(prompts)} prompts, {sampling}"
    print(json.dumps({"workload": workload, "device": str(device), "threads": torch.get_num_threads()}), flush=True)
    for batch in batches:
        rounds = []
        for r in range(args.repeat):
            arms = args.arms.split(",")
            res = {}
            for arm in (arms if r % 2 == 0 else arms[::-1]):
                if arm == "hf":
                    for cache in (["dynamic", "static"] if device.type == "cuda" else ["dynamic"]):
                        res[f"hf-{cache}"] = hf_arm(model, tok, prompts, sampling, batch, cache)
                elif arm == "hf-cb":
                    res[arm] = hf_cb_arm(model, tok, prompts, sampling, batch)
                else:
                    res[arm] = engine_arm(model, tok, prompts, sampling, batch, args.timeline,
                                          "graphs" if arm == "graphs" else "dynamic")
            for name, x in res.items():
                x["new_tokens_per_s"] = x["new_tokens"] / x["seconds"]
                print(json.dumps({"batch": batch, "round": r + 1, "arm": name,
                                  **{k: round(v, 2) if isinstance(v, float) else v for k, v in x.items()}}), flush=True)
            rounds.append(res)
        for ours in [n for n in ("continuous", "graphs") if n in rounds[0]]:
            for name in [n for n in rounds[0] if n.startswith("hf")]:
                ratios = [x[ours]["new_tokens_per_s"] / x[name]["new_tokens_per_s"] for x in rounds]
                each = f" (median of {len(ratios)} rounds: {', '.join(f'{q:.2f}x' for q in ratios)})" if len(ratios) > 1 else ""
                print(f"batch {batch}: {ours} / {name}: new tokens/s {statistics.median(ratios):.2f}x{each}", flush=True)

if __name__ == "__main__":
    main()
