import json


from sdft.data.examples import Example
from sdft.distill.generation import GenerationSettings
from sdft.eval.evaluate import task_accuracy


def test_task_accuracy_uses_the_checker_gate(tiny_model_dir, tiny_tok, tmp_path, monkeypatch):
    import sdft.eval.evaluate as ev

    answers = {"a": "so it is 5", "b": "it is 7", "c": "The answer is 12."}

    def fake_generate(model, tok, prompts, settings, desc=""):
        assert set(prompts) == set(answers)
        yield {k: answers[k] for k in prompts}

    monkeypatch.setattr(ev, "generate_batches", fake_generate)
    exs = [Example("a", "q", "The answer is 5."), Example("b", "q", "The answer is 6."), Example("c", "q", "12")]
    out = task_accuracy(None, tiny_tok, exs, "math_infer", "math", GenerationSettings(), tmp_path / "predictions_x.jsonl")
    assert out == {"task_accuracy": 2 / 3, "task_correct": 2, "task_total": 3}
    rows = [json.loads(x) for x in (tmp_path / "predictions_x.jsonl").read_text().splitlines()]
    assert [r["correct"] for r in rows] == [True, False, True] and "7 != 6" in rows[1]["detail"]
