"""Continuous batching: a fixed number of sequence slots over a KV cache allocated once, refilled as
soon as rows end, so that a long-tailed set of answer lengths never waits for its longest row.

    slots      S rows decoded together at every step (``distill.batch_size`` / ``eval.batch_size``)
    cache      per layer, K and V of [S, kv_heads, capacity, head_dim], capacity = the longest prompt
               + max_new_tokens, allocated at the first forward and never grown
    prefix     the tokens every prompt starts with (a chat template's system turn, a rewrite
               instruction) are computed once and copied into every slot
    prefill    new prompts enter free slots in one batched forward over what follows the prefix
               (left-padded within the group), which writes their K/V after the prefix in their slots
    decode     one forward over the busy slots, which are kept at the front (a finished row's slot
               takes the last busy row, K/V copied): each slot's last token at its own position; the
               new K/V are written at each slot's own cache length; a [n, 1, 1, width] mask shows each
               row its own real positions only
    sampling   per example (``sampler``): the text depends on (seed, example id) and nothing else
    graphs     ``decode="graphs"`` replays the decode step as CUDA graphs at fixed shapes
               (``decode_graphs``); ``"static"`` runs those fixed shapes eagerly (what the CPU tests check)

The model is the caller's (plain, peft-wrapped, 4-bit, or a ZeRO-3 model gathered whole); the engine
only calls its forward with a custom 4D mask and a cache object of its own, as transformers' decoder
models allow. ``engine_blocker`` names what would make the result differ from ``generate``.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Iterator

import torch
from tqdm.auto import tqdm

from sdft.config.schema import SamplingConfig
from sdft.distributed import runtime
from sdft.models.decode_graphs import StaticDecode
from sdft.models.loading import attention_mask_for, causal_lm, mask_blocker
from sdft.models.sampler import example_key, next_tokens

log = logging.getLogger(__name__)

# Decoder families whose forward takes a 4D mask and a cache object as given (tests/models/test_engine.py).
ENGINE_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text")


def cache_argument(model) -> str:
    """The name ``model``'s forward takes its cache by: transformers renamed ``past_key_values`` to
    ``cache`` (5.24 takes both, the old name until 5.40; 5.17 knows only the old one and would ignore
    ``cache=``, building a cache of its own that the engine's mask does not match)."""
    return "cache" if "cache" in inspect.signature(causal_lm(model).forward).parameters else "past_key_values"


def engine_blocker(model, capacity: int) -> str | None:
    """Why the engine would not give ``generate``'s result for ``model`` at sequences up to
    ``capacity`` tokens, or None."""
    return mask_blocker(model, ENGINE_MODEL_TYPES, "the engine's 4D mask", capacity)


class SlotCache:
    """K/V of every slot, for transformers' attention modules (they call ``update`` once per layer).

    Prefill (``rows`` set): the chunk's K/V are written to positions [offset, offset + T) of those slots,
    and the slots' positions [0, offset + T) are attended (the shared prefix, then the chunk). Decode
    (``rows`` None): slot ``i < len(pos)``'s new K/V go to its own position ``pos[i]`` and the first
    ``width`` positions of those slots are attended (the mask hides what is not the row's).
    """

    def __init__(self, slots: int, capacity: int):
        self.slots, self.capacity = slots, capacity
        self.k: dict[int, torch.Tensor] = {}
        self.v: dict[int, torch.Tensor] = {}
        self.rows: torch.Tensor | None = None
        self.offset = 0
        self.pos: torch.Tensor | None = None
        self.width = 0
        self.logged = False

    def update(self, key: torch.Tensor, value: torch.Tensor, layer_idx: int, *args, **kwargs):
        if layer_idx not in self.k:  # shapes and dtype from the model itself: [S, kv_heads, capacity, head_dim]
            shape = (self.slots, key.shape[1], self.capacity, key.shape[3])
            self.k[layer_idx] = torch.zeros(shape, dtype=key.dtype, device=key.device)
            self.v[layer_idx] = torch.zeros(shape, dtype=value.dtype, device=value.device)
        k, v = self.k[layer_idx], self.v[layer_idx]
        if self.rows is not None:
            end = self.offset + key.shape[2]
            k[self.rows, :, self.offset:end] = key
            v[self.rows, :, self.offset:end] = value
            if self.offset == 0:
                return key, value
            return k[self.rows, :, :end], v[self.rows, :, :end]
        n = len(self.pos)
        every = torch.arange(n, device=key.device)
        k[every, :, self.pos] = key[:, :, 0]
        v[every, :, self.pos] = value[:, :, 0]
        return k[:n, :, :self.width], v[:n, :, :self.width]

    def share_prefix(self, length: int) -> None:
        """Copy positions [0, length) of slot 0 to every slot (the prefix all prompts share)."""
        for t in (*self.k.values(), *self.v.values()):
            t[1:, :, :length] = t[:1, :, :length]

    def move(self, src: torch.Tensor, dst: torch.Tensor) -> None:
        """Copy whole slots ``src`` to slots ``dst`` in every layer."""
        for t in (*self.k.values(), *self.v.values()):
            t[dst] = t[src]

    # What transformers may ask of a cache besides ``update`` (nothing else reads it with a 4D mask).
    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.width

    def bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.k.values(), *self.v.values()))


