"""A generative benchmark: held-out prompts each model answers, every answer scored against its reference
(``eval.benchmarks``; the built-in ones are the paper's, ``sdft.eval.benchmarks``).

The metric is named after the benchmark: the share of answers scored right (a gate), half-credit
OpenFunctions (``function_call_half``), or the safe rate (``refusal``: the share with a refusal keyword).
``alpaca_eval`` (scorer ``none``) writes each model's answers in AlpacaEval's own format and, with an
annotator configured, reports the win rate the ``alpaca-eval`` package computes; without one the
benchmark reports nothing but its count, and the report says "not judged".
"""

from __future__ import annotations

import logging
import re
from dataclasses import asdict

from sdft.config.schema import BenchmarkConfig, DataConfig
from sdft.data.examples import read_examples
from sdft.errors import EvalError
from sdft.eval.evaluators.base import EvalContext, Evaluator, Metric
from sdft.eval.evaluators.safety import is_refusal
from sdft.gates import normalise_call, resolve_gate, run_gate
from sdft.utils.io import atomic_write_json

log = logging.getLogger(__name__)

SCORERS = ("refusal", "none", "function_call_half")


def function_call_half(answer: str, reference: str) -> float:
    """The authors' later OpenFunctions scorer (sail-sg/sdft reproduce, since 2024-09): 1 for the
    reference call with its keyword arguments in the answer (``gates.function_call``), else 0.5 when
    the answer's first parenthesised arguments hold, position by position, the reference's values, else 0."""
    if run_gate(resolve_gate("function_call"), "function_call", answer, reference).passed:
        return 1.0
    ref, ans = normalise_call(reference), normalise_call(answer)
    m = re.match(r"([a-zA-Z_][a-zA-Z0-9_]*(?:\.[a-zA-Z_][a-zA-Z0-9_]*)*)\((.*)\)", ref)
    if m is None:
        return 0.0
    ref_params = m.group(2).split(",")
    ans_params = ans[max(ans.find("(") + 1, 0):ans.find(")")].split(",")
    if len(ref_params) != len(ans_params):
        return 0.0
    for r, a in zip(ref_params, ans_params):
        if "=" not in r or r.split("=")[1] not in a:
            return 0.0
    return 0.5


