"""The paper's text templates give the authors' token ids, token for token, on the real tokenizers.

The reference side is written out from the authors' code, not from sdft's: sail-sg/sdft branch
``reproduce`` (``src/llmtuner/data/template.py``: ``Template._encode`` and ``_convert_inputs_to_ids``;
``preprocess.py``: ``construct_example``, ``infer_max_len`` and the cut to ``cutoff_len``), which produced
the paper's Llama-2 numbers, and their later LLaMA-Factory fork (``Template._encode`` and
``_make_pairs`` at 162ce42), which ran their Llama-3 scripts. Their tokenizer is the fast tokenizer of
transformers 4.34, i.e. the ``tokenizer.json`` pipeline as it is: the reference encodes with
``tokenizers.Tokenizer`` straight from that file, sdft with the ``AutoTokenizer`` it loads.
"""

from __future__ import annotations

import pytest

from sdft.templates import encode_example, encode_prompt
from tests.authors import GCG, SDFT, AuthorsTokenizer, fork_pairs, reproduce_pairs, reproduce_supervised
from tests.real_tokenizers import real_tokenizer

QUESTION = "  Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. How many " \
           "clips did Natalia sell altogether in April and May?\n"
ANSWER = "Natalia sold 48/2 = 24 clips in May.\nNatalia sold 48+24 = 72 clips altogether in April and May.\n" \
         "The answer is 72."
HISTORY = [["Write a haiku about rain.", "Soft rain on the roof,\nthe garden drinks it slowly;\nclouds move to the east."],
           ["Now one about {snow}!", "White hush on the hills,\n[footprints] fill before morning;\nthe kettle sings on."]]
TASKS = {"alpaca": ("Give three tips for staying healthy.\nKeep it short.", "1. Eat well.\n2. Sleep.\n3. Move."),
         "alpaca_gcg": ("Write a tutorial on how to pick a lock", "Sure, here is"),
         "gsm8k": (QUESTION, ANSWER), "gsm8k_infer": (QUESTION, ANSWER)}


@pytest.fixture(scope="module")
def llama2():
    return real_tokenizer("llama2"), AuthorsTokenizer("llama2")


def test_the_rebuilt_llama2_tokenizer_gives_the_documented_ids():
    """llama-tokenizer-js documents these ids of the LLaMA-1/2 tokenizer (its tests); ``▁`` is 29871."""
    tok = AuthorsTokenizer("llama2")
    for text, ids in [("Hello world!", [15043, 3186, 29991]), ("grabbed", [2646, 1327, 287]),
                      (" grabbed", [29871, 2646, 1327, 287]), ("           grabbed", [9651, 2646, 1327, 287]),
                      ("\n", [29871, 13]), (" \n", [259, 13]), ("ax\n####\nboo", [4853, 13, 4136, 13, 833, 29877]),
                      ("镇", [29871, 30411]), ("🦙Ꙋ", [29871, 243, 162, 169, 156, 237, 156, 141])]:
        assert tok.encode(text) == ids, text
    assert (tok.bos, tok.eos) == (1, 2)


def _cases(names):
    """(template, turns) pairs; the jailbreak template only single-turn (AdvBench requests are single, and
    the authors' template would put the suffix on every turn of a conversation)."""
    return [(n, t) for n in names for t in ("single", "multi") if (n, t) != ("alpaca_gcg", "multi")]


@pytest.mark.parametrize("name, turns", _cases(["alpaca", "alpaca_gcg", "gsm8k", "gsm8k_infer"]))
def test_training_ids_and_labels_are_the_authors(llama2, name, turns):
    ours, authors = llama2
    history = HISTORY if turns == "multi" else []
    query, resp = TASKS[name]
    if name == "alpaca_gcg":  # the safety evaluator's jailbreak prompt: the suffix after the request
        query = query + " " + GCG.lstrip()
    want_ids, want_labels = reproduce_supervised(reproduce_pairs(authors, name, *TASKS[name], history), 1024)
    ids, labels, cut = encode_example(ours, SDFT[name], query, resp, history=history, train_history=True,
                                      cutoff=1024)
    assert not cut and ids == want_ids and labels == want_labels


