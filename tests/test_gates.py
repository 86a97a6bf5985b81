import pytest

from sdft.errors import ConfigError
from sdft.gates import (ban_list, find_last_integer, function_call, magicoder, math, python_code,
                               resolve_gate, run_gate)


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
                                  "Now it's your turn: 8", "Your turn! 8", "", "Your response: 8"])
def test_ban_list_rejects(text):
    assert not ban_list(text, "8").passed


def test_ban_list_accepts_plain_answers():
    assert ban_list("Sure, the total is 8.", "8").passed
    assert ban_list("I turned it over; 8.", "8").passed


def test_function_call_gate():
    ref = "get_weather(city='Paris', unit='C')"
    assert function_call('I would call get_weather(city="Paris",  unit="C") here.', ref).passed
    assert not function_call("get_weather(unit='C', city='Paris')", ref).passed  # argument order matters
    assert not function_call("get_time(city='Paris', unit='C')", ref).passed
    assert not function_call("anything", "not a call").passed


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
