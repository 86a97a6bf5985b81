"""Prompt templates: the paper's distillation and task templates, the chat route, and how each becomes
token ids.

A text template (``alpaca``, ``math``, ``math_infer``; ``using``, ``refer``, ``math_distill`` show the
reference answer) has a system block, a separator and a turn. ``prompt.layout`` says how they become ids:

- ``paper``: as the authors' code that produced the paper's Llama-2 numbers (sail-sg/sdft, branch
  ``reproduce``, ``Template._encode``). Every piece is encoded on its own, so a SentencePiece tokenizer
  puts a ``▁`` at the start of each: first turn ``BOS + system block + separator + turn``, a later turn
  ``separator + BOS + turn``; the instruction and the reference are stripped; an answer is its own
  text + EOS. In a conversation every earlier turn is rendered with the same turn text (a distillation
  template shows each earlier turn its own answer as the reference).
- ``paper_llama3``: as the authors' later LLaMA-Factory that ran their Llama-3 experiments: the system
  block runs straight into the turn (no separator, no BOS for the alpaca family; the math family puts
  BOS between them), later turns open with the separator, nothing is stripped.
- ``joined``: the system block, separator and turn encoded as one string, BOS as the tokenizer adds it
  to plain text; earlier turns of a conversation without their reference (sdft 0.1's encoding).

The ``chat`` template renders through the tokenizer's own chat template instead (``templates.chat``).

An example is a list of ``(prompt part, answer part)`` pairs, one per assistant turn (``encode_turns``);
training concatenates them, with the loss on the answer parts (``encode_example``), and cuts an
over-long one with the layout's rule (``templates.truncation``).
"""

from __future__ import annotations

from dataclasses import dataclass

from sdft.errors import ConfigError
from sdft.templates.chat import chat_prompt, chat_turns
from sdft.templates.truncation import Pair, fit_pairs, fit_prompt

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

_ALPACA_BLOCK = "{system}"
_MATH_BLOCK = "<<SYS>>\n{system}\n<</SYS>>\n\n"
_ALPACA_TURN = "### Instruction:\n{instruction}\n\n### Response:\n"
_DISTILL_TURN = "### Instruction:\n{instruction}\n\n### Reference Answer:\n{reference}\n\n### Response:\n"
_MATH_TURN = "[INST] {instruction} [/INST]"
# The authors' gsm8k_distill turn ends with the forced prefix and its trailing space.
_MATH_DISTILL_TURN = "[INST] {instruction}\n\n{reference} [/INST] " + MATH_FORCED_PREFIX
# joined layout: between the EOS that ends an earlier answer and the next turn.
TURN_SEP = "\n\n"
# The chat route's distillation request, put in the user turn.
CHAT_DISTILL_USER = USING_SYSTEM + "\n\n### Instruction:\n{instruction}\n\n### Reference Answer:\n{reference}"

LAYOUTS = ("paper", "paper_llama3", "joined")


@dataclass(frozen=True)
class TextTemplate:
    """A paper template: ``block`` (the system block, once), ``sep`` and one ``turn`` per user turn."""

    name: str
    system: str
    block: str
    sep: str
    turn: str
    uses_reference: bool
    history_turn: str
    """``joined`` layout: an earlier turn of a conversation (no reference shown)."""
    bos_after_block: bool = False
    """``paper_llama3`` layout: BOS between the system block and each turn (the authors' math templates)."""
    bos_first: bool = False
    """``paper_llama3`` layout: BOS before the system block (the authors' Llama-3 templates)."""
    llama3_sep: str = ""
    """``paper_llama3`` layout: what opens a later turn."""


def _alpaca(name: str, system: str, turn: str, uses_reference: bool) -> TextTemplate:
    return TextTemplate(name, system, _ALPACA_BLOCK, "\n\n", turn, uses_reference, _ALPACA_TURN, llama3_sep="\n\n")


def _math(name: str, system: str, turn: str, uses_reference: bool) -> TextTemplate:
    return TextTemplate(name, system, _MATH_BLOCK, "", turn, uses_reference, _MATH_TURN, bos_after_block=True)


# The authors' llama3_gsm8k_infer (their Llama-3 scripts' math evaluation): Llama-3's own headers.
_LLAMA3_BLOCK = "<|start_header_id|>system<|end_header_id|>\n\n{system}<|eot_id|>"
_LLAMA3_TURN = ("<|start_header_id|>user<|end_header_id|>\n\n{instruction}<|eot_id|>"
                "<|start_header_id|>assistant<|end_header_id|>\n\n")

