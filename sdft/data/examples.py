"""Turn raw records into ``Example``s: one conversation ending in an (instruction, response) turn, with a
stable id.

Supported layouts (field names configurable in ``DataConfig``):
- alpaca: ``instruction``, optional ``input``, ``output``. A non-empty input is appended to the
  instruction as ``instruction + "\\n" + input`` (the paper's preprocessing).
- prompt_response: ``prompt``, ``response``.
- messages: a chat list ``[{"role": "system"?}, {"role": "user"}, {"role": "assistant"}, ...]``, single-
  or multi-turn.
- sharegpt: ``conversations``, a list of ``{"from", "value"}`` turns, or of plain strings alternating
  user and assistant (LIMA's layout).

A multi-turn conversation keeps its earlier (user, assistant) turns in ``Example.history``; its last
turn is the instruction and response, so every single-turn path reads it unchanged.

The id is the record's ``id_field`` when present, otherwise a hash of its content, so it is the
same whatever the file order or the world size; every stage joins on it, never on position.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sdft.config.schema import DataConfig
from sdft.data.conversations import conversation_turns, gsm8k_answer, split_conversation
from sdft.data.records import read_records
from sdft.errors import DataError

log = logging.getLogger(__name__)


@dataclass
class Example:
    id: str
    instruction: str
    response: str
    system: str = ""
    location: str = ""
    history: list[list[str]] = field(default_factory=list)
    """Earlier turns of a multi-turn conversation, ``[[user, assistant], ...]``, oldest first."""

    def to_dict(self) -> dict:
        out = {"id": self.id, "instruction": self.instruction, "response": self.response, "system": self.system}
        if self.history:  # single-turn rows keep the form they always had
            out["history"] = self.history
        return out

    def turns(self) -> list[list[str]]:
        """Every (user, assistant) turn, the last one being (instruction, response)."""
        return [*self.history, [self.instruction, self.response]]


@dataclass(frozen=True)
class RewriteUnit:
    """One assistant turn to rewrite (distill) and gate (filter): a single-turn example's answer, or one
    turn of a conversation. ``key`` names it in the distill records and keys its sampling stream."""

    key: str
    id: str
    turn: int | None
    """The turn's index in its conversation (0: the first answer); None for a single-turn example."""
    instruction: str
    reference: str
    history: list
    """The conversation before this turn, as in the data."""
    system: str = ""


def unit_key(ex_id: str, turn: int | None) -> str:
    """The key of a rewrite unit: the example id itself for a single-turn example."""
    return ex_id if turn is None else f"{ex_id}#turn{turn}"


def record_key(record: dict) -> str:
    """The unit key of a distill record (``{id, turn?, ...}``)."""
    return unit_key(record["id"], record.get("turn"))


def rewrite_units(examples: list[Example], turns: str = "all") -> list[RewriteUnit]:
    """The turns to rewrite, in data-set order: every answer of a conversation (``turns="all"``) or its
    last (``"last"``); a single-turn example is one unit keyed by its id, as it always was."""
    units = []
    for ex in examples:
        if not ex.history:
            units.append(RewriteUnit(ex.id, ex.id, None, ex.instruction, ex.response, [], ex.system))
            continue
        pairs = ex.turns()
        for k in range(len(pairs)) if turns == "all" else [len(pairs) - 1]:
            units.append(RewriteUnit(unit_key(ex.id, k), ex.id, k, pairs[k][0], pairs[k][1], pairs[:k], ex.system))
    keys = Counter(u.key for u in units)
    if len(keys) != len(units):
        clash = next(k for k, n in keys.items() if n > 1)
        raise DataError(f"id {clash!r} names both a single-turn example and a turn of a conversation; rename it")
    return units


@dataclass
class LoadReport:
    """What a load kept and what it skipped (``data.on_error: skip``)."""

    path: str
    loaded: int = 0
    skipped: int = 0
    first_errors: list[str] | None = None


def content_id(instruction: str, response: str, system: str = "", history: list | None = None) -> str:
    """A stable id from an example's content (16 hex chars of SHA-1)."""
    content = [system, instruction, response] + ([history] if history else [])
    blob = json.dumps(content, ensure_ascii=False)
    return hashlib.sha1(blob.encode("utf-8")).hexdigest()[:16]


def detect_format(fields: dict[str, Any], cfg: DataConfig, response_required: bool = True) -> str:
    if cfg.messages_field in fields:
        return "messages"
    if cfg.conversations_field in fields:
        return "sharegpt"
    if cfg.instruction_field in fields and (cfg.output_field in fields or not response_required):
        return "alpaca"
    if cfg.prompt_field in fields:
        return "prompt_response"
    raise DataError("cannot tell the record layout from its fields "
                    f"{sorted(fields)}; expected {cfg.instruction_field}/{cfg.output_field} (alpaca), "
                    f"{cfg.prompt_field}/{cfg.response_field}, {cfg.messages_field} or {cfg.conversations_field}; set data.format "
                    "and the data.*_field names to match your file")


def _text(fields: dict[str, Any], name: str, required: bool = True) -> str:
    value = fields.get(name)
    if value is None or (isinstance(value, float) and value != value):  # None or NaN (CSV/Parquet gaps)
        if required:
            raise DataError(f"missing field {name!r} (fields present: {sorted(fields)})")
        return ""
    if not isinstance(value, str):
        if isinstance(value, (int, float)):
            return str(value)
        raise DataError(f"field {name!r} must be a string, got {type(value).__name__}")
    return value


