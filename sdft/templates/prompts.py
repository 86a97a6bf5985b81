"""Prompt templates: the paper's distillation templates, the task templates, and the chat route.

Layouts follow the paper's ``reproduce`` branch (the one its numbers come from): the system sentence,
a blank line, then ``### Instruction:`` blocks for the alpaca family; ``<<SYS>>`` ... ``[INST]`` for
the math family. Prompt and response are tokenized separately (as LLaMA-Factory does), so the
boundary between masked prompt tokens and trained response tokens is exact. The tokenizer's own
BOS convention is kept: a BOS id is prepended only when the tokenizer adds one to plain text.

The ``chat`` template instead renders through the tokenizer's own chat template (a user turn with
the instruction, plus the reference answer when distilling), for modern chat models.

A multi-turn conversation comes as ``history`` (its earlier ``[user, assistant]`` turns) before the
last turn: the chat route puts them in the message list; a text template renders each earlier turn
with its turn block, the answer and EOS (the reference, when distilling, is shown for the last turn
only). Training can put the loss on every assistant turn or on the last.
"""

from __future__ import annotations

from dataclasses import dataclass

from sdft.errors import ConfigError, DataError

USING_SYSTEM = ("Below are an instruction that describes a task along with a reference answer. "
                "Using the reference answer as a guide, write your own response.")
REFER_SYSTEM = ("Below are an instruction that describes a task along with a reference answer. "
                "Refer to the reference answer and write your own response.")
ALPACA_SYSTEM = ("Below is an instruction that describes a task. "
                 "Write a response that appropriately completes the request.")
MATH_DISTILL_SYSTEM = ("You are an expert in math. Below are a math question and its reference answer. "
                       "Refer to the reference answer and write a response that appropriately answers the question.")
MATH_SYSTEM = ("You are an expert in math. Below is a math question. "
               "Write a response that appropriately answers the question.")
MATH_INFER_SYSTEM = (MATH_SYSTEM + " Your final answer should be an integer at the end of your response, "
                     "formatted as: The answer is {answer}.")
MATH_FORCED_PREFIX = "Great! Let's think step by step. "

_SYSTEM_HEAD = "{system}\n\n"
_MATH_HEAD = "<<SYS>>\n{system}\n<</SYS>>\n\n"
_ALPACA_TURN = "### Instruction:\n{instruction}\n\n### Response:\n"
_DISTILL_TURN = "### Instruction:\n{instruction}\n\n### Reference Answer:\n{reference}\n\n### Response:\n"
_MATH_TURN = "[INST] {instruction} [/INST] "
_MATH_DISTILL_TURN = "[INST] {instruction}\n\n{reference} [/INST] " + MATH_FORCED_PREFIX
# Between the EOS that ends an earlier answer and the next turn of a multi-turn conversation.
TURN_SEP = "\n\n"
# The chat route's distillation request, put in the user turn.
CHAT_DISTILL_USER = USING_SYSTEM + "\n\n### Instruction:\n{instruction}\n\n### Reference Answer:\n{reference}"


@dataclass(frozen=True)
class TextTemplate:
    """A paper template: ``head`` (the system block, once) then one ``turn`` per user turn. Earlier turns
    of a multi-turn conversation are rendered with ``history_turn`` (no reference shown), each followed
    by its answer, EOS and ``TURN_SEP`` (LLaMA-Factory's layout of a conversation in these templates)."""

    name: str
    head: str
    turn: str
    system: str
    uses_reference: bool
    history_turn: str = ""

    @property
    def body(self) -> str:
        return self.head + self.turn


TEXT_TEMPLATES = {
    # Distillation (show the reference answer).
    "using": TextTemplate("using", _SYSTEM_HEAD, _DISTILL_TURN, USING_SYSTEM, True, _ALPACA_TURN),
    "refer": TextTemplate("refer", _SYSTEM_HEAD, _DISTILL_TURN, REFER_SYSTEM, True, _ALPACA_TURN),
    "math_distill": TextTemplate("math_distill", _MATH_HEAD, _MATH_DISTILL_TURN, MATH_DISTILL_SYSTEM, True, _MATH_TURN),
    # Task templates (training and evaluation).
    "alpaca": TextTemplate("alpaca", _SYSTEM_HEAD, _ALPACA_TURN, ALPACA_SYSTEM, False, _ALPACA_TURN),
    "math": TextTemplate("math", _MATH_HEAD, _MATH_TURN, MATH_SYSTEM, False, _MATH_TURN),
    "math_infer": TextTemplate("math_infer", _MATH_HEAD, _MATH_TURN, MATH_INFER_SYSTEM, False, _MATH_TURN),
}
# distill.template names -> template; "math" means the paper's gsm8k_distill when distilling.
DISTILL_TEMPLATE_NAMES = {"using": "using", "refer": "refer", "math": "math_distill", "chat": "chat"}
# train.template / eval.template names (text templates without the reference, and the chat route).
TASK_TEMPLATE_NAMES = ("alpaca", "math", "math_infer", "chat")

def _bos_prefix(tok) -> list[int]:
    """The ids the tokenizer itself puts before plain text (e.g. Llama's <s>), else []."""
    with_special = tok("a", add_special_tokens=True)["input_ids"]
    plain = tok("a", add_special_tokens=False)["input_ids"]
    n = len(with_special) - len(plain)
    return with_special[:n] if n > 0 and with_special[n:] == plain else []


