"""The chat route: prompts and training turns rendered through the tokenizer's own chat template.

A conversation's training sequence is its rendering; each assistant turn's trained span runs from the
end of its turn's generation prompt to the end of its own end-of-turn tokens. Some templates append a
generation header after the last message whatever ``add_generation_prompt`` says (the original Llama-3
template always ends with ``<|start_header_id|>assistant<|end_header_id|>``): that header opens the
next turn, so it is never part of an answer's span. It is recognised as a trailing part of the
rendering that starts with the tokens every turn opens with and that the turn's generation prompt ends
with too.
"""

from __future__ import annotations

import weakref

from sdft.errors import ConfigError, DataError

Pair = tuple[list[int], list[int]]
_PROBE = "..."


def check_chat(tok) -> None:
    if not getattr(tok, "chat_template", None):
        raise ConfigError("template 'chat' needs a tokenizer with a chat template; this tokenizer has "
                          "none: use a text template (alpaca, math, using, refer)")


def messages(system: str, history, user_text: str) -> list[dict]:
    """The message list of a conversation: an optional system turn, the earlier (user, assistant) turns,
    then the last user turn."""
    msgs = [{"role": "system", "content": system}] if system else []
    for user, answer in history:
        msgs += [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
    msgs.append({"role": "user", "content": user_text})
    return msgs


def render(tok, msgs: list[dict], generation_prompt: bool) -> list[int]:
    """Token ids of ``msgs`` through the tokenizer's chat template; a conversation the template refuses
    (a role it does not know, turns it wants alternating) is a ``DataError`` with the template's reason."""
    from jinja2.exceptions import TemplateError

    try:
        text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=generation_prompt)
    except TemplateError as e:
        raise DataError(f"the tokenizer's chat template rejects this conversation: {e}") from None
    return tok(text, add_special_tokens=False)["input_ids"]


_OPENINGS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # tokenizer -> (its template, opening)


def _turn_opening(tok) -> list[int]:
    """The tokens every turn opens with, before its role (``<|start_header_id|>``, ``<|im_start|>``,
    ``<start_of_turn>``): what a user turn and an assistant turn rendered alone share after BOS. Empty
    when the template refuses a conversation that opens with an assistant turn (it then has no header
    to append either). Worked out once per tokenizer and template."""
    known = _OPENINGS.get(tok)
    if known is None or known[0] != tok.chat_template:
        known = _OPENINGS[tok] = (tok.chat_template, _find_opening(tok))
    return known[1]


def _find_opening(tok) -> list[int]:
    try:
        user = render(tok, [{"role": "user", "content": _PROBE}], False)
        assistant = render(tok, [{"role": "assistant", "content": _PROBE}], False)
    except DataError:
        return []
    n = 0
    while n < min(len(user), len(assistant)) and user[n] == assistant[n]:
        n += 1
    lead = 1 if tok.bos_token_id is not None and user[:1] == [tok.bos_token_id] else 0
    return user[lead:n]


def _turn_end(rendered: list[int], start: int, prompt: list[int], opening: list[int]) -> int:
    """The end of the answer that ends ``rendered`` (it starts at ``start``): the rendering's end, less a
    trailing header of the next turn (it starts with ``opening`` and ``prompt`` ends with it too)."""
    k = len(opening)
    if k:
        for p in range(len(rendered) - k, start, -1):
            if rendered[p:p + k] == opening and len(rendered) - p <= len(prompt) and rendered[p:] == prompt[p - len(rendered):]:
                return p
    return len(rendered)


def chat_prompt(tok, instruction: str, system: str = "", history=()) -> list[int]:
    """The generation prompt of the last user turn, after ``history``."""
    check_chat(tok)
    return render(tok, messages(system, history, instruction), generation_prompt=True)


def chat_turns(tok, instruction: str, response: str, system: str = "", history=(),
               every_turn: bool = True) -> list[Pair]:
    """``(prompt part, answer part)`` per assistant turn, in order; joined, they are the conversation's
    rendering up to the end of its last answer's turn. An answer part is the answer and its own
    end-of-turn tokens. ``every_turn=False``: one pair, everything before the last answer as its prompt
    part (the earlier answers are not trained on, so they need no span).

    Refused (``ConfigError``): a template whose generation prompt is not where the answer starts, and,
    with ``every_turn``, one that renders an earlier answer differently once later turns follow (Qwen3
    drops its reasoning), which leaves that answer no span: ``train.loss_turns=last`` trains such models.
    """
    check_chat(tok)
    msgs = messages(system, history, instruction) + [{"role": "assistant", "content": response}]
    full = render(tok, msgs, generation_prompt=False)
    opening = _turn_opening(tok)
    first = 1 if system else 0
    last = len(history)
    pairs, done = [], 0
    for j in range(last + 1) if every_turn else [last]:
        prompt = render(tok, msgs[:first + 2 * j + 1], generation_prompt=True)
        if full[:len(prompt)] != prompt:
            raise ConfigError("the tokenizer's chat template does not render the generation prompt as a "
                              "prefix of the full conversation; use a text template for this model")
        rendered = full if j == last else render(tok, msgs[:first + 2 * j + 2], generation_prompt=False)
        end = _turn_end(rendered, len(prompt), prompt, opening)
        if end <= len(prompt) or full[:end] != rendered[:end]:
            raise ConfigError("the tokenizer's chat template renders an earlier assistant turn differently once "
                              "later turns follow (e.g. it drops their reasoning); set train.loss_turns=last")
        pairs.append((full[done:len(prompt)], full[len(prompt):end]))
        done = end
    return pairs
