"""Templates token by token, on the tiny byte-level tokenizer (1 token per byte, so ids are checkable).
The authors' encoding on the real tokenizers is in ``test_authors_tokens.py``."""

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
        "answers the question.\n<</SYS>>\n\n[INST] What is 2+3? [/INST]")  # no trailing space (the authors')
    assert "formatted as: The answer is {answer}." in prompt_text("math_infer", Q)


def test_unknown_template_and_missing_reference():
    with pytest.raises(ConfigError, match="unknown template 'gsm9k'"):
        prompt_text("gsm9k", Q)
    with pytest.raises(ConfigError, match="needs the reference"):
        prompt_text("using", Q)


@pytest.mark.parametrize("layout", ["paper", "paper_llama3", "joined"])
@pytest.mark.parametrize("template", ["alpaca", "math", "math_infer"])
def test_training_labels_mask_the_prompt_and_end_with_eos(tiny_tok, template, layout):
    """On a byte-level tokenizer without BOS the layouts differ only where the authors' later layout runs
    the alpaca system sentence straight into the instruction."""
    ids, labels, cut = encode_example(tiny_tok, template, Q, "5", layout=layout)
    assert not cut
    text = prompt_text(template, Q)
    if (template, layout) == ("alpaca", "paper_llama3"):
        text = text.replace("request.\n\n### Instruction", "request.### Instruction")
    prompt = tiny_tok(text, add_special_tokens=False)["input_ids"]
    answer = tiny_tok("5", add_special_tokens=False)["input_ids"]
    assert ids == prompt + answer + [tiny_tok.eos_token_id]
    assert labels == [-100] * len(prompt) + answer + [tiny_tok.eos_token_id]
    assert len(ids) == len(text.encode()) + 2  # one token per byte, plus EOS


def test_math_distill_prompt_ends_with_forced_prefix(tiny_tok):
    ids = encode_prompt(tiny_tok, "math_distill", Q, reference=REF)
    assert tiny_tok.decode(ids).endswith("[/INST] " + MATH_FORCED_PREFIX)


def test_bos_is_prepended_only_when_the_tokenizer_adds_one(tiny_tok):
    from tokenizers import processors

    from sdft.models.builtin import build_tiny_tokenizer

    tok = build_tiny_tokenizer()
    bos = tok.bos_token_id
    tok._tokenizer.post_processor = processors.TemplateProcessing(single="<|bos|> $A", special_tokens=[("<|bos|>", bos)])
    ids, labels, _ = encode_example(tok, "alpaca", Q, "5")
    assert ids[0] == bos and ids[1:] == encode_example(tiny_tok, "alpaca", Q, "5")[0]
    assert labels[0] == -100
    assert encode_example(tiny_tok, "alpaca", Q, "5")[0][0] != bos
    # The authors' later layout puts no BOS in an alpaca prompt, and one after the math system block.
    assert bos not in encode_example(tok, "alpaca", Q, "5", layout="paper_llama3")[0]
    math = encode_example(tok, "math", Q, "5", layout="paper_llama3")[0]
    assert tok.decode(math[:math.index(bos)]).endswith("<</SYS>>\n\n") and tok.decode(math).count(tok.bos_token) == 1


def test_chat_route_uses_the_tokenizers_template(tiny_tok):
    ids, labels, _ = encode_example(tiny_tok, "chat", Q, "Five.", system="Be brief.")
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
    ids, labels, _ = encode_example(tiny_tok, "chat", Q, "Five.", system="Be brief.", history=HISTORY,
                                    train_history=train_history)
    assert tiny_tok.decode(ids) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi.<|im_end|>\n<|im_start|>assistant\n"
        "Hello!<|im_end|>\n<|im_start|>user\nWhat is 1+1?<|im_end|>\n<|im_start|>assistant\nTwo.<|im_end|>\n"
        "<|im_start|>user\nWhat is 2+3?<|im_end|>\n<|im_start|>assistant\nFive.<|im_end|>\n")
    earlier = ["Hello!<|im_end|>\n", "Two.<|im_end|>\n"] if train_history else []
    assert trained_spans(tiny_tok, ids, labels) == earlier + ["Five.<|im_end|>\n"]
    prompt = encode_prompt(tiny_tok, "chat", Q, system="Be brief.", history=HISTORY)
    assert ids[:len(prompt)] == prompt  # what is trained last is what generation continues with


@pytest.mark.parametrize("layout", ["paper", "joined"])
@pytest.mark.parametrize("template", ["alpaca", "math"])
def test_text_template_conversation_repeats_the_turn_block(tiny_tok, template, layout):
    """Each answer + EOS, then the next turn: after the separator (the authors': "\\n\\n" for alpaca,
    nothing for math, then BOS, which this tokenizer has none of; joined: always "\\n\\n")."""
    from sdft.templates import TEXT_TEMPLATES

    ids, labels, _ = encode_example(tiny_tok, template, Q, "5", history=HISTORY, train_history=True, layout=layout)
    eos, turn = tiny_tok.eos_token, TEXT_TEMPLATES[template].turn
    sep = "\n\n" if template == "alpaca" or layout == "joined" else ""
    assert tiny_tok.decode(ids) == (prompt_text(template, "Hi.") + "Hello!" + eos + sep
                                    + turn.format(instruction="What is 1+1?") + "Two." + eos + sep
                                    + turn.format(instruction=Q) + "5" + eos)
    assert trained_spans(tiny_tok, ids, labels) == ["Hello!" + eos, "Two." + eos, "5" + eos]
    # The prompt of a conversation is its training sequence up to the last answer.
    prompt = encode_prompt(tiny_tok, template, Q, history=HISTORY, layout=layout)
    assert ids[:len(prompt)] == prompt and len(ids) == len(prompt) + len("5") + 1


def test_distill_prompt_of_a_conversation(tiny_tok):
    """The authors render every earlier turn with the distillation template, its own answer shown as the
    reference; the joined layout shows the last turn's reference only."""
    paper = tiny_tok.decode(encode_prompt(tiny_tok, "using", Q, reference=REF, history=HISTORY))
    assert paper.count("### Reference Answer:") == 3 and paper.count("### Instruction:") == 3
    assert "### Instruction:\nHi.\n\n### Reference Answer:\nHello!\n\n### Response:\nHello!" in paper
    joined = tiny_tok.decode(encode_prompt(tiny_tok, "using", Q, reference=REF, history=HISTORY, layout="joined"))
    assert joined.count("### Reference Answer:") == 1 and joined.count("### Instruction:") == 3
    assert joined.index("Hello!") < joined.index("### Reference Answer:\n" + REF)
    chat = tiny_tok.decode(encode_prompt(tiny_tok, "chat", Q, reference=REF, history=HISTORY))
    assert chat.startswith("<|im_start|>user\nHi.<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n")
    assert chat.count("### Reference Answer:") == 1


def test_paper_layout_strips_the_instruction_and_reference_only(tiny_tok):
    spaced = encode_example(tiny_tok, "alpaca", "  " + Q + "\n", " 5", layout="paper")[0]
    assert tiny_tok.decode(spaced).endswith("### Instruction:\n" + Q + "\n\n### Response:\n 5" + tiny_tok.eos_token)
    kept = encode_example(tiny_tok, "alpaca", "  " + Q, "5", layout="paper_llama3")[0]
    assert "### Instruction:\n  " + Q in tiny_tok.decode(kept)


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
    ids, labels, _ = encode_example(lossy, "chat", Q, "5", history=HISTORY, train_history=False)
    assert trained_spans(lossy, ids, labels) == ["5<|im_end|>\n"]
