import torch

from sdft.config.schema import RunConfig
from sdft.data.examples import Example
from sdft.eval.evaluators import EvalContext
from sdft.eval.evaluators.task import task_accuracy
from sdft.layout import EvalFiles


def test_task_accuracy_uses_the_checker_gate(tiny_tok, tmp_path, monkeypatch):
    answers = {"a": "so it is 5", "b": "it is 7", "c": "The answer is 12."}

    def fake_generate(model, prompts, seed, desc, strip=True, **overrides):
        assert set(prompts) == set(answers) and seed == 7
        return {k: answers[k] for k in prompts}

    ctx = EvalContext(RunConfig(), tiny_tok, torch.device("cpu"), EvalFiles(tmp_path))
    monkeypatch.setattr(ctx, "generate", fake_generate)
    exs = [Example("a", "q", "The answer is 5."), Example("b", "q", "The answer is 6."), Example("c", "q", "12")]
    metrics, rows = task_accuracy(None, ctx, exs, "math_infer", "math", seed=7)
    assert metrics == {"task_accuracy": 2 / 3, "task_correct": 2, "task_total": 3}
    assert [r["correct"] for r in rows] == [True, False, True] and "7 != 6" in rows[1]["detail"]
