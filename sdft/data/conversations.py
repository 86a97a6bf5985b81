"""Conversations (``messages`` and ShareGPT layouts) checked and split into turns, and the paper's GSM8K
answer preprocessing.

A conversation is an optional system turn, then user and assistant turns strictly alternating, starting
with a user turn and ending with an assistant turn (or a user turn, for prompts without answers). It is
split into its earlier (user, assistant) pairs, the history, and its last pair, the example's
instruction and response. Anything else is a ``DataError`` that says which turn is wrong.
"""

from __future__ import annotations

import re
from typing import Any

from sdft.errors import DataError

# ShareGPT speaker names -> chat roles (the names found in ShareGPT, OpenHermes, SlimOrca and the like).
SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "chatgpt": "assistant", "bing": "assistant", "bard": "assistant"}


def conversation_turns(value: Any, field: str, fmt: str) -> list[tuple[str, str]]:
    """(role, content) per turn of a ``messages`` list (``{role, content}``) or a ShareGPT list
    (``{from, value}``, or plain strings alternating user and assistant)."""
    if not isinstance(value, list) or not value:
        raise DataError(f"field {field!r} must be a non-empty list of turns")
    if fmt == "sharegpt" and all(isinstance(t, str) for t in value):
        return [("user" if i % 2 == 0 else "assistant", t) for i, t in enumerate(value)]
    role_key, text_key = ("role", "content") if fmt == "messages" else ("from", "value")
    turns = []
    for i, turn in enumerate(value, start=1):
        if not isinstance(turn, dict):
            raise DataError(f"field {field!r}: turn {i} is a {type(turn).__name__}, expected a "
                            f"{{{role_key}, {text_key}}} object")
        role, text = turn.get(role_key), turn.get(text_key)
        if fmt == "sharegpt":
            role = SHAREGPT_ROLES.get(str(role).lower(), role)
        if role not in ("system", "user", "assistant"):
            raise DataError(f"field {field!r}: turn {i} has {role_key} {turn.get(role_key)!r}; expected system, "
                            + ("user or assistant" if fmt == "messages" else "human or gpt"))
        if not isinstance(text, str):
            raise DataError(f"field {field!r}: turn {i} ({role}) has no text in {text_key!r}")
        turns.append((role, text))
    return turns


def split_conversation(turns: list[tuple[str, str]], system: str = "",
                       response_required: bool = True) -> tuple[str, list[list[str]], str, str]:
    """(system, history, instruction, response) of a checked conversation; ``system`` is the record's
    own system field, replaced by a leading system turn."""
    first = 1  # turns are numbered as in the record, from 1, a system turn included
    if turns[0][0] == "system":
        system, turns, first = turns[0][1], turns[1:], 2
    for i, (role, text) in enumerate(turns):
        n = first + i
        if role == "system":
            raise DataError(f"turn {n} is a system turn; only the first turn may be one")
        if role != ("user" if i % 2 == 0 else "assistant"):
            raise DataError(f"turns {n - 1} and {n} are both {role} turns; user and assistant turns must "
                            "alternate, starting with a user turn" if i > 0 else
                            f"the conversation starts with an {role} turn; the first turn (after an optional "
                            "system turn) must be a user turn")
        if not text.strip():
            raise DataError(f"turn {n} ({role}) has empty content")
    if not turns:
        raise DataError("the conversation has no user turn")
    if turns[-1][0] == "user":
        if response_required:
            raise DataError(f"the conversation ends with a user turn (turn {first + len(turns) - 1}); it must end "
                            "with the assistant's answer")
        turns = [*turns, ("assistant", "")]
    pairs = [[turns[i][1], turns[i + 1][1]] for i in range(0, len(turns), 2)]
    return system, pairs[:-1], pairs[-1][0], pairs[-1][1]


_CALC = re.compile(r"<<[^<>]*>>")
_FINAL = re.compile(r"\n?####\s*(.+?)\s*$")


def gsm8k_answer(answer: str) -> str:
    """GSM8K's ``... <<48/2=24>>24 ... #### 72`` -> ``... 24 ...\\nThe answer is 72.``, as the authors' files
    have it (a thousands separator stays: ``#### 1,080`` -> ``The answer is 1,080.``)."""
    text = _CALC.sub("", answer)
    m = _FINAL.search(text)
    if m is None:
        return text
    return text[:m.start()].rstrip() + f"\nThe answer is {m.group(1)}."
