"""The paper's benchmarks, each as its authors ran it (sail-sg/sdft, ``reproduce:scripts/<task>/sdft.sh``
from line 64), and the evaluators a config's ``eval.benchmarks`` asks for.

Data: the authors' own files at their repository's commit bfb6c25 (main; the same files as on
``reproduce``), read by datasets' json / csv builders; ``eval.benchmark_defs`` can point a benchmark at
a local copy (``data: <path>``) or define new ones. Decoding: ``eval.sampling`` (the paper's recipes: T
0.95, top-p 0.7, top-k 50, 512 new tokens), except HumanEval, greedy as the authors ran it.
"""

from __future__ import annotations

from dataclasses import fields, replace

from sdft.config.schema import GCG_SUFFIX, GENERATIVE_BENCHMARKS, BenchmarkConfig, RunConfig
from sdft.eval.evaluators.analysis import AnalysisEvaluator
from sdft.eval.evaluators.base import Evaluator
from sdft.eval.evaluators.benchmark import BenchmarkEvaluator
from sdft.eval.evaluators.humaneval import HumanEvalEvaluator
from sdft.eval.evaluators.lm_eval_tasks import LmEvalEvaluator

AUTHORS_DATA = "https://raw.githubusercontent.com/sail-sg/sdft/bfb6c255fccdce7459235c20f19a3b9817a9cd5d/data/"


def _authors(path: str, builder: str = "json") -> str:
    return f"hub:{builder}?data_files={AUTHORS_DATA}{path}&split=train"


# A new benchmark's settings where its definition leaves them empty.
GENERIC = BenchmarkConfig(instruction_field="instruction", input_field="input", output_field="output",
                          template="alpaca")


def _spec(data: str, **settings) -> BenchmarkConfig:
    return replace(GENERIC, data=data, **settings)


GENERATIVE = {
    # GSM8K's 1,319 test questions and MultiArith's 180, asked with gsm8k_infer, scored by the last integer.
    "gsm8k": _spec(_authors("gsm8k/gsm8k_test.json"), instruction_field="question", output_field="answer",
                   template="math_infer", scorer="math"),
    "multiarith": _spec(_authors("multiarith_test.json"), template="math_infer", scorer="math"),
    # The 112 OpenFunctions test calls, asked with alpaca, scored by the reference call in the answer.
    "openfunctions": _spec(_authors("openfunction/openfunction_test.json"), scorer="function_call"),
    # AdvBench's 520 harmful behaviours, asked with alpaca (and alpaca_gcg: the GCG suffix after the
    # request); the share of answers with a refusal keyword.
    "advbench": _spec(_authors("harmful_behaviors.csv", "csv"), instruction_field="goal", output_field="target",
                      scorer="refusal"),
    "advbench_gcg": _spec(_authors("harmful_behaviors.csv", "csv"), instruction_field="goal", output_field="target",
                          suffix=GCG_SUFFIX, scorer="refusal"),
    # AlpacaEval's 805 instructions, asked with alpaca; judged by the alpaca-eval package if configured.
    "alpaca_eval": _spec(_authors("alpaca_eval.json"), scorer="none"),
}
assert tuple(GENERATIVE) == GENERATIVE_BENCHMARKS


def benchmark_spec(name: str, cfg: RunConfig) -> BenchmarkConfig:
    """A generative benchmark's settings: the built-in one (or ``GENERIC``), with every field that its
    ``eval.benchmark_defs`` entry sets in its place."""
    base = GENERATIVE.get(name, GENERIC)
    user = cfg.eval.benchmark_defs.get(name)
    if user is None:
        return replace(base)
    return replace(base, **{f.name: getattr(user, f.name) for f in fields(user) if getattr(user, f.name)})


def benchmark_evaluators(cfg: RunConfig) -> list[Evaluator]:
    """The evaluators of ``eval.benchmarks``, in order, ``analysis`` last (it reads the others' answers)."""
    out: dict[str, Evaluator] = {}
    for name in cfg.eval.benchmarks:
        if name == "humaneval":
            out[name] = HumanEvalEvaluator(prompt="octocoder", greedy=True, max_length=2048)
        elif name == "knowledge":
            out[name] = LmEvalEvaluator("knowledge", "eval.knowledge_tasks", num_fewshot=0)
        elif name != "analysis":
            out[name] = BenchmarkEvaluator(name, benchmark_spec(name, cfg))
    if "analysis" in cfg.eval.benchmarks:
        out["analysis"] = AnalysisEvaluator(out[cfg.eval.analysis_benchmark])
    return list(out.values())
