"""Task accuracy: the model answers each held-out example (``data.test``) with the task template and
the checker gate (``eval.checker``: math final answer, function call, ...) judges it against the
reference answer."""

from __future__ import annotations

from sdft.data.examples import Example
from sdft.eval.evaluators.base import EvalContext, Evaluator, Metric
from sdft.gates import resolve_gate, run_gate, task_checker


def task_accuracy(model, ctx: EvalContext, examples: list[Example], template: str, checker: str,
                  seed: int) -> tuple[dict, list[dict]]:
    """Generate an answer per example and judge it with the checker gate.

    Returns the metrics and one row per example (prediction, reference, verdict and its reason).
    """
    gate = resolve_gate(checker, option="eval.checker")
    prompts = {ex.id: ctx.prompt(template, ex.instruction, system=ex.system, history=ex.history) for ex in examples}
    answers = ctx.generate(model, prompts, seed, desc="task")
    rows, correct = [], 0
    for ex in examples:
        res = run_gate(gate, checker, answers[ex.id], ex.response)
        correct += res.passed
        rows.append({"id": ex.id, "prediction": answers[ex.id], "reference": ex.response, "correct": res.passed,
                     "detail": res.detail})
    return {"task_accuracy": correct / len(examples), "task_correct": correct, "task_total": len(examples)}, rows


class TaskEvaluator(Evaluator):
    name = "task"
    metrics = {"task_accuracy": Metric("task accuracy", True, "task_total"), "task_correct": Metric("correct", None),
               "task_total": Metric("examples", None)}

    def prepare(self, ctx: EvalContext) -> None:
        cfg = ctx.cfg
        self.examples = ctx.read(cfg.data.test, cfg.data, limit=cfg.eval.limit)
        self.template = cfg.eval.template or cfg.train.template
        self.checker = task_checker(cfg.filter.gates, cfg.eval.checker)

    def key(self, ctx: EvalContext) -> dict:
        return {"data": ctx.cfg.data.test, **ctx.prompt_key(self.template), "checker": self.checker,
                "examples": [ex.id for ex in self.examples],
                "generation": ctx.generation_key()}

    def run(self, model, model_name: str, ctx: EvalContext, seed: int) -> dict[str, float]:
        metrics, rows = task_accuracy(model, ctx, self.examples, self.template, self.checker, seed)
        ctx.write_outputs(self.name, model_name, seed, rows)
        return metrics

    def paired_outcomes(self, ctx: EvalContext, model_name: str, seed: int) -> dict[str, list[bool]]:
        return {"task_accuracy": [r["correct"] for r in self.read_outputs(ctx, model_name, seed)]}
