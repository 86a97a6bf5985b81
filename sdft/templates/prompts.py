"""Prompt templates: the paper's distillation templates, the task templates, and the chat route.

Layouts follow the paper's ``reproduce`` branch (the one its numbers come from): the system sentence,
a blank line, then ``### Instruction:`` blocks for the alpaca family; ``<<SYS>>`` ... ``[INST]`` for
the math family. Prompt and response are tokenized separately (as LLaMA-Factory does), so the
boundary between masked prompt tokens and trained response tokens is exact. The tokenizer's own
BOS convention is kept: a BOS id is prepended only when the tokenizer adds one to plain text.

The ``chat`` template instead renders through the tokenizer's own chat template (a user turn with
the instruction, plus the reference answer when distilling), for modern chat models.
"""

from __future__ import annotations

from dataclasses import dataclass

from sdft.errors import ConfigError

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

_ALPACA_BODY = "{system}\n\n### Instruction:\n{instruction}\n\n### Response:\n"
_DISTILL_BODY = "{system}\n\n### Instruction:\n{instruction}\n\n### Reference Answer:\n{reference}\n\n### Response:\n"
_MATH_BODY = "<<SYS>>\n{system}\n<</SYS>>\n\n[INST] {instruction} [/INST] "
_MATH_DISTILL_BODY = "<<SYS>>\n{system}\n<</SYS>>\n\n[INST] {instruction}\n\n{reference} [/INST] " + MATH_FORCED_PREFIX
# The chat route's distillation request, put in the user turn.
CHAT_DISTILL_USER = USING_SYSTEM + "\n\n### Instruction:\n{instruction}\n\n### Reference Answer:\n{reference}"


@dataclass(frozen=True)
class TextTemplate:
    name: str
    body: str
    system: str
    uses_reference: bool


TEXT_TEMPLATES = {
    # Distillation (show the reference answer).
    "using": TextTemplate("using", _DISTILL_BODY, USING_SYSTEM, True),
    "refer": TextTemplate("refer", _DISTILL_BODY, REFER_SYSTEM, True),
    "math_distill": TextTemplate("math_distill", _MATH_DISTILL_BODY, MATH_DISTILL_SYSTEM, True),
    # Task templates (training and evaluation).
    "alpaca": TextTemplate("alpaca", _ALPACA_BODY, ALPACA_SYSTEM, False),
    "math": TextTemplate("math", _MATH_BODY, MATH_SYSTEM, False),
    "math_infer": TextTemplate("math_infer", _MATH_BODY, MATH_INFER_SYSTEM, False),
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


def _chat_messages(instruction: str, system: str, user_text: str | None = None) -> list[dict]:
    msgs = [{"role": "system", "content": system}] if system else []
    msgs.append({"role": "user", "content": user_text if user_text is not None else instruction})
    return msgs


def _check_chat(tok) -> None:
    if not getattr(tok, "chat_template", None):
        raise ConfigError("template 'chat' needs a tokenizer with a chat template; this tokenizer has "
                            "none: use a text template (alpaca, math, using, refer)")


def prompt_text(template: str, instruction: str, reference: str | None = None) -> str:
    """The prompt string of a text template (no BOS)."""
    t = TEXT_TEMPLATES.get(template)
    if t is None:
        raise ConfigError(f"unknown template {template!r}; choose one of {sorted(TEXT_TEMPLATES) + ['chat']}")
    if t.uses_reference and reference is None:
        raise ConfigError(f"template {template!r} needs the reference answer")
    return t.body.format(system=t.system, instruction=instruction, reference=reference or "")


def encode_prompt(tok, template: str, instruction: str, reference: str | None = None,
                  system: str = "") -> list[int]:
    """Token ids of the prompt the model continues from (generation, or the masked part in training).

    ``template`` is a text template name or ``"chat"``; ``reference`` is given for distillation.
    ``system`` is used only by the chat route (text templates carry the paper's fixed system).
    """
    if template == "chat":
        _check_chat(tok)
        user = CHAT_DISTILL_USER.format(instruction=instruction, reference=reference) if reference is not None else None
        text = tok.apply_chat_template(_chat_messages(instruction, system, user), tokenize=False,
                                       add_generation_prompt=True)
        return _encode(tok, text)
    return encode_plain(tok, prompt_text(template, instruction, reference))


def encode_example(tok, template: str, instruction: str, response: str, system: str = "") -> tuple[list[int], list[int]]:
    """(input_ids, labels) for supervised training; labels are -100 on every prompt token.

    Text templates: prompt ids + response ids + EOS. Chat: the tokenizer's rendering of the whole
    conversation; the trained part is whatever it appends after the generation prompt
    (the response and the template's own end-of-turn tokens).
    """
    prompt = encode_prompt(tok, template, instruction, system=system)
    if template == "chat":
        msgs = _chat_messages(instruction, system) + [{"role": "assistant", "content": response}]
        full = _encode(tok, tok.apply_chat_template(msgs, tokenize=False))
        if full[:len(prompt)] != prompt:
            raise ConfigError("the tokenizer's chat template does not render the generation prompt as a "
                                "prefix of the full conversation; use a text template for this model")
        answer = full[len(prompt):]
    else:
        answer = _encode(tok, response) + [tok.eos_token_id]
    return prompt + answer, [-100] * len(prompt) + answer
