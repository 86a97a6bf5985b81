"""Untrusted generated code (HumanEval completions) runs here: a separate, confined process
(``runner``) under a guard script (``guard``), never in sdft's own process."""

from sdft.eval.sandbox.runner import RunResult, isolation, run_program

__all__ = ["RunResult", "isolation", "run_program"]
