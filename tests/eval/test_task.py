from sdft.data.examples import Example
from sdft.distill.generation import GenerationSettings
from sdft.eval.task import task_accuracy


def test_task_accuracy_uses_the_checker_gate(tiny_tok, monkeypatch):
    import sdft.eval.task as task

    answers = {"a": "so it is 5", "b": "it is 7", "c": "The answer is 12."}

    def fake_generate(model, tok, prompts, settings, desc=""):
        assert set(prompts) == set(answers)
        yield {k: answers[k] for k in prompts}

    monkeypatch.setattr(task, "generate_batches", fake_generate)
    exs = [Example("a", "q", "The answer is 5."), Example("b", "q", "The answer is 6."), Example("c", "q", "12")]
    metrics, rows = task_accuracy(None, tiny_tok, exs, "math_infer", "math", GenerationSettings())
    assert metrics == {"task_accuracy": 2 / 3, "task_correct": 2, "task_total": 3}
    assert [r["correct"] for r in rows] == [True, False, True] and "7 != 6" in rows[1]["detail"]