def _encode(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def encode_plain(tok, text: str) -> list[int]:
    """``text`` as a raw completion prompt (no template), with BOS if the tokenizer adds one."""
    return _bos_prefix(tok) + _encode(tok, text)


def _chat_messages(system: str, history, user_text: str) -> list[dict]:
    msgs = [{"role": "system", "content": system}] if system else []
    for user, answer in history:
        msgs += [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
    msgs.append({"role": "user", "content": user_text})
    return msgs


def _check_chat(tok) -> None:
    if not getattr(tok, "chat_template", None):
        raise ConfigError("template 'chat' needs a tokenizer with a chat template; this tokenizer has "
                            "none: use a text template (alpaca, math, using, refer)")


def _render(tok, msgs: list[dict], generation_prompt: bool) -> list[int]:
    """Token ids of ``msgs`` through the tokenizer's chat template; a conversation the template refuses
    (a role it does not know, turns it wants alternating) is a ``DataError`` with the template's reason."""
    from jinja2.exceptions import TemplateError

    try:
        text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=generation_prompt)
    except TemplateError as e:
        raise DataError(f"the tokenizer's chat template rejects this conversation: {e}") from None
    return _encode(tok, text)


def _template(template: str, reference: str | None) -> TextTemplate:
    t = TEXT_TEMPLATES.get(template)
    if t is None:
        raise ConfigError(f"unknown template {template!r}; choose one of {sorted(TEXT_TEMPLATES) + ['chat']}")
    if t.uses_reference and reference is None:
        raise ConfigError(f"template {template!r} needs the reference answer")
    return t


def prompt_text(template: str, instruction: str, reference: str | None = None) -> str:
    """The prompt string of a text template for a single turn (no BOS)."""
    t = _template(template, reference)
    return t.body.format(system=t.system, instruction=instruction, reference=reference or "")


def _encode_text(tok, template: str, instruction: str, reference: str | None, history) -> tuple[list[int], list[tuple[int, int]]]:
    """A text template's prompt ids for the last turn after ``history``, and the [start, end) span of each
    earlier answer (its text and EOS) in them."""
    t = _template(template, reference)
    head = t.head.format(system=t.system)
    ids, spans = list(_bos_prefix(tok)), []
    for j, (user, answer) in enumerate(history):
        ids += _encode(tok, (head if j == 0 else TURN_SEP) + t.history_turn.format(instruction=user))
        start = len(ids)
        ids += _encode(tok, answer) + [tok.eos_token_id]
        spans.append((start, len(ids)))
    ids += _encode(tok, (TURN_SEP if history else head) + t.turn.format(instruction=instruction, reference=reference or ""))
    return ids, spans


def encode_prompt(tok, template: str, instruction: str, reference: str | None = None,
                  system: str = "", history=()) -> list[int]:
    """Token ids of the prompt the model continues from (generation, or the masked part in training).

    ``template`` is a text template name or ``"chat"``; ``reference`` is given for distillation (the
    reference of the last turn). ``history``: the earlier ``[user, assistant]`` turns of a multi-turn
    conversation, rendered before the last one. ``system`` is used only by the chat route (text
    templates carry the paper's fixed system).
    """
    if template == "chat":
        _check_chat(tok)
        user = CHAT_DISTILL_USER.format(instruction=instruction, reference=reference) if reference is not None else instruction
        return _render(tok, _chat_messages(system, history, user), generation_prompt=True)
    return _encode_text(tok, template, instruction, reference, history)[0]


def encode_example(tok, template: str, instruction: str, response: str, system: str = "", history=(),
                   train_history: bool = False) -> tuple[list[int], list[int]]:
    """(input_ids, labels) for supervised training; labels are -100 on every token not trained on.

    Trained: the last answer, and with ``train_history`` every earlier answer of ``history`` too; never
    a system or user turn. Text templates: each answer's ids + EOS. Chat: the tokenizer's rendering of
    the whole conversation; an answer's trained part is whatever the template appends after the
    generation prompt of its turn (the answer and the template's own end-of-turn tokens).
    """
    if template != "chat":
        prompt, spans = _encode_text(tok, template, instruction, None, history)
        answer = _encode(tok, response) + [tok.eos_token_id]
        labels = [-100] * len(prompt) + answer
        for start, end in spans if train_history else ():
            labels[start:end] = prompt[start:end]
        return prompt + answer, labels
    prompt = encode_prompt(tok, template, instruction, system=system, history=history)
    msgs = _chat_messages(system, history, instruction) + [{"role": "assistant", "content": response}]
    full = _render(tok, msgs, generation_prompt=False)
    if full[:len(prompt)] != prompt:
        raise ConfigError("the tokenizer's chat template does not render the generation prompt as a "
                            "prefix of the full conversation; use a text template for this model")
    labels = [-100] * len(prompt) + full[len(prompt):]
    first = 1 if system else 0
    for j in range(len(history) if train_history else 0):
        before = _render(tok, msgs[:first + 2 * j + 1], generation_prompt=True)
        end = _render(tok, msgs[:first + 2 * j + 2], generation_prompt=False)
        start = len(before)
        if full[:start] != before or full[:len(end)] != end or start > len(end):
            raise ConfigError("the tokenizer's chat template renders an earlier assistant turn differently once "
                              "later turns follow (e.g. it drops their reasoning); set train.loss_turns=last")
        labels[start:len(end)] = full[start:len(end)]
    return full, labels
