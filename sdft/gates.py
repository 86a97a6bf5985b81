"""Gates: judge a text against a reference answer (the paper's ``eval/gen_distilled_data.py`` and
``eval_*.py``).

A gate is any callable ``gate(text: str, reference: str) -> GateResult | bool``. Built-ins are chosen
by name; a user gate by ``"package.module:function"``. The filter stage keeps a rewrite only when it
passes every gate of ``filter.gates``; the task evaluator judges held-out answers with one of them
(``eval.checker``), the held-out reference in place of the original answer. A shared layer: both
stages use it, and the config loader resolves the names before any work starts.
"""

from __future__ import annotations

import ast
import importlib
import re
from collections.abc import Callable
from dataclasses import dataclass

from sdft.errors import ConfigError


@dataclass(frozen=True)
class GateResult:
    passed: bool
    detail: str = ""
    """Why a rewrite was rejected, for humans (e.g. "final answer 7 != 12")."""


Gate = Callable[[str, str], "GateResult | bool"]

BAN_PHRASES = ("reference answer", "your response", "my response", "your own response", "now it's your turn")
_NUMBER = re.compile(r"-?\d+(?:[,\s]\d+)*(?:\.\d+)?")


def ban_list(rewrite: str, reference: str) -> GateResult:
    """Reject rewrites that talk about the distillation set-up instead of answering, exactly as the
    paper's ``verify``: any ban phrase, in any case; or a start of "Your turn" (case as written). An
    empty rewrite passes (the authors' training then drops the example; so does sdft's)."""
    text = rewrite.strip()
    low = text.lower()
    for phrase in BAN_PHRASES:
        if phrase in low:
            return GateResult(False, f"contains {phrase!r}")
    if text.startswith("Your turn"):
        return GateResult(False, "starts with 'Your turn'")
    return GateResult(True)


def ban_list_strict(rewrite: str, reference: str) -> GateResult:
    """``ban_list``, and also "your turn" at the start in any case, and an empty rewrite (sdft's
    stricter variant; the paper recipes use ``ban_list``)."""
    res = ban_list(rewrite, reference)
    if not res.passed:
        return res
    if rewrite.strip().lower().startswith("your turn"):
        return GateResult(False, "starts with 'your turn'")
    if not rewrite.strip():
        return GateResult(False, "empty rewrite")
    return GateResult(True)


def find_last_integer(text: str) -> int | None:
    """The last number in ``text`` as an integer, as the paper's ``utils.find_last_integer``.

    Commas and spaces inside a number are removed ("1,000" and "1 000" are 1000; a number broken by
    another space character, such as a newline, is no integer); a number with a non-zero decimal part is
    not an integer either: None.
    """
    matches = _NUMBER.findall(text)
    if not matches:
        return None
    num = matches[-1].replace(",", "").replace(" ", "")
    if "." in num:
        whole, frac = num.split(".", 1)
        if int(frac) != 0:
            return None
        num = whole
    try:
        return int(num)
    except ValueError:
        return None


def math(rewrite: str, reference: str) -> GateResult:
    """Accept iff the last integers of rewrite and reference are equal (the paper's ``check_math``; a
    reference with no final integer rejects everything, where theirs would accept a rewrite with none
    either: no GSM8K or MultiArith reference lacks one)."""
    want, got = find_last_integer(reference), find_last_integer(rewrite.strip())
    if want is None:
        return GateResult(False, "reference has no final integer")
    if got != want:
        return GateResult(False, f"final answer {got} != {want}")
    return GateResult(True)


def normalise_call(s: str) -> str:
    """The paper's ``standardize_function_call``: whitespace runs to one space, ' to ", every ", " to ","."""
    return re.sub(r"\s+", " ", s.strip()).replace("'", '"').replace(", ", ",")


_CALL = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*(?:\.[a-zA-Z_][a-zA-Z0-9_]*)*)\((.*)\)")


def function_call(rewrite: str, reference: str) -> GateResult:
    """Accept iff the reference call ``name(args)`` occurs, after normalisation, in the rewrite with a
    word boundary before the name (the paper's ``check_openfunction``)."""
    m = _CALL.match(normalise_call(reference))
    if m is None:
        return GateResult(False, "reference is not of the form name(args)")
    name, params = m.groups()
    if re.search(r"\b" + re.escape(name) + r"\(" + re.escape(params) + r"\)", normalise_call(rewrite)) is None:
        return GateResult(False, "reference call not found")
    return GateResult(True)


_PY_BLOCK = re.compile(r"```python\n(.*?)```", flags=re.S)


def python_code(rewrite: str, reference: str) -> GateResult:
    """Accept iff the rewrite has a ```python block and every such block parses."""
    blocks = _PY_BLOCK.findall(rewrite)
    if not blocks:
        return GateResult(False, "no ```python block")
    for b in blocks:
        try:
            ast.parse(b)
        except SyntaxError as e:
            return GateResult(False, f"syntax error line {e.lineno}")
    return GateResult(True)


def magicoder(rewrite: str, reference: str) -> GateResult:
    """The paper's MagiCoder check: a ```python block and an opening of 'I have', 'Here is' or 'I implemented'."""
    rewrite = rewrite.strip()
    if "```python" not in rewrite:
        return GateResult(False, "no ```python block")
    if not rewrite.startswith(("I have", "Here is", "I implemented")):
        return GateResult(False, "bad opening")
    return GateResult(True)


BUILTIN_GATES: dict[str, Gate] = {"ban_list": ban_list, "ban_list_strict": ban_list_strict, "math": math,
                                  "function_call": function_call, "python_code": python_code,
                                  "magicoder": magicoder}
# Gates that judge task correctness (usable as an eval checker); ban_list only judges style.
TASK_GATES = ("math", "function_call", "python_code", "magicoder")


def resolve_gate(name: str, option: str = "filter.gates") -> Gate:
    """A built-in gate by name, or a user callable ``module:function``; ``ConfigError`` naming ``option``
    when there is no such gate."""
    if name in BUILTIN_GATES:
        return BUILTIN_GATES[name]
    if ":" not in name:
        raise ConfigError(f"{option}: unknown gate {name!r}; built-ins are {sorted(BUILTIN_GATES)}, "
                          "or give a user gate as 'package.module:function'")
    module, _, attr = name.partition(":")
    try:
        fn = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"{option}: cannot import gate {name!r}: {e}") from e
    if not callable(fn):
        raise ConfigError(f"{option}: {name!r} is not callable")
    return fn


def run_gate(gate: Gate, name: str, rewrite: str, reference: str) -> GateResult:
    """Call a gate and normalise its answer (user gates may return a plain bool)."""
    out = gate(rewrite, reference)
    if isinstance(out, GateResult):
        return out
    return GateResult(bool(out), "" if out else "rejected")


def task_checker(filter_gates: list[str], checker: str = "") -> str:
    """The gate that judges held-out task answers: ``checker`` (``eval.checker``) when set, else the
    last task gate of ``filter_gates`` (a user gate counts as one); "" when there is none."""
    if checker:
        return checker
    task = [g for g in filter_gates if g in TASK_GATES or g not in BUILTIN_GATES]
    return task[-1] if task else ""
