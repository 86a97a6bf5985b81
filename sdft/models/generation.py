"""Generation for every caller (distillation, every generating evaluator, the seed's retention
answers): ``generate_batches`` runs ``generation.engine``.

- ``continuous`` (``engine``): continuous batching with per-example seeds; ``cuda_graphs`` replays its
  decode step as CUDA graphs on a GPU (``decode_graphs``).
- ``hf``, the reference: prompts sorted by length (longest first, so an out-of-memory shows up in the
  first batch, and padding is small), left-padded, and generated with HF ``generate`` in static
  batches. The batch plan depends only on the full prompt list, and each batch is seeded by
  ``seed + batch index``, so a resumed run samples its remaining batches exactly as an unbroken run.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import asdict

import torch
from tqdm.auto import tqdm

from sdft.config.schema import SamplingConfig
from sdft.distributed import runtime
from sdft.models.engine import ContinuousEngine, engine_blocker
from sdft.utils.switches import resolve_switch

log = logging.getLogger(__name__)


def generation_record(sampling: SamplingConfig, batch_size: int, seed: int | None, engine: str) -> dict:
    """The settings a set of generated texts depends on (recorded beside them, compared on resume)."""
    return {**asdict(sampling), "seed": seed, "batch_size": batch_size, "engine": engine}


def choose_engine(mode: str, model, prompts: dict[str, list[int]], sampling: SamplingConfig) -> str:
    """``generation.engine`` resolved for ``model`` and these prompts: ``continuous`` or ``hf``."""
    capacity = max((len(p) for p in prompts.values()), default=0) + sampling.max_new_tokens
    blocker = engine_blocker(model, capacity) if mode != "hf" else None
    return "continuous" if resolve_switch("generation.engine", mode, blocker, on="continuous", off="hf") else "hf"


def continuous_engine(model, tok, batch_size: int, sampling: SamplingConfig, seed: int,
                      cuda_graphs: bool = False, stop=None) -> ContinuousEngine:
    """The engine for ``model``, its decode step as CUDA graphs when asked for and the model is on a GPU."""
    on_gpu = next(model.parameters()).device.type == "cuda"
    if cuda_graphs and not on_gpu:
        log.info("generation.cuda_graphs: the model is not on a CUDA device; decoding without graphs")
    return ContinuousEngine(model, tok, batch_size, sampling, seed, decode="graphs" if cuda_graphs and on_gpu else "dynamic",
                            stop=stop)


class _StopRows:
    """HF ``generate``'s stopping criterion for ``stop(id, new_ids)``: a bool per row of the batch."""

    def __init__(self, stop, ids: list[str], start: int):
        self.stop, self.ids, self.start = stop, ids, start

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        rows = input_ids[:, self.start:].tolist()
        return torch.tensor([self.stop(i, row) for i, row in zip(self.ids, rows)], device=input_ids.device)


def generate_kwargs(sampling: SamplingConfig) -> dict:
    """HF ``generate`` keyword arguments for ``sampling``."""
    kw = {"max_new_tokens": sampling.max_new_tokens, "do_sample": sampling.do_sample}
    if sampling.do_sample:
        kw.update(temperature=sampling.temperature, top_p=sampling.top_p, top_k=sampling.top_k)
    else:  # unset the model's own sampling defaults so greedy is really greedy (and quiet)
        kw.update(temperature=None, top_p=None, top_k=None)
    return kw


def plan_batches(prompts: dict[str, list[int]], batch_size: int) -> list[list[str]]:
    """Ids grouped into batches, longest prompts first (ties broken by id for determinism)."""
    order = sorted(prompts, key=lambda i: (-len(prompts[i]), i))
    return [order[k:k + batch_size] for k in range(0, len(order), batch_size)]


def left_pad(seqs: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, T] input_ids and attention_mask with padding on the left."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, s in enumerate(seqs):
        ids[row, width - len(s):] = torch.tensor(s, dtype=torch.long)
        mask[row, width - len(s):] = 1
    return ids.to(device), mask.to(device)


@torch.no_grad()
def _generate(model, tok, seqs: list[list[int]], sampling: SamplingConfig, synced_gpus: bool = False,
              stop=None, keys: list[str] | None = None) -> tuple[torch.Tensor, list]:
    """HF ``generate`` on one left-padded batch: ([B, new] new token ids, padded after a row's end; the
    end-of-sequence ids). ``stop(key, new_ids)`` also ends a row (``keys``: the rows' ids)."""
    ids, mask = left_pad(seqs, tok.pad_token_id, next(model.parameters()).device)
    eos = model.generation_config.eos_token_id or tok.eos_token_id
    extra = {}
    if stop is not None:
        from transformers import StoppingCriteriaList

        extra["stopping_criteria"] = StoppingCriteriaList([_StopRows(stop, keys, ids.shape[1])])
    out = model.generate(input_ids=ids, attention_mask=mask, pad_token_id=tok.pad_token_id, eos_token_id=eos,
                         synced_gpus=synced_gpus, **generate_kwargs(sampling), **extra)
    return out[:, ids.shape[1]:], eos if isinstance(eos, (list, tuple)) else [eos]