class BenchmarkEvaluator(Evaluator):
    """One benchmark of ``eval.benchmarks`` (``spec``: its data, template, decoding and scorer)."""

    def __init__(self, name: str, spec: BenchmarkConfig):
        self.name, self.spec = name, spec
        unit = "win rate" if spec.scorer == "none" else "safe rate" if spec.scorer == "refusal" else "score"
        self.metrics = {name: Metric(f"{name} {unit}", True, f"{name}_total" if spec.scorer != "function_call_half"
                                     else None), f"{name}_total": Metric("items", None)}
        self.sampled = not spec.greedy

    def columns(self) -> list[tuple[str, str]]:
        return [(self.name, self.name)]

    def settings(self, cfg) -> dict:
        return {**asdict(self.spec), **({"annotator": cfg.eval.alpaca_eval_annotator or "not judged"}
                                        if self.spec.scorer == "none" else {})}

    def load(self, cfg, read=read_examples) -> list:
        """The benchmark's records as examples (``eval.limit`` of them; ``read``: how a data set is read, see
        ``EvalContext.read``); a bad record is a ``DataError``."""
        s = self.spec
        fields = DataConfig(format="alpaca", instruction_field=s.instruction_field, input_field=s.input_field,
                            output_field=s.output_field, on_error="error")
        needs_reference = s.scorer not in ("refusal", "none")
        return read(s.data, fields, limit=cfg.eval.limit, response_required=needs_reference)

    def prepare(self, ctx: EvalContext) -> None:
        if self.spec.scorer not in SCORERS:
            resolve_gate(self.spec.scorer, option=f"eval.benchmark_defs.{self.name}.scorer")
        self.examples = self.load(ctx.cfg, ctx.read)

    def key(self, ctx: EvalContext) -> dict:
        s = self.spec
        return {"data": s.data, "items": [ex.id for ex in self.examples], **ctx.prompt_key(s.template),
                "suffix": s.suffix, "scorer": s.scorer, "annotator": ctx.cfg.eval.alpaca_eval_annotator,
                "straighten_apostrophes": ctx.cfg.eval.safety_straighten_apostrophes,
                "generation": ctx.generation_key(**self._decoding(ctx))}

    def _decoding(self, ctx: EvalContext) -> dict:
        out = {}
        if self.spec.max_new_tokens:
            out["max_new_tokens"] = self.spec.max_new_tokens
        if self.spec.greedy:
            out["do_sample"] = False
        return out

    def prompts(self, ctx: EvalContext) -> dict[str, list[int]]:
        """Each item's prompt ids: its instruction (and ``suffix`` after a space) through ``template``."""
        s = self.spec
        suffix = f" {s.suffix}" if s.suffix else ""
        return {ex.id: ctx.prompt(s.template, ex.instruction + suffix, system=ex.system, history=ex.history)
                for ex in self.examples}

    def run(self, model, model_name: str, ctx: EvalContext, seed: int) -> dict[str, float]:
        s = self.spec
        answers = ctx.generate(model, self.prompts(ctx), seed, desc=self.name, **self._decoding(ctx))
        rows = [{"id": ex.id, "instruction": ex.instruction, "prediction": answers[ex.id], "reference": ex.response}
                for ex in self.examples]
        n = len(rows)
        if s.scorer == "none":
            ctx.write_outputs(self.name, model_name, seed, rows)
            return {**self._alpaca_eval(rows, model_name, ctx, seed), f"{self.name}_total": n}
        for row in rows:
            row["score"] = self._score(row["prediction"], row["reference"], ctx)
        ctx.write_outputs(self.name, model_name, seed, rows)
        return {self.name: sum(r["score"] for r in rows) / n, f"{self.name}_total": n}

    def _score(self, answer: str, reference: str, ctx: EvalContext) -> float:
        s = self.spec
        if s.scorer == "refusal":
            return float(is_refusal(answer, ctx.cfg.eval.safety_straighten_apostrophes))
        if s.scorer == "function_call_half":
            return function_call_half(answer, reference)
        return float(run_gate(resolve_gate(s.scorer), s.scorer, answer, reference).passed)

    def _alpaca_eval(self, rows: list[dict], model_name: str, ctx: EvalContext, seed: int) -> dict[str, float]:
        """Write ``rows`` as AlpacaEval model outputs; with an annotator, the win rate it judges."""
        path = ctx.files.alpaca_eval_outputs(self.name, model_name, seed if ctx.cfg.eval.sampling.do_sample else None)
        outputs = [{"instruction": r["instruction"], "output": r["prediction"], "generator": model_name} for r in rows]
        atomic_write_json(path, outputs)
        annotator = ctx.cfg.eval.alpaca_eval_annotator
        if not annotator:
            log.info("eval: %s: outputs written to %s, not judged (set eval.alpaca_eval_annotator to judge them)",
                     self.name, path)
            return {}
        try:
            from alpaca_eval import evaluate
        except ImportError as e:
            raise EvalError("eval.alpaca_eval_annotator is set but the alpaca-eval package is not installed: "
                            "pip install alpaca-eval") from e
        leaderboard, _ = evaluate(model_outputs=str(path), annotators_config=annotator, name=model_name,
                                  is_return_instead_of_print=True, output_path=str(path.parent))
        row = leaderboard.loc[model_name]
        return {self.name: float(row["win_rate"]) / 100.0}

    def paired_outcomes(self, ctx: EvalContext, model_name: str, seed: int) -> dict[str, list[bool]]:
        if self.spec.scorer in ("none", "function_call_half"):
            return {}
        return {self.name: [r["score"] == 1.0 for r in self.read_outputs(ctx, model_name, seed)]}
