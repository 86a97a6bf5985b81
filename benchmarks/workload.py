"""Shared pieces of the training benchmarks: model shapes, SFT-like batches, timing and memory.

Batches are random token ids laid out like real SFT data: each example is a prompt (label -100)
followed by a response (labelled), with (prompt, response) lengths drawn from a distribution:

- ``math``: the shipped ``examples/data/math_train.jsonl`` tokenized with the quickstart's chat
  template and SmolLM2's tokenizer (``benchmarks/data/math_train_lengths.json``; regenerate with
  ``python benchmarks/packing.py --write-lengths``): 92-110 tokens, 59% of them prompt.
- ``longtail``: lognormal lengths (median 300, clipped to [16, seq]), prompt share uniform in
  [0.2, 0.8]: the mixed lengths of general instruction data, where padding wastes most.
"""

from __future__ import annotations

import json
import random
import resource
import time
from pathlib import Path

import torch

from sdft.data.tokenize import TokenizedSet, collate
from sdft.train.packing import collate_packed, plan_packed_step

HERE = Path(__file__).resolve().parent
LENGTHS = HERE / "data" / "math_train_lengths.json"

SHAPES = {
    "tiny": dict(hidden_size=64, intermediate_size=176, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=1024),
    "small": dict(hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=8,
                  num_key_value_heads=4, vocab_size=32000),
    "llama3.2-1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                        num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=True),
    "llama3-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                      num_key_value_heads=8, vocab_size=128256),
}


def random_llama(shape: str, device: torch.device, dtype: torch.dtype):
    """A seeded random Llama of ``shape`` (sdpa attention), in train mode on ``device``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(max_position_embeddings=8192, rope_theta=500000.0, **SHAPES[shape])
    cfg._attn_implementation = "sdpa"
    with torch.device(device):
        model = LlamaForCausalLM(cfg).to(dtype)
    model.config.use_cache = False
    return model.train()


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def example_lengths(dist: str, n: int, seq: int, seed: int = 0) -> list[tuple[int, int]]:
    """``n`` (prompt, response) token counts from distribution ``dist``, each at most ``seq`` in all."""
    rng = random.Random(seed)
    if dist == "math":
        pool = json.loads(LENGTHS.read_text())
        return [tuple(rng.choice(pool)) for _ in range(n)]
    out = []
    for _ in range(n):
        total = min(seq, max(16, int(rng.lognormvariate(5.7, 0.8))))
        prompt = max(1, int(total * rng.uniform(0.2, 0.8)))
        out.append((prompt, total - prompt))
    return out


def sft_set(lengths: list[tuple[int, int]], vocab: int, seed: int = 0) -> TokenizedSet:
    """Random token ids with the prompt positions unlabelled."""
    g = torch.Generator().manual_seed(seed)
    data = TokenizedSet([], [], [], [])
    for i, (p, r) in enumerate(lengths):
        ids = torch.randint(3, vocab, (p + r,), generator=g).tolist()
        data.input_ids.append(ids)
        data.labels.append([-100] * p + ids[p:])
        data.ids.append(str(i))
    return data


def padded_batches(data: TokenizedSet, idx: list[int], slots: int) -> list[dict[str, torch.Tensor]]:
    """``idx`` in order, in micro-batches right-padded to their longest example (dynamic padding, the
    HF collator's default), each as many examples as fit ``slots`` positions (examples x longest)
    with the padding: the memory budget of a packed micro-batch of ``slots`` positions."""
    out, mine, longest = [], [], 0
    for i in idx:
        n = len(data.input_ids[i])
        if mine and (len(mine) + 1) * max(longest, n) > slots:
            out.append(collate(data, mine, pad_id=0))
            mine, longest = [], 0
        mine.append(i)
        longest = max(longest, n)
    if mine:
        out.append(collate(data, mine, pad_id=0))
    return out


def packed_batch(data: TokenizedSet, idx: list[int], seq: int) -> dict[str, torch.Tensor]:
    """``idx`` packed into rows of at most ``seq`` tokens (one micro-batch)."""
    plan = plan_packed_step([len(x) for x in data.input_ids], idx, 1, seq)
    return collate_packed(data, plan[0], pad_id=0)


def rss_kib(field: str) -> int:
    """A field of /proc/self/status in KiB: ``VmRSS:`` (now) or ``VmHWM:`` (peak)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field))


def has_liger() -> bool:
    """Liger-Kernel is installed and can run (it needs CUDA)."""
    try:
        import liger_kernel  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available()


def in_fresh_process(target, *args):
    """``target(*args, queue)`` in a spawned process (peak RSS is per process); returns what it puts
    on the queue."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=target, args=(*args, queue))
    proc.start()
    out = queue.get()
    proc.join()
    return out


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float:
    """GPU: peak allocated since ``reset_peak``; CPU: the process's peak RSS (cumulative)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def time_steps(step, batches, device: torch.device, warmup: int = 1) -> float:
    """Seconds for ``step(b)`` over ``batches`` after ``warmup`` untimed calls on the first batches."""
    for b in batches[:warmup]:
        step(b)
    sync(device)
    start = time.perf_counter()
    for b in batches[warmup:]:
        step(b)
    sync(device)
    return time.perf_counter() - start


def matmul_ceiling_tflops(device: torch.device, dtype: torch.dtype, n: int = 8192) -> float:
    """Measured TFLOP/s of an n^3 matmul: the denominator of our MFU figures (the card as it runs)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    reps = 10
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * n ** 3 * reps / (time.perf_counter() - start) / 1e12


def print_ratio(label: str, ours: dict, base: dict, speed: str, speed_name: str) -> None:
    """One line: ``ours`` over ``base`` in the ``speed`` figure (printed as ``speed_name``) and in peak memory."""
    print(f"{label}: {speed_name} {ours[speed] / base[speed]:.3f}x, "
          f"peak memory {ours['peak_gib'] / base['peak_gib']:.3f}x", flush=True)