def generate_texts(model, tok, seqs: list[list[int]], sampling: SamplingConfig, synced_gpus: bool = False,
                   strip: bool = True) -> list[str]:
    """Generate for one batch of prompt ids; returns the new tokens' text (no specials; stripped
    unless ``strip`` is false, e.g. for code completions whose first line's indentation matters)."""
    new, _ = _generate(model, tok, seqs, sampling, synced_gpus)
    texts = tok.batch_decode(new, skip_special_tokens=True)
    return [t.strip() for t in texts] if strip else texts


def sample_token_ids(model, tok, prompts: dict[str, list[int]], sampling: SamplingConfig, *, batch_size: int,
                     seed: int, engine: str) -> dict[str, list[int]]:
    """``{id: new token ids}`` for every prompt, each ending with the end-of-sequence token that ended it
    (if one did), without a progress bar: the on-policy objective's samples at each step. ``engine``
    as in ``generate_batches``."""
    if engine == "continuous":
        out: dict[str, list[int]] = {}
        for done in continuous_engine(model, tok, batch_size, sampling, seed).run_ids(prompts, desc=""):
            out.update(done)
        return out
    out = {}
    for index, batch in enumerate(plan_batches(prompts, batch_size)):
        torch.manual_seed(seed + index)
        new, eos = _generate(model, tok, [prompts[i] for i in batch], sampling)
        out.update({i: _until_eos(row, eos) for i, row in zip(batch, new.tolist())})
    return out


def generate_batches(model, tok, prompts: dict[str, list[int]], sampling: SamplingConfig, *, batch_size: int,
                     seed: int, engine: str = "hf", skip: set[str] | frozenset = frozenset(),
                     desc: str = "generate", strip: bool = True, cuda_graphs: bool = False, stop=None,
                     ids: bool = False) -> Iterator[dict]:
    """Yield ``{id: generated text}`` as texts are done, for every id in ``prompts`` not in ``skip``.

    ``prompts`` maps id -> prompt token ids. Text is the decoded new tokens only (no prompt, no
    special tokens), stripped of surrounding whitespace unless ``strip`` is false; ``ids=True`` yields
    the new token ids instead (with the end-of-sequence token that ended a row, if one did). ``engine``:
    a resolved ``choose_engine`` value. With ``continuous`` an example's text depends on (seed, id);
    with ``hf`` batch ``i`` of the plan is sampled with seed ``seed + i``. ``cuda_graphs``: see
    ``continuous_engine``. ``stop(id, new_ids) -> bool`` ends a row early (a stop criterion on its text).
    """
    if engine == "continuous":
        todo = {i: p for i, p in prompts.items() if i not in skip}
        runner = continuous_engine(model, tok, batch_size, sampling, seed, cuda_graphs, stop)
        yield from runner.run_ids(todo, desc=desc) if ids else runner.run(todo, desc=desc, strip=strip)
        return
    batches = plan_batches(prompts, batch_size)
    todo = sum(1 for b in batches for i in b if i not in skip)
    bar = tqdm(total=todo, desc=desc, unit="ex", disable=runtime.rank() != 0 or todo == 0)
    for index, batch in enumerate(batches):
        batch = [i for i in batch if i not in skip]
        if not batch:
            continue
        torch.manual_seed(seed + index)
        new, eos = _generate(model, tok, [prompts[i] for i in batch], sampling, stop=stop, keys=batch)
        bar.update(len(batch))
        if ids:
            yield {i: _until_eos(row, eos) for i, row in zip(batch, new.tolist())}
        else:
            texts = tok.batch_decode(new, skip_special_tokens=True)
            yield dict(zip(batch, [t.strip() for t in texts] if strip else texts))
    bar.close()


def _until_eos(row: list[int], eos: list) -> list[int]:
    """A row of new ids up to and with the end-of-sequence token that ended it (the padding after cut)."""
    return row[:next((k + 1 for k, t in enumerate(row) if t in eos), len(row))]


def generate_all(model, tok, prompts: dict[str, list[int]], sampling: SamplingConfig, *, batch_size: int,
                 seed: int, engine: str = "hf", desc: str = "generate", strip: bool = True,
                 cuda_graphs: bool = False, stop=None, ids: bool = False) -> dict:
    """``{id: generated text}`` (or new token ids) for every prompt (``generate_batches`` run to the end)."""
    out: dict = {}
    for batch in generate_batches(model, tok, prompts, sampling, batch_size=batch_size, seed=seed, engine=engine,
                                  desc=desc, strip=strip, cuda_graphs=cuda_graphs, stop=stop, ids=ids):
        out.update(batch)
    return out
