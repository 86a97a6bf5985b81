"""The chat route on real chat templates: each assistant turn's trained span is its answer and its own
end-of-turn tokens, never the next turn's header that a template appends after the last message."""

import pytest

from sdft.errors import ConfigError
from sdft.templates import encode_example, encode_prompt
from tests.conftest import trained_spans
from tests.real_tokenizers import real_tokenizer

HISTORY = [["Hi.", "Hello!"], ["What is 1+1?", "Two."]]
# The answer as each template trains it: its end-of-turn, and for Qwen3 the empty reasoning block it
# renders before the last answer.
TRAINED = {"llama3": "{}<|eot_id|>", "qwen3": "<think>\n\n</think>\n\n{}<|im_end|>\n", "gemma3": "{}<end_of_turn>\n"}


@pytest.mark.parametrize("name", ["llama3", "qwen3", "gemma3"])
@pytest.mark.parametrize("system", ["", "Be brief."])
def test_one_turn_trains_on_the_answer_and_its_end_of_turn(name, system):
    tok = real_tokenizer(name)
    ids, labels, _ = encode_example(tok, "chat", "What is 2+3?", "Five.", system=system)
    assert trained_spans(tok, ids, labels) == [TRAINED[name].format("Five.")]
    prompt = encode_prompt(tok, "chat", "What is 2+3?", system=system)
    assert ids[:len(prompt)] == prompt  # generation continues exactly where training's answer starts
    if name == "llama3":  # its original template appends an assistant header even to a finished conversation:
        assert tok.decode(ids).endswith("Five.<|eot_id|>")  # not trained on, and not fed either


@pytest.mark.parametrize("name", ["llama3", "gemma3"])
def test_every_turn_of_a_conversation(name):
    """loss_turns=all: Llama-3's original template renders earlier turns unchanged (only its trailing
    header made sdft 0.1 refuse it), as does Gemma-3."""
    tok = real_tokenizer(name)
    ids, labels, _ = encode_example(tok, "chat", "What is 2+3?", "Five.", history=HISTORY, train_history=True)
    end = TRAINED[name].format("")
    assert trained_spans(tok, ids, labels) == ["Hello!" + end, "Two." + end, "Five." + end]
    ids, labels, _ = encode_example(tok, "chat", "What is 2+3?", "Five.", history=HISTORY, train_history=False)
    assert trained_spans(tok, ids, labels) == ["Five." + end]


def test_qwen3_trains_the_last_turn_only():
    """Qwen3 renders an earlier answer without the reasoning block it gives the last one: no span for it,
    so loss_turns=all is refused, naming the setting that works."""
    tok = real_tokenizer("qwen3")
    with pytest.raises(ConfigError, match="train.loss_turns=last"):
        encode_example(tok, "chat", "What is 2+3?", "Five.", history=HISTORY, train_history=True)
    ids, labels, _ = encode_example(tok, "chat", "What is 2+3?", "Five.", history=HISTORY, train_history=False)
    assert trained_spans(tok, ids, labels) == [TRAINED["qwen3"].format("Five.")]


def test_llama2_has_no_chat_template_here():
    """The Llama-2 tokenizer files carry no chat template: the chat route is refused, a text template named."""
    with pytest.raises(ConfigError, match="needs a tokenizer with a chat template.*alpaca, math"):
        encode_prompt(real_tokenizer("llama2"), "chat", "What is 2+3?")
