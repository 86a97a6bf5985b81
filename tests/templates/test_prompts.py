"""Templates token by token, on the tiny byte-level tokenizer (1 token per byte, so ids are checkable)."""

import pytest

from sdft.errors import ConfigError
from sdft.templates import encode_example, encode_prompt, prompt_text
from sdft.templates.prompts import MATH_FORCED_PREFIX

Q, REF = "What is 2+3?", "2 + 3 = 5.\nThe answer is 5."


def test_paper_template_strings_verbatim():
    assert prompt_text("using", Q, REF) == (
        "Below are an instruction that describes a task along with a reference answer. Using the reference "
        "answer as a guide, write your own response.\n\n### Instruction:\nWhat is 2+3?\n\n### Reference Answer:\n"
        "2 + 3 = 5.\nThe answer is 5.\n\n### Response:\n")
    assert prompt_text("refer", Q, REF).startswith(
        "Below are an instruction that describes a task along with a reference answer. Refer to the reference "
        "answer and write your own response.\n\n### Instruction:\n")
    assert prompt_text("math_distill", Q, REF) == (
        "<<SYS>>\nYou are an expert in math. Below are a math question and its reference answer. Refer to the "
        "reference answer and write a response that appropriately answers the question.\n<</SYS>>\n\n"
        "[INST] What is 2+3?\n\n2 + 3 = 5.\nThe answer is 5. [/INST] Great! Let's think step by step. ")
    assert prompt_text("alpaca", Q) == (
        "Below is an instruction that describes a task. Write a response that appropriately completes the "
        "request.\n\n### Instruction:\nWhat is 2+3?\n\n### Response:\n")
    assert prompt_text("math", Q) == (
        "<<SYS>>\nYou are an expert in math. Below is a math question. Write a response that appropriately "
        "answers the question.\n<</SYS>>\n\n[INST] What is 2+3? [/INST] ")
    assert "formatted as: The answer is {answer}." in prompt_text("math_infer", Q)


def test_unknown_template_and_missing_reference():
    with pytest.raises(ConfigError, match="unknown template 'gsm9k'"):
        prompt_text("gsm9k", Q)
    with pytest.raises(ConfigError, match="needs the reference"):
        prompt_text("using", Q)


@pytest.mark.parametrize("template", ["alpaca", "math", "math_infer"])
def test_training_labels_mask_the_prompt_and_end_with_eos(tiny_tok, template):
    ids, labels = encode_example(tiny_tok, template, Q, "5")
    prompt = tiny_tok(prompt_text(template, Q), add_special_tokens=False)["input_ids"]
    answer = tiny_tok("5", add_special_tokens=False)["input_ids"]
    # The byte tokenizer adds no BOS, so the ids are exactly prompt + answer + EOS.
    assert ids == prompt + answer + [tiny_tok.eos_token_id]
    assert labels == [-100] * len(prompt) + answer + [tiny_tok.eos_token_id]
    assert len(ids) == len(prompt_text(template, Q).encode()) + 2  # one token per byte, plus EOS


def test_math_distill_prompt_ends_with_forced_prefix(tiny_tok):
    ids = encode_prompt(tiny_tok, "math_distill", Q, reference=REF)
    assert tiny_tok.decode(ids).endswith("[/INST] " + MATH_FORCED_PREFIX)


def test_bos_is_prepended_only_when_the_tokenizer_adds_one(tiny_tok):
    from tokenizers import processors

    from sdft.models.builtin import build_tiny_tokenizer

    tok = build_tiny_tokenizer()
    bos = tok.bos_token_id
    tok._tokenizer.post_processor = processors.TemplateProcessing(single="<|bos|> $A", special_tokens=[("<|bos|>", bos)])
    ids, labels = encode_example(tok, "alpaca", Q, "5")
    assert ids[0] == bos and ids[1:] == encode_example(tiny_tok, "alpaca", Q, "5")[0]
    assert labels[0] == -100
    assert encode_example(tiny_tok, "alpaca", Q, "5")[0][0] != bos


def test_chat_route_uses_the_tokenizers_template(tiny_tok):
    ids, labels = encode_example(tiny_tok, "chat", Q, "Five.", system="Be brief.")
    text = tiny_tok.decode(ids)
    assert text == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is 2+3?<|im_end|>\n"
                    "<|im_start|>assistant\nFive.<|im_end|>\n")
    trained = [t for t, lab in zip(ids, labels) if lab != -100]
    assert tiny_tok.decode(trained) == "Five.<|im_end|>\n"
    # The prompt is the generation prompt, so what is trained is exactly what generation continues with.
    prompt = encode_prompt(tiny_tok, "chat", Q, system="Be brief.")
    assert ids[:len(prompt)] == prompt and labels[:len(prompt)] == [-100] * len(prompt)


def test_chat_distill_puts_reference_in_the_user_turn(tiny_tok):
    text = tiny_tok.decode(encode_prompt(tiny_tok, "chat", Q, reference=REF))
    assert text.startswith("<|im_start|>user\nBelow are an instruction")
    assert "### Reference Answer:\n" + REF + "<|im_end|>\n<|im_start|>assistant\n" in text


def test_chat_template_required(tiny_tok):
    from sdft.models.builtin import build_tiny_tokenizer

    tok = build_tiny_tokenizer()
    tok.chat_template = None
    with pytest.raises(ConfigError, match="needs a tokenizer with a chat template"):
        encode_prompt(tok, "chat", Q)