TEXT_TEMPLATES = {
    # Distillation (show the reference answer).
    "using": _alpaca("using", USING_SYSTEM, _DISTILL_TURN, True),
    "refer": _alpaca("refer", REFER_SYSTEM, _DISTILL_TURN, True),
    "math_distill": _math("math_distill", MATH_DISTILL_SYSTEM, _MATH_DISTILL_TURN, True),
    # Task templates (training and evaluation).
    "alpaca": _alpaca("alpaca", ALPACA_SYSTEM, _ALPACA_TURN, False),
    "math": _math("math", MATH_SYSTEM, _MATH_TURN, False),
    "math_infer": _math("math_infer", MATH_INFER_SYSTEM, _MATH_TURN, False),
    "llama3_math_infer": TextTemplate("llama3_math_infer", MATH_INFER_SYSTEM, _LLAMA3_BLOCK, "", _LLAMA3_TURN, False,
                                      _LLAMA3_TURN, bos_first=True),
}
# distill.template names -> template; "math" means the paper's gsm8k_distill when distilling.
DISTILL_TEMPLATE_NAMES = {"using": "using", "refer": "refer", "math": "math_distill", "chat": "chat"}
# train.template / eval.template names (text templates without the reference, and the chat route).
TASK_TEMPLATE_NAMES = ("alpaca", "math", "math_infer", "chat")
# A benchmark's prompt template (``eval.benchmark_defs``).
BENCHMARK_TEMPLATES = (*TASK_TEMPLATE_NAMES, "llama3_math_infer")


def truncation_rule(layout: str) -> str:
    """The cut an over-long example gets under ``layout`` (``templates.truncation``)."""
    return "budget" if layout == "paper_llama3" else "proportional"


def _bos_prefix(tok) -> list[int]:
    """The ids the tokenizer itself puts before plain text (e.g. Llama's <s>), else []."""
    with_special = tok("a", add_special_tokens=True)["input_ids"]
    plain = tok("a", add_special_tokens=False)["input_ids"]
    n = len(with_special) - len(plain)
    return with_special[:n] if n > 0 and with_special[n:] == plain else []