def _history(fields: dict[str, Any], name: str) -> list[list[str]]:
    """The earlier turns of an alpaca-layout conversation: ``[[user, assistant], ...]`` (empty or absent:
    a single-turn example)."""
    value = fields.get(name)
    if value is None or (isinstance(value, float) and value != value):
        return []
    if not isinstance(value, (list, tuple)) or not all(
            isinstance(t, (list, tuple)) and len(t) == 2 and all(isinstance(x, str) and x.strip() for x in t)
            for t in value):
        raise DataError(f"field {name!r} must be a list of [user, assistant] pairs of non-empty strings")
    return [list(t) for t in value]


def to_example(fields: dict[str, Any], fmt: str, cfg: DataConfig, response_required: bool = True) -> Example:
    """Normalise one record. Raises ``DataError`` (without location; the caller adds it)."""
    system = _text(fields, cfg.system_field, required=False)
    history: list[list[str]] = []
    if fmt == "alpaca":
        instruction = _text(fields, cfg.instruction_field)
        extra = _text(fields, cfg.input_field, required=False)
        if extra.strip():
            instruction = instruction + "\n" + extra
        response = _text(fields, cfg.output_field, required=response_required)
        history = _history(fields, cfg.history_field)
    elif fmt == "prompt_response":
        instruction = _text(fields, cfg.prompt_field)
        response = _text(fields, cfg.response_field, required=response_required)
        history = _history(fields, cfg.history_field)
    elif fmt in ("messages", "sharegpt"):
        name = cfg.messages_field if fmt == "messages" else cfg.conversations_field
        try:
            turns = conversation_turns(fields.get(name), name, fmt)
            system, history, instruction, response = split_conversation(turns, system, response_required)
        except DataError as e:
            raw_id = fields.get(cfg.id_field)
            raise DataError(f"conversation {raw_id!r}: {e}" if raw_id not in (None, "") else
                            f"conversation: {e}") from None
    else:
        raise DataError(f"unknown data.format {fmt!r}")
    if cfg.preprocess == "gsm8k":
        response = gsm8k_answer(response)
    if not instruction.strip():
        raise DataError("empty instruction")
    if response_required and not response.strip():
        raise DataError("empty response")
    raw_id = fields.get(cfg.id_field)
    ex_id = str(raw_id) if raw_id not in (None, "") else content_id(instruction, response, system, history)
    return Example(id=ex_id, instruction=instruction, response=response, system=system, history=history)


def read_examples(path: str | Path, cfg: DataConfig, *, limit: int = 0, response_required: bool = True) -> list[Example]:
    """The examples of ``load_examples`` without its report."""
    return load_examples(path, cfg, limit=limit, response_required=response_required)[0]


def load_examples(path: str | Path, cfg: DataConfig, *, limit: int = 0,
                  response_required: bool = True) -> tuple[list[Example], LoadReport]:
    """Load and normalise a data set. Errors name file and line; an id given twice, or an explicit id
    equal to another record's content-hash id, is refused naming both records.

    With ``cfg.on_error == "skip"`` a bad record is counted and logged instead of raised.
    An empty result is always an error.
    """
    report = LoadReport(path=str(path), first_errors=[])
    examples: list[Example] = []
    seen: Counter[str] = Counter()
    owners: dict[str, tuple[str, bool]] = {}  # id -> (location, whether the id was given explicitly)
    fmt = None if cfg.format == "auto" else cfg.format
    for rec in read_records(path):
        try:
            if rec.fields is None:
                raise DataError(rec.error)
            fmt = fmt or detect_format(rec.fields, cfg, response_required)
            ex = to_example(rec.fields, fmt, cfg, response_required=response_required)
        except DataError as e:
            msg = f"{rec.location}: {e}"
            if cfg.on_error == "error":
                raise DataError(msg + " (fix the record, or set data.on_error=skip to skip bad records)") from None
            report.skipped += 1
            if len(report.first_errors) < 5:
                report.first_errors.append(msg)
            continue
        ex.location = rec.location
        explicit = rec.fields.get(cfg.id_field) not in (None, "")
        if not explicit:
            # Identical records hash alike; number the repeats so each keeps its own stable id.
            seen[ex.id] += 1
            if seen[ex.id] > 1:
                ex.id = f"{ex.id}-{seen[ex.id] - 1}"
        if ex.id in owners:
            raise DataError(_duplicate_id(ex.id, rec.location, explicit, *owners[ex.id], cfg.id_field))
        owners[ex.id] = (rec.location, explicit)
        examples.append(ex)
        if limit and len(examples) >= limit:
            break
    report.loaded = len(examples)
    if report.skipped:
        log.warning("%s: skipped %d bad record(s); first: %s", path, report.skipped,
                    "; ".join(report.first_errors))
    if not examples:
        raise DataError(f"{path}: no usable examples (empty file, or every record was bad)")
    return examples, report


def _duplicate_id(ex_id: str, location: str, explicit: bool, first: str, first_explicit: bool, field: str) -> str:
    if explicit and first_explicit:
        return f"{location}: duplicate id {ex_id!r} (first at {first}); ids in field {field!r} must be unique"
    given, hashed = (location, first) if explicit else (first, location)
    return (f"{given}: id {ex_id!r} equals the content-hash id of the record at {hashed}, which has no {field!r} "
            f"field; ids must be unique: give that record an id of its own, or change this one")
