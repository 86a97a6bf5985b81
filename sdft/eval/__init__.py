"""Step 4: evaluation, and the public API ``sdft compare`` evaluates its arms with.

The stage (``evaluate``: ``run_eval``, ``eval_preflight``), one evaluation of the seed and a list of run
folders with per-model caching (``evaluation``), the evaluators (``evaluators/``), the paper's benchmarks
(``benchmarks``) and the sandbox for generated code (``sandbox/``).
"""

from sdft.eval.evaluate import eval_preflight, run_eval
from sdft.eval.evaluation import describe, eval_settings, evaluate_runs, paired_outcomes
from sdft.eval.evaluators import Evaluator, Metric

__all__ = ["Evaluator", "Metric", "describe", "eval_preflight", "eval_settings", "evaluate_runs", "paired_outcomes",
           "run_eval"]