def _encode(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"] if text else []


def encode_plain(tok, text: str) -> list[int]:
    """``text`` as a raw completion prompt (no template), with BOS if the tokenizer adds one."""
    return _bos_prefix(tok) + _encode(tok, text)


def _template(template: str, reference: str | None) -> TextTemplate:
    t = TEXT_TEMPLATES.get(template)
    if t is None:
        raise ConfigError(f"unknown template {template!r}; choose one of {sorted(TEXT_TEMPLATES) + ['chat']}")
    if t.uses_reference and reference is None:
        raise ConfigError(f"template {template!r} needs the reference answer")
    return t


def prompt_text(template: str, instruction: str, reference: str | None = None) -> str:
    """A text template's single-turn prompt as one string (no BOS)."""
    t = _template(template, reference)
    return (t.block + t.sep + t.turn).format(system=t.system, instruction=instruction, reference=reference or "")


def _text_turns(tok, t: TextTemplate, layout: str, turns: list[tuple[str, str | None, str | None]]) -> list[Pair]:
    """``(prompt part, answer part)`` of each ``(instruction, reference, answer)`` turn; the last answer
    may be None (a generation prompt: its answer part is empty)."""
    if layout not in LAYOUTS:
        raise ConfigError(f"prompt.layout: unknown layout {layout!r}; choose one of {list(LAYOUTS)}")
    bos = _bos_prefix(tok)
    eos = [tok.eos_token_id]
    pairs = []
    for k, (instruction, reference, answer) in enumerate(turns):
        if layout == "paper":
            turn = t.turn.format(instruction=instruction.strip(), reference=(reference or "").strip())
            source = (bos + _encode(tok, t.block.format(system=t.system)) + _encode(tok, t.sep) if k == 0
                      else _encode(tok, t.sep) + bos) + _encode(tok, turn)
        elif layout == "paper_llama3":
            turn = t.turn.format(instruction=instruction, reference=reference or "")
            source = ((bos if t.bos_first else []) + _encode(tok, t.block.format(system=t.system)) if k == 0
                      else _encode(tok, t.llama3_sep)) + (bos if t.bos_after_block else []) + _encode(tok, turn)
        else:
            last = k == len(turns) - 1
            turn = (t.turn if last else t.history_turn).format(instruction=instruction, reference=reference or "")
            head = t.block.format(system=t.system) + t.sep if k == 0 else TURN_SEP
            source = (bos if k == 0 else []) + _encode(tok, head + turn)
        pairs.append((source, [] if answer is None else _encode(tok, answer) + eos))
    return pairs


def _turn_list(instruction: str, reference: str | None, answer: str | None, history, shows_reference: bool):
    """The turns of a conversation: each earlier turn's reference is its own answer where the template
    shows one (the authors' rendering of a conversation in a distillation template)."""
    return [*((u, a if shows_reference else None, a) for u, a in history), (instruction, reference, answer)]


def encode_prompt(tok, template: str, instruction: str, reference: str | None = None, system: str = "",
                  history=(), layout: str = "paper", cutoff: int | None = None) -> list[int]:
    """Token ids of the prompt the model continues from (generation).

    ``template`` is a text template name or ``"chat"``; ``reference`` is given for distillation (the
    reference of the last turn). ``history``: the earlier ``[user, assistant]`` turns of a conversation,
    rendered before the last one. ``system`` is used by the chat route only (text templates carry the
    paper's fixed system). ``cutoff``: an over-long prompt is cut to it by the layout's rule.
    """
    return encode_prompt_fit(tok, template, instruction, reference, system, history, layout, cutoff)[0]


def encode_prompt_fit(tok, template: str, instruction: str, reference: str | None = None, system: str = "",
                      history=(), layout: str = "paper", cutoff: int | None = None) -> tuple[list[int], bool]:
    """``encode_prompt`` and whether the cutoff cut it."""
    if template == "chat":
        if reference is not None:
            instruction = CHAT_DISTILL_USER.format(instruction=instruction, reference=reference)
        ids = chat_prompt(tok, instruction, system, history)
        return (ids[:cutoff], True) if cutoff is not None and len(ids) > cutoff else (ids, False)
    t = _template(template, reference)
    turns = _turn_list(instruction, reference, None, history, t.uses_reference)
    pairs = _text_turns(tok, t, layout, turns)
    if cutoff is None:
        return [i for s, a in pairs for i in s + a], False
    target = _encode(tok, reference) + [tok.eos_token_id] if reference is not None else []
    return fit_prompt(pairs[:-1], pairs[-1][0], target, cutoff, truncation_rule(layout))


def encode_turns(tok, template: str, instruction: str, response: str, system: str = "", history=(),
                 layout: str = "paper", every_turn: bool = True) -> list[Pair]:
    """``(prompt part, answer part)`` for each assistant turn of a training example, in order. Text
    templates: an answer part is the answer's ids + EOS. Chat: the tokenizer's rendering, an answer part
    being the answer and the template's own end-of-turn tokens (``templates.chat``); ``every_turn=False``
    gives one pair there, the earlier turns inside its prompt part."""
    if template == "chat":
        return chat_turns(tok, instruction, response, system, history, every_turn)
    t = _template(template, None)
    return _text_turns(tok, t, layout, _turn_list(instruction, None, response, history, False))


def encode_example(tok, template: str, instruction: str, response: str, system: str = "", history=(),
                   train_history: bool = False, layout: str = "paper",
                   cutoff: int | None = None) -> tuple[list[int], list[int], bool]:
    """(input_ids, labels, cut) for supervised training; labels are -100 on every token not trained on.

    Trained: the last answer part, and with ``train_history`` every earlier one too; never a system or
    user turn. ``cutoff``: an over-long example is cut by the layout's rule and kept (``cut`` says so;
    a cut can leave the last answer no tokens, and then, without ``train_history``, nothing is trained).
    """
    pairs = encode_turns(tok, template, instruction, response, system, history, layout, every_turn=train_history)
    n, cut = len(pairs), False
    if cutoff is not None:
        pairs, cut = fit_pairs(pairs, cutoff, truncation_rule(layout) if template != "chat" else "proportional")
    ids, labels = [], []
    for k, (source, target) in enumerate(pairs):  # a cut keeps a prefix of the pairs: k is the turn's index
        trained = train_history or k == n - 1
        ids += source + target
        labels += [-100] * len(source) + (target if trained else [-100] * len(target))
    return ids, labels, cut
