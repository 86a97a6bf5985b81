"""(prompt, response) rows as token ids with prompt-masked labels, padded batches of them, and the
response-token loss: what training (the SFT objective) and retention scoring (the seed's answers
under another model) both compute."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

from sdft.data.examples import Example
from sdft.errors import DataError
from sdft.templates.prompts import encode_example, encode_prompt

log = logging.getLogger(__name__)


@dataclass
class TokenizedSet:
    input_ids: list[list[int]]
    labels: list[list[int]]
    ids: list[str]
    skipped_overlength: list[str]
    truncated: list[str] = field(default_factory=list)
    """Ids of the examples cut to the cutoff and kept."""
    skipped_empty: list[str] = field(default_factory=list)
    """Ids of the examples left out for an empty answer (a kept empty rewrite; the authors' training
    drops these too) or an answer the cut left without a token."""

    def __len__(self) -> int:
        return len(self.input_ids)

    def response_tokens(self) -> list[int]:
        """Per example, the tokens the loss is taken on (labelled positions after the first)."""
        return [sum(1 for y in labels[1:] if y != -100) for labels in self.labels]


def tokenize_rows(rows: list[dict], tok, template: str, cutoff_len: int | None = None,
                  overlength: str = "truncate", loss_turns: str = "last", layout: str = "paper") -> TokenizedSet:
    """Encode ``{id, instruction, response, system, history?}`` rows; labels are -100 on prompt tokens.

    A row with a ``history`` (earlier turns of a conversation) is encoded whole; ``loss_turns="all"``
    puts the loss on every assistant turn, ``"last"`` on the last only. With a ``cutoff_len``, a longer
    example is cut and kept (``overlength="truncate"``, ``layout``'s rule), skipped (``"skip"``) or refused
    (``"error"``), and counted; without one, every example is kept whole. A row whose answer is empty is
    left out and counted.
    """
    out = TokenizedSet([], [], [], [])
    every_turn = loss_turns == "all"
    for row in rows:
        if not row["response"].strip():
            out.skipped_empty.append(row["id"])
            continue
        args = (tok, template, row["instruction"], row["response"], row.get("system", ""), row.get("history", ()),
                every_turn, layout)
        ids, labels, _ = encode_example(*args)
        if cutoff_len is not None and len(ids) > cutoff_len:
            if overlength == "error":
                raise DataError(f"example {row['id']!r} is {len(ids)} tokens, longer than train.cutoff_len="
                                f"{cutoff_len}; raise the cutoff or set train.overlength=truncate")
            if overlength == "skip":
                out.skipped_overlength.append(row["id"])
                continue
            ids, labels, _ = encode_example(*args, cutoff=cutoff_len)
            if all(y == -100 for y in labels[1:]):
                out.skipped_empty.append(row["id"])
                continue
            out.truncated.append(row["id"])
        out.input_ids.append(ids)
        out.labels.append(labels)
        out.ids.append(row["id"])
    if out.truncated:
        log.warning("train: cut %d example(s) longer than train.cutoff_len=%d to that length and kept them (e.g. %s)",
                    len(out.truncated), cutoff_len, out.truncated[0])
    if out.skipped_overlength:
        log.warning("train: skipped %d example(s) longer than train.cutoff_len=%d (train.overlength=skip; e.g. %s)",
                    len(out.skipped_overlength), cutoff_len, out.skipped_overlength[0])
    if out.skipped_empty:
        log.warning("train: left out %d example(s) with nothing to train on: an empty answer, or one the cut "
                    "to train.cutoff_len left no token of (e.g. %s)", len(out.skipped_empty), out.skipped_empty[0])
    if not out.input_ids:
        raise DataError(f"no training example left to train on (train.cutoff_len={cutoff_len}, "
                        f"{len(out.skipped_overlength)} too long, {len(out.skipped_empty)} with an empty answer)")
    return out


def check_renders(examples: list[Example], templates: list[str], tok_loader, needs_template: bool = True,
                  every_turn: bool = True) -> None:
    """Encode one example of every conversation shape (system turn or not, number of turns) with each
    chat-route template in ``templates``; a conversation the tokenizer's chat template rejects is a
    ``DataError`` naming the record and its id. ``tok_loader`` is called only when there is a chat
    template to check; ``needs_template=False`` skips a tokenizer without one (the caller falls back).
    ``every_turn``: training puts the loss on every assistant turn, so each needs a span."""
    if "chat" not in templates:
        return
    tok = tok_loader()
    if not needs_template and not getattr(tok, "chat_template", None):
        return
    shapes = {}
    for ex in examples:
        shapes.setdefault((bool(ex.system), len(ex.history)), ex)
    for ex in shapes.values():
        try:
            if ex.response:
                encode_example(tok, "chat", ex.instruction, ex.response, ex.system, history=ex.history,
                               train_history=every_turn)
            else:  # a prompt without an answer (general prompts): what generation renders
                encode_prompt(tok, "chat", ex.instruction, system=ex.system, history=ex.history)
        except DataError as e:
            raise DataError(f"{ex.location}: conversation {ex.id!r}: {e}") from None


def right_pad(seqs: list[list[int]], pad_id: int, fill: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """([B, T] ``seqs`` right-padded with ``fill`` (default ``pad_id``), [B, T] attention mask)."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id if fill is None else fill, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, s in enumerate(seqs):
        ids[row, :len(s)] = torch.tensor(s, dtype=torch.long)
        mask[row, :len(s)] = 1
    return ids, mask


def collate(data: TokenizedSet, indices: list[int], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids``, ``attention_mask``, ``labels`` (each [B, T])."""
    ids, mask = right_pad([data.input_ids[i] for i in indices], pad_id)
    labels, _ = right_pad([data.labels[i] for i in indices], pad_id, fill=-100)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def causal_lm_loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed next-token cross-entropy over labelled positions, and their count.

    Args:
        logits: [B, T, V] model outputs.
        labels: [B, T] target ids, -100 where no loss is taken.
    Returns:
        (loss_sum: scalar, float32 at least (float64 logits stay float64, for references), n_tokens: scalar int64)
    """
    shift_logits = logits[:, :-1].to(torch.promote_types(logits.dtype, torch.float32)).reshape(-1, logits.shape[-1])
    shift_labels = labels[:, 1:].reshape(-1)
    loss = torch.nn.functional.cross_entropy(shift_logits, shift_labels, ignore_index=-100, reduction="sum")
    return loss, (shift_labels != -100).sum()