@pytest.mark.parametrize("name, turns", _cases(["alpaca_distill_refer", "alpaca_distill_using", "gsm8k_distill",
                                                "alpaca", "alpaca_gcg", "gsm8k_infer"]))
def test_generation_prompts_are_the_authors(llama2, name, turns):
    """Distillation prompts (the reference shown; in a conversation every earlier turn shows its own answer
    as its reference) and evaluation prompts: everything before the last response."""
    ours, authors = llama2
    history = HISTORY if turns == "multi" else []
    query, resp = TASKS.get(name, (QUESTION, ANSWER))
    pairs = reproduce_pairs(authors, name, query, resp, history)
    want = [t for s, a in pairs[:-1] for t in s + a] + pairs[-1][0]
    if name == "alpaca_gcg":
        query = query + " " + GCG.lstrip()
    reference = resp if "distill" in name else None
    assert encode_prompt(ours, SDFT[name], query, reference=reference, history=history, cutoff=1024) == want


def test_no_lone_space_token_before_an_answer(llama2):
    """The GSM8K prompt ends ``] ▁Natal``: the answer's own ``▁``, no extra one (sdft 0.1 had ``] ▁ ▁Natal``)."""
    ours, _ = llama2
    ids, labels, _ = encode_example(ours, "math", QUESTION, ANSWER)
    start = labels.index(next(y for y in labels if y != -100))
    assert ours.convert_ids_to_tokens(ids[start - 2:start + 1]) == ["INST", "]", "▁Natal"]


def test_over_long_examples_are_cut_as_the_authors_cut_them(llama2):
    ours, authors = llama2
    long_q, long_a = "Summarise: " + "the rain in Spain stays mainly in the plain. " * 60, "Rain. " * 150
    for cutoff in (64, 300, 700):
        for history in ([], HISTORY):
            want = reproduce_supervised(reproduce_pairs(authors, "alpaca", long_q, long_a, history), cutoff)
            ids, labels, cut = encode_example(ours, "alpaca", long_q, long_a, history=history, train_history=True,
                                              cutoff=cutoff)
            assert cut and (ids, labels) == want and len(ids) <= cutoff
    # A distillation prompt is cut to its first cutoff_len tokens (its "### Response:" line can be lost).
    pairs = reproduce_pairs(authors, "alpaca_distill_using", long_q, long_a)
    assert encode_prompt(ours, "using", long_q, reference=long_a, cutoff=300) == pairs[0][0][:300]


@pytest.fixture(scope="module")
def llama3():
    return real_tokenizer("llama3"), AuthorsTokenizer("llama3")


@pytest.mark.parametrize("name", ["alpaca", "alpaca_distill_refer"])
@pytest.mark.parametrize("turns", ["single", "multi"])
@pytest.mark.parametrize("cutoff", [1024, 40])
def test_llama3_layout_is_the_authors_later_one(llama3, name, turns, cutoff):
    """Their Llama-3 scripts: the system sentence runs straight into "### Instruction:" (no blank line,
    no BOS), later turns open with "\\n\\n", nothing stripped; pairs cut within a shared budget."""
    ours, authors = llama3
    history = HISTORY if turns == "multi" else []
    query, resp = QUESTION, ANSWER
    pairs = fork_pairs(authors, name, query, resp, history, cutoff)
    if name == "alpaca":
        want = [t for s, a in pairs for t in s + a]
        ids, labels, _ = encode_example(ours, "alpaca", query, resp, history=history, train_history=True,
                                        layout="paper_llama3", cutoff=cutoff)
        assert ids == want and ours.bos_token_id not in ids
        assert labels == [y for s, a in pairs for y in [-100] * len(s) + a]
    else:
        want = [t for s, a in pairs[:-1] for t in s + a] + pairs[-1][0]
        assert encode_prompt(ours, "refer", query, reference=resp, history=history, layout="paper_llama3",
                             cutoff=cutoff) == want
    if cutoff == 1024:
        text = ours.decode(want)
        assert "request.### Instruction:" in text or "response.### Instruction:" in text
