import os

import pytest

from sdft.errors import ConfigError
from sdft.gates import (
    ban_list,
    ban_list_strict,
    find_last_integer,
    function_call,
    magicoder,
    math,
    python_code,
    resolve_gate,
    run_gate,
)
from tests.authors import authors_check_magicoder, authors_check_math, authors_check_openfunction, authors_verify


@pytest.mark.parametrize("text, want", [
    ("The answer is 42.", 42), ("-7 degrees", -7), ("costs 1,000 dollars", 1000), ("about 1 000 people", 1000),
    ("3.0 apples", 3), ("3.5 apples", None), ("no numbers", None), ("first 3 then 12.", 12), ("x = 10.00", 10),
])
def test_find_last_integer_is_the_papers(text, want):
    assert find_last_integer(text) == want


def test_math_gate():
    ref = "4 + 4 = 8.\nThe answer is 8."
    assert math("So she has 8 apples in total.", ref).passed
    res = math("So she has 9 apples.", ref)
    assert not res.passed and "9 != 8" in res.detail
    assert not math("eight", ref).passed
    assert not math("8", "no number").passed


@pytest.mark.parametrize("text", ["Using the Reference Answer, 8.", "Here is MY RESPONSE: 8", "your own response is 8",
                                  "Now it's your turn: 8", "Your turn! 8", "  Your turn! 8", "Your response: 8"])
def test_ban_list_rejects(text):
    assert not ban_list(text, "8").passed and not ban_list_strict(text, "8").passed


def test_ban_list_accepts_plain_answers_and_strict_is_stricter():
    assert ban_list("Sure, the total is 8.", "8").passed
    assert ban_list("I turned it over; 8.", "8").passed
    # The paper's check is case-sensitive for the opening and lets an empty rewrite through.
    for text in ("your turn: 8", "YOUR TURN 8", "", "  \n"):
        assert ban_list(text, "8").passed and not ban_list_strict(text, "8").passed


def test_function_call_gate():
    ref = "get_weather(city='Paris', unit='C')"
    assert function_call('I would call get_weather(city="Paris",  unit="C") here.', ref).passed
    assert not function_call("get_weather(unit='C', city='Paris')", ref).passed  # argument order matters
    assert not function_call("get_time(city='Paris', unit='C')", ref).passed
    assert not function_call("anything", "not a call").passed
    assert not function_call("my_get_weather(city='Paris', unit='C')", ref).passed  # a word boundary before the name
    assert function_call("api.get_weather(city='Paris',unit='C')", ref).passed


REWRITES = ["Your turn: 7", "your turn: 7", "", "So the answer is 7.", "It's 1,080.", "It is 1 080 in all.", "24\n72",
            "7.5", "7.0", "-7", "Here is my Response: 7", "NOW IT'S YOUR TURN", "The total: 1,080 dollars.",
            "I have written it:\n```python\nprint(7)\n```", "  Here is the code ```python x```", "Sure! ```python```"]


@pytest.mark.parametrize("rewrite", REWRITES)
@pytest.mark.parametrize("reference", ["The answer is 7.", "The answer is 1,080.", "The answer is -7."])
def test_gates_equal_the_authors_on_stripped_text(rewrite, reference):
    text = rewrite.strip()
    assert ban_list(text, reference).passed == authors_verify(text)
    assert math(text, reference).passed == authors_check_math(text, reference)
    assert magicoder(text, reference).passed == authors_check_magicoder(text)


CALLS = ["get_weather(city='Paris', unit='C')", "calc.area(shape='circle, small', r=2)", "f(x=1)"]
CALL_REWRITES = ['get_weather(city="Paris",unit="C")', "I would call get_weather(city='Paris',  unit='C').",
                 "my_get_weather(city='Paris', unit='C')", "x.get_weather(city='Paris', unit='C')",
                 "calc.area(shape='circle,small', r=2)", "calc.area(shape=\"circle, small\", r=2) does it",
                 "area(shape='circle, small', r=2)", "f(x=1)", "ff(x=1)", "f(x = 1)", "f( x=1)", "the call is\nf(x=1)"]


@pytest.mark.parametrize("reference", CALLS)
@pytest.mark.parametrize("rewrite", CALL_REWRITES)
def test_function_call_equals_the_authors(rewrite, reference):
    assert function_call(rewrite, reference).passed == authors_check_openfunction(rewrite, reference)


AUTHORS_DATA = os.environ.get("SDFT_AUTHORS_DATA", "")


@pytest.mark.skipif(not AUTHORS_DATA, reason="set SDFT_AUTHORS_DATA to the data/ folder of a sail-sg/sdft checkout "
                                            "(main, bfb6c25) to check the gates on the authors' distilled files")
@pytest.mark.parametrize("name, gates", [("openfunction", [ban_list, function_call]), ("alpaca", [ban_list])])
def test_every_rewrite_the_authors_kept_passes_our_gates(name, gates):
    """Their distilled training files: where an answer differs from the original one, their gate kept
    that rewrite; ours must keep it too, given the same rewrite and reference."""
    import json
    from pathlib import Path

    root = Path(AUTHORS_DATA) / name
    original = json.loads((root / f"{name}_train.json").read_text())
    distilled = json.loads((root / f"distilled_{name}.json").read_text())
    assert len(original) == len(distilled)
    kept = [(d["output"], o["output"].strip()) for o, d in zip(original, distilled) if d["output"] != o["output"].strip()]
    assert kept
    refused = [(r, ref) for r, ref in kept if not all(g(r, ref).passed for g in gates)]
    assert not refused, f"{len(refused)} of {len(kept)} kept rewrites refused, e.g. {refused[0]}"


def test_python_code_and_magicoder_gates():
    good = "Here is the code:\n```python\ndef f(x):\n    return x + 1\n```"
    assert python_code(good, "").passed
    assert not python_code("```python\ndef f(:\n```", "").passed
    assert not python_code("def f(): pass", "").passed
    assert magicoder(good, "").passed
    assert not magicoder("Sure! " + good, "").passed


def gate_even_length(rewrite, reference):  # used through "tests.test_gates:gate_even_length"
    return len(rewrite) % 2 == 0


def test_user_gates_and_unknown_names():
    gate = resolve_gate("tests.test_gates:gate_even_length")
    assert run_gate(gate, "even", "ab", "").passed
    res = run_gate(gate, "even", "abc", "")
    assert not res.passed and res.detail == "rejected"
    with pytest.raises(ConfigError, match="unknown gate 'maths'"):
        resolve_gate("maths")
    with pytest.raises(ConfigError, match="cannot import gate"):
        resolve_gate("tests.test_gates:nope")
