"""Batched generation shared by distillation and evaluation.

Prompts are sorted by length (longest first, so an out-of-memory shows up in the first batch, and
padding is small), left-padded, and generated with HF ``generate``. The batch plan depends only on
the full prompt list, and each batch is seeded by ``seed + batch index``, so a resumed run samples
its remaining batches exactly as an unbroken run would.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields

import torch
from tqdm.auto import tqdm

from sdft.utils.runinfo import is_main_process


@dataclass
class GenerationSettings:
    max_new_tokens: int = 512
    do_sample: bool = True
    temperature: float = 0.95
    top_p: float = 0.7
    top_k: int = 50
    seed: int = 42
    batch_size: int = 8

    @classmethod
    def from_section(cls, section, **overrides) -> "GenerationSettings":
        """From ``cfg.distill`` or ``cfg.eval`` (same field names), with optional overrides."""
        values = {f.name: getattr(section, f.name) for f in fields(cls) if hasattr(section, f.name)}
        return cls(**{**values, **overrides})

    def to_dict(self) -> dict:
        return asdict(self)

    def generate_kwargs(self) -> dict:
        kw = {"max_new_tokens": self.max_new_tokens, "do_sample": self.do_sample}
        if self.do_sample:
            kw.update(temperature=self.temperature, top_p=self.top_p, top_k=self.top_k)
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
def generate_texts(model, tok, seqs: list[list[int]], settings: GenerationSettings, synced_gpus: bool = False,
                   strip: bool = True) -> list[str]:
    """Generate for one batch of prompt ids; returns the new tokens' text (no specials; stripped
    unless ``strip`` is false, e.g. for code completions whose first line's indentation matters)."""
    ids, mask = left_pad(seqs, tok.pad_token_id, next(model.parameters()).device)
    out = model.generate(input_ids=ids, attention_mask=mask, pad_token_id=tok.pad_token_id,
                         eos_token_id=model.generation_config.eos_token_id or tok.eos_token_id,
                         synced_gpus=synced_gpus, **settings.generate_kwargs())
    texts = tok.batch_decode(out[:, ids.shape[1]:], skip_special_tokens=True)
    return [t.strip() for t in texts] if strip else texts


def generate_batches(model, tok, prompts: dict[str, list[int]], settings: GenerationSettings,
                     skip: set[str] | frozenset = frozenset(), desc: str = "generate",
                     strip: bool = True) -> Iterator[dict[str, str]]:
    """Yield ``{id: generated text}`` per batch, for every id in ``prompts`` not in ``skip``.

    ``prompts`` maps id -> prompt token ids. Text is the decoded new tokens only (no prompt, no
    special tokens), stripped of surrounding whitespace unless ``strip`` is false.
    """
    batches = plan_batches(prompts, settings.batch_size)
    todo = sum(1 for b in batches for i in b if i not in skip)
    bar = tqdm(total=todo, desc=desc, unit="ex", disable=not is_main_process() or todo == 0)
    for index, batch in enumerate(batches):
        batch = [i for i in batch if i not in skip]
        if not batch:
            continue
        torch.manual_seed(settings.seed + index)
        texts = generate_texts(model, tok, [prompts[i] for i in batch], settings, strip=strip)
        bar.update(len(batch))
        yield dict(zip(batch, texts))
    bar.close()
