"""Templates token by token, on the tiny byte-level tokenizer (1 token per byte, so ids are checkable)."""

import pytest

from sdft.errors import ConfigError
from sdft.templates import encode_example, encode_prompt, prompt_text
from sdft.templates.prompts import MATH_FORCED_PREFIX
from tests.conftest import trained_spans

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


HISTORY = [["Hi.", "Hello!"], ["What is 1+1?", "Two."]]


@pytest.mark.parametrize("train_history", [True, False])
def test_chat_conversation_trains_on_assistant_turns_only(tiny_tok, train_history):
    ids, labels = encode_example(tiny_tok, "chat", Q, "Five.", system="Be brief.", history=HISTORY,
                                 train_history=train_history)
    assert tiny_tok.decode(ids) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi.<|im_end|>\n<|im_start|>assistant\n"
        "Hello!<|im_end|>\n<|im_start|>user\nWhat is 1+1?<|im_end|>\n<|im_start|>assistant\nTwo.<|im_end|>\n"
        "<|im_start|>user\nWhat is 2+3?<|im_end|>\n<|im_start|>assistant\nFive.<|im_end|>\n")
    earlier = ["Hello!<|im_end|>\n", "Two.<|im_end|>\n"] if train_history else []
    assert trained_spans(tiny_tok, ids, labels) == earlier + ["Five.<|im_end|>\n"]
    prompt = encode_prompt(tiny_tok, "chat", Q, system="Be brief.", history=HISTORY)
    assert ids[:len(prompt)] == prompt  # what is trained last is what generation continues with


@pytest.mark.parametrize("template", ["alpaca", "math"])
def test_text_template_conversation_repeats_the_turn_block(tiny_tok, template):
    from sdft.templates import TEXT_TEMPLATES

    ids, labels = encode_example(tiny_tok, template, Q, "5", history=HISTORY, train_history=True)
    eos, turn = tiny_tok.eos_token, TEXT_TEMPLATES[template].turn
    assert tiny_tok.decode(ids) == (prompt_text(template, "Hi.") + "Hello!" + eos + "\n\n"
                                    + turn.format(instruction="What is 1+1?") + "Two." + eos + "\n\n"
                                    + turn.format(instruction=Q) + "5" + eos)
    assert trained_spans(tiny_tok, ids, labels) == ["Hello!" + eos, "Two." + eos, "5" + eos]
    # The prompt of a conversation is its training sequence up to the last answer.
    prompt = encode_prompt(tiny_tok, template, Q, history=HISTORY)
    assert ids[:len(prompt)] == prompt and len(ids) == len(prompt) + len("5") + 1


def test_distill_prompt_shows_only_the_last_turns_reference(tiny_tok):
    text = tiny_tok.decode(encode_prompt(tiny_tok, "using", Q, reference=REF, history=HISTORY))
    assert text.count("### Reference Answer:") == 1 and text.count("### Instruction:") == 3
    assert text.index("Hello!") < text.index("### Reference Answer:\n" + REF)
    chat = tiny_tok.decode(encode_prompt(tiny_tok, "chat", Q, reference=REF, history=HISTORY))
    assert chat.startswith("<|im_start|>user\nHi.<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n")
    assert chat.count("### Reference Answer:") == 1


def test_a_template_that_rejects_a_conversation_and_one_that_rewrites_history(tiny_tok):
    from sdft.errors import DataError
    from sdft.models.builtin import build_tiny_tokenizer

    strict = build_tiny_tokenizer()
    strict.chat_template = ("{% for m in messages %}{% if m['role'] == 'system' %}"
                            "{{ raise_exception('System role not supported') }}{% endif %}"
                            "<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                            "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    with pytest.raises(DataError, match="chat template rejects this conversation: System role not supported"):
        encode_example(strict, "chat", Q, "5", system="Be brief.")
    # A template that renders earlier answers differently once later turns follow (as Qwen3 drops their
    # reasoning) cannot train on every turn: refused, while the last turn alone is fine.
    lossy = build_tiny_tokenizer()
    lossy.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['role'] == 'assistant' "
                           "and not loop.last %}...{% else %}{{ m['content'] }}{% endif %}<|im_end|>\n{% endfor %}"
                           "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    with pytest.raises(ConfigError, match="train.loss_turns=last"):
        encode_example(lossy, "chat", Q, "5", history=HISTORY, train_history=True)
    ids, labels = encode_example(lossy, "chat", Q, "5", history=HISTORY, train_history=False)
    assert trained_spans(lossy, ids, labels) == ["5<|im_end|>\n"]
