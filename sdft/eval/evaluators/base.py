"""What every evaluator shares: the context it runs in, its metric descriptions, its output files.

An evaluator is a named component (``eval.evaluators`` lists them) with three methods:

- ``prepare(ctx)``: load its data and anything computed once from the seed model;
- ``key(ctx)``: the settings its results depend on (a cached result with another key is redone);
- ``run(model, name, ctx, seed)``: evaluate one model, return ``{metric: number}``.

``sampled`` evaluators generate text with the eval sampling settings: with ``eval.sampling.do_sample``
they run once per seed in ``eval.seeds`` and the engine reports mean and spread.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from sdft.config.schema import RunConfig
from sdft.data.examples import Example, read_examples
from sdft.layout import EvalFiles
from sdft.models.generation import choose_engine, generate_all, generation_record
from sdft.templates.prompts import encode_prompt
from sdft.utils.io import write_jsonl


@dataclass(frozen=True)
class Metric:
    """How a metric is shown: its label, and whether higher is better (None: neither, e.g. a count)."""

    label: str
    higher_is_better: bool | None = True
    count_of: str | None = None
    """For a proportion: the metric holding its number of trials (for the binomial standard error)."""
    se: str | None = None
    """The metric holding this one's standard error, when the evaluator measures it."""


@dataclass
class EvalContext:
    cfg: RunConfig
    tok: object
    device: torch.device
    files: EvalFiles
    """The evaluation folder: per-example outputs, cached results, the seed's retention answers."""
    seed_model: object = None
    read: Callable[..., list[Example]] = read_examples
    """Reads a held-out data set's examples: ``read(source, fields, limit=, response_required=)``
    (``RunContext.read_examples`` in a command, so that its checks and the evaluators read each set once)."""

    def generate(self, model, prompts: dict[str, list[int]], seed: int, desc: str, strip: bool = True,
                 stop=None, ids: bool = False, **overrides) -> dict:
        """``{id: text}`` for every prompt, with the eval sampling settings (``overrides`` replace some,
        e.g. an evaluator's own ``max_new_tokens``); ``seed`` seeds sampling (greedy ignores it).
        ``stop(id, new_ids)`` ends a row early; ``ids=True`` returns the new token ids instead of text."""
        sampling = replace(self.cfg.eval.sampling, **overrides)
        engine = choose_engine(self.cfg.generation.engine, model, prompts, sampling)
        return generate_all(model, self.tok, prompts, sampling, batch_size=self.cfg.eval.batch_size, seed=seed,
                            engine=engine, desc=desc, strip=strip, cuda_graphs=self.cfg.generation.cuda_graphs,
                            stop=stop, ids=ids)

    def prompt(self, template: str, instruction: str, **kw) -> list[int]:
        """A generation prompt through ``template`` with this run's ``prompt.layout`` (``kw``: system,
        history, reference)."""
        return encode_prompt(self.tok, template, instruction, layout=self.cfg.prompt.layout, **kw)

    def prompt_key(self, template: str) -> dict:
        """What an evaluator's prompts depend on: the template, and the layout of a text template."""
        return {"template": template, **({"layout": self.cfg.prompt.layout} if template != "chat" else {})}

    def generation_key(self, **overrides) -> dict:
        """The generation settings an evaluator's results depend on (without the seed: cached per seed)."""
        return generation_record(replace(self.cfg.eval.sampling, **overrides), self.cfg.eval.batch_size, None,
                                 self.cfg.generation.engine)

    def output_path(self, evaluator: str, model_name: str, seed: int) -> Path:
        return self.files.output(evaluator, model_name, seed if self.cfg.eval.sampling.do_sample else None)

    def write_outputs(self, evaluator: str, model_name: str, seed: int, rows: list[dict]) -> None:
        """Per-example outputs as JSONL, written atomically."""
        write_jsonl(self.output_path(evaluator, model_name, seed), rows)


class Evaluator:
    """Base class; subclasses set ``name``, ``metrics`` and ``sampled`` and implement ``run``."""

    name: str = ""
    metrics: dict[str, Metric] = {}
    sampled: bool = True
    version: int = 1
    """Bumped when the evaluator's metrics change meaning, so cached results from before are redone."""

    def prepare(self, ctx: EvalContext) -> None:
        pass

    def key(self, ctx: EvalContext) -> dict:
        return {}

    def settings(self, cfg: RunConfig) -> dict:
        """How a benchmark is run, for the reader of ``eval.json`` or a compare report."""
        return {}

    def columns(self) -> list[tuple[str, str]]:
        """The paper table's columns this evaluator fills: ``(column, metric)``."""
        return []

    def run(self, model, model_name: str, ctx: EvalContext, seed: int) -> dict[str, float]:
        raise NotImplementedError

    def paired_outcomes(self, ctx: EvalContext, model_name: str, seed: int) -> dict[str, list[bool]]:
        """``{metric: [yes/no per item]}`` for proportion metrics, read back from this evaluator's
        outputs, in item order (for paired tests between models); {} when it has none."""
        return {}

    def read_outputs(self, ctx: EvalContext, model_name: str, seed: int) -> list[dict]:
        path = ctx.output_path(self.name, model_name, seed)
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def describe(self, metric: str) -> Metric | None:
        """The description of a metric this evaluator reports (None: not one of its metrics)."""
        return self.metrics.get(metric)


def general_template(tok) -> str:
    """Template for open-ended prompts (retention, safety): the model's own chat template when it has
    one, else the paper's alpaca layout."""
    return "chat" if getattr(tok, "chat_template", None) else "alpaca"