class ContinuousEngine:
    """Generates for many prompts with ``slots`` rows in flight (see the module docstring)."""

    def __init__(self, model, tok, slots: int, sampling: SamplingConfig, seed: int, decode: str = "dynamic",
                 stop=None):
        if decode not in ("dynamic", "static", "graphs"):
            raise ValueError(f"decode must be dynamic, static or graphs, not {decode!r}")
        self.model, self.tok, self.sampling, self.seed, self.decode = model, tok, sampling, seed, decode
        self.stop = stop
        """``stop(id, new_ids) -> bool``: also ends a row (after its newest token) when it says so."""
        self.slots = max(1, slots)
        eos = model.generation_config.eos_token_id or tok.eos_token_id
        self.eos = set(eos if isinstance(eos, (list, tuple)) else [eos])
        self.pad = tok.pad_token_id if tok.pad_token_id is not None else next(iter(self.eos))
        self.device = next(model.parameters()).device
        self.cache_arg = cache_argument(model)
        self.new_tokens = 0  # tokens generated so far, for the log and the benchmarks

    def run(self, prompts: dict[str, list[int]], desc: str = "generate", strip: bool = True) -> Iterator[dict[str, str]]:
        """Yield ``{id: text}`` as rows finish (decoded new tokens, no specials; stripped unless
        ``strip`` is false). Prompts enter longest first."""
        for done in self.run_ids(prompts, desc):
            texts = {i: self.tok.decode(ids, skip_special_tokens=True) for i, ids in done.items()}
            yield {i: t.strip() for i, t in texts.items()} if strip else texts

    @torch.no_grad()
    def run_ids(self, prompts: dict[str, list[int]], desc: str = "generate") -> Iterator[dict[str, list[int]]]:
        """Yield ``{id: new token ids}`` as rows finish (ending with the end-of-sequence token that ended
        the row, if one did). Prompts enter longest first; an empty ``desc`` shows no progress bar."""
        if not prompts:
            return
        queue = sorted(prompts, key=lambda i: (-len(prompts[i]), i))
        capacity = len(prompts[queue[0]]) + self.sampling.max_new_tokens
        cache, rows = SlotCache(self.slots, capacity), _Rows(self.slots, capacity, self.device, self.pad)
        prefix = shared_prefix(list(prompts.values()))
        if prefix:
            self._prefix(cache, prompts[queue[0]][:prefix])
        static = StaticDecode(self, cache, rows, capture=self.decode == "graphs") if self.decode != "dynamic" else None
        refill = max(1, self.slots // 4)  # refill in groups: each prefill forward reads every weight once
        bar = tqdm(total=len(queue), desc=desc, unit="ex", disable=not runtime.is_main() or not desc)
        while queue or rows.n:
            free = self.slots - rows.n
            if queue and (free >= min(refill, len(queue)) or rows.n == 0):
                group, queue = queue[:free], queue[free:]
                logits = self._prefill(cache, rows, group, [prompts[i] for i in group], prefix)
                if not cache.logged:  # said once per run; a quiet run (no progress bar) says it at debug level
                    log.log(logging.INFO if desc else logging.DEBUG, "generate: %d slots, KV cache %.1f MiB (capacity %d "
                            "tokens per slot, %d-token shared prefix)", self.slots, cache.bytes() / 2**20, capacity, prefix)
                    cache.logged = True
                done = self._advance(logits, rows, range(rows.n, rows.n + len(group)))
                rows.n += len(group)
            else:
                done = self._advance(self._decode(cache, rows, static), rows, range(rows.n))
            rows.compact(cache)
            if done:
                bar.update(len(done))
                yield done
        bar.close()

    def _prefix(self, cache: SlotCache, tokens: list[int]) -> None:
        """The shared prefix: one forward in slot 0, then copied to every slot's first positions."""
        n, dev = len(tokens), self.device
        mask = torch.ones(n, n, dtype=torch.bool, device=dev).tril()[None, None]
        cache.rows, cache.offset = torch.zeros(1, dtype=torch.long, device=dev), 0
        self.model(input_ids=torch.tensor([tokens], device=dev), attention_mask=attention_mask_for(self.model, mask),
                   position_ids=torch.arange(n, device=dev)[None], use_cache=True, logits_to_keep=1,
                   **{self.cache_arg: cache})
        cache.rows = None
        cache.share_prefix(n)

    def _prefill(self, cache: SlotCache, rows: _Rows, group: list[str], seqs: list[list[int]],
                 prefix: int) -> torch.Tensor:
        """Prompts into the free slots after the busy ones: one forward over what follows the shared
        prefix, left-padded; returns [g, V] last-position logits."""
        n, dev = len(seqs), self.device
        seqs = [q[prefix:] for q in seqs]
        width = max(len(q) for q in seqs)
        ids = torch.full((n, width), self.pad, dtype=torch.long)
        real = torch.zeros(n, width, dtype=torch.bool)
        for r, q in enumerate(seqs):
            ids[r, width - len(q):] = torch.tensor(q, dtype=torch.long)
            real[r, width - len(q):] = True
        pos = prefix + (real.long().cumsum(1) - 1).clamp(min=0)
        causal = torch.ones(width, width, dtype=torch.bool).tril()
        own = (causal[None] & real[:, None, :]) | torch.eye(width, dtype=torch.bool)[None]  # pads see themselves
        mask = torch.cat([torch.ones(n, width, prefix, dtype=torch.bool), own], dim=2)      # the prefix is everyone's
        slots = torch.arange(rows.n, rows.n + n, device=dev)
        cache.rows, cache.offset = slots, prefix
        out = self.model(input_ids=ids.to(dev), attention_mask=attention_mask_for(self.model, mask[:, None].to(dev)),
                         position_ids=pos.to(dev), use_cache=True, logits_to_keep=1, **{self.cache_arg: cache})
        cache.rows, cache.offset = None, 0
        rows.valid[slots] = False
        rows.valid[slots, :prefix] = True
        rows.valid[slots, prefix:prefix + width] = real.to(dev)
        rows.length[slots] = prefix + width
        rows.next_pos[slots] = torch.tensor([prefix + len(q) for q in seqs], dtype=torch.long, device=dev)
        for slot, ex in zip(slots.tolist(), group):
            rows.owner[slot], rows.new[slot] = ex, []
            rows.keys[slot] = example_key(self.seed, ex)
        return out.logits[:, -1]

    def _decode(self, cache: SlotCache, rows: _Rows, static: StaticDecode | None) -> torch.Tensor:
        """One step over the busy slots [0, n), at fixed shapes when ``static`` is given; returns [n, V] logits."""
        n = rows.n
        rows.valid[torch.arange(n, device=self.device), rows.length[:n]] = True
        logits = static.forward(n) if static else self.step_forward(cache, rows, n, int(rows.length[:n].max()) + 1)
        rows.length[:n] += 1
        rows.next_pos[:n] += 1
        return logits

    def step_forward(self, cache: SlotCache, rows: _Rows, b: int, width: int) -> torch.Tensor:
        """The model's forward on slots [0, b): each slot's last token at its own position, its K/V written
        at its cache length, the first ``width`` cache positions attended as its mask allows; [b, V] logits."""
        cache.pos, cache.width = rows.length[:b], width
        mask = attention_mask_for(self.model, rows.valid[:b, None, None, :width])
        out = self.model(input_ids=rows.last[:b, None], attention_mask=mask, position_ids=rows.next_pos[:b, None],
                         use_cache=True, **{self.cache_arg: cache})
        return out.logits[:, -1]

    def _advance(self, logits: torch.Tensor, rows: _Rows, slots: range) -> dict[str, list[int]]:
        """Draw each slot's next token; finish rows at an end-of-sequence token or their token budget.
        Returns the finished rows' new tokens (their slots are freed; ``compact`` closes the gaps)."""
        idx = torch.tensor(list(slots), dtype=torch.long)
        steps = torch.tensor([len(rows.new[r]) for r in slots], dtype=torch.long)
        tokens = next_tokens(logits, self.sampling, rows.keys[idx], steps).tolist()
        self.new_tokens += len(tokens)
        rows.last[idx.to(self.device)] = torch.tensor(tokens, dtype=torch.long, device=self.device)
        done = {}
        for r, t in zip(slots, tokens):
            rows.new[r].append(t)
            if (t in self.eos or len(rows.new[r]) >= self.sampling.max_new_tokens
                    or (self.stop is not None and self.stop(rows.owner[r], rows.new[r]))):
                done[rows.owner[r]] = rows.new[r]
                rows.owner[r] = None
        return done


def shared_prefix(prompts: list[list[int]], minimum: int = 8) -> int:
    """How many leading tokens every prompt shares (0 below ``minimum``), leaving each at least one of its own."""
    first, n = prompts[0], min(len(p) for p in prompts) - 1
    for p in prompts[1:]:
        n = next((k for k in range(n) if p[k] != first[k]), n)
    return n if n >= minimum else 0


class _Rows:
    """The state of each slot; slots [0, n) are busy."""

    def __init__(self, slots: int, capacity: int, device, pad: int):
        self.n = 0
        self.valid = torch.zeros(slots, capacity, dtype=torch.bool, device=device)  # a row's own cache positions
        self.length = torch.zeros(slots, dtype=torch.long, device=device)            # cache positions used
        self.next_pos = torch.zeros(slots, dtype=torch.long, device=device)          # position id of the next token
        self.last = torch.full((slots,), pad, dtype=torch.long, device=device)       # the last token
        self.keys = torch.zeros(slots, dtype=torch.long)                             # sampling stream keys
        self.owner: list[str | None] = [None] * slots
        self.new: list[list[int]] = [[] for _ in range(slots)]

    def compact(self, cache: SlotCache) -> None:
        """Move the busy rows that sit after a finished one into the gaps, so that [0, n) stay busy."""
        alive = [r for r in range(self.n) if self.owner[r] is not None]
        keep = len(alive)
        movers = [r for r in alive if r >= keep]
        holes = [r for r in range(keep) if self.owner[r] is None]
        if movers:
            src = torch.tensor(movers, device=self.valid.device)
            dst = torch.tensor(holes, device=self.valid.device)
            cache.move(src, dst)
            for t in (self.valid, self.length, self.next_pos, self.last):
                t[dst] = t[src]
            self.keys[dst.cpu()] = self.keys[src.cpu()]
            for a, b in zip(movers, holes):
                self.owner[b], self.new[b], self.owner[a] = self.owner[a], self.new[a], None
        self.n = keep
