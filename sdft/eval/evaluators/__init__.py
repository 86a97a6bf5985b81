"""The evaluators, by the name ``eval.evaluators`` lists them under (``sdft.config.schema.EVALUATORS``)."""

from sdft.eval.evaluators.base import EvalContext, Evaluator, Metric, general_template
from sdft.eval.evaluators.humaneval import HumanEvalEvaluator
from sdft.eval.evaluators.lm_eval_tasks import LmEvalEvaluator
from sdft.eval.evaluators.retention import RetentionEvaluator
from sdft.eval.evaluators.safety import SafetyEvaluator
from sdft.eval.evaluators.task import TaskEvaluator

EVALUATOR_CLASSES: dict[str, type[Evaluator]] = {
    c.name: c for c in (TaskEvaluator, RetentionEvaluator, SafetyEvaluator, HumanEvalEvaluator, LmEvalEvaluator)}

__all__ = ["EVALUATOR_CLASSES", "EvalContext", "Evaluator", "Metric", "general_template"]
