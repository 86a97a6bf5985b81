"""Step 2: quality gates and the fallback-to-original filter."""

from sdft.filter.apply import filter_rewrites, load_rewrites
from sdft.filter.gates import BUILTIN_GATES, TASK_GATES, GateResult, find_last_integer, resolve_gate, run_gate

__all__ = ["filter_rewrites", "load_rewrites", "BUILTIN_GATES", "TASK_GATES", "GateResult", "find_last_integer",
           "resolve_gate", "run_gate"]
