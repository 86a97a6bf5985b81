"""General knowledge: lm-eval-harness tasks (MMLU, ARC, HellaSwag, ... or your own) through its Python API.

The model already in memory is wrapped in lm-eval's ``HFLM``; nothing is downloaded by sdft. A task's
data must be local: in the ``datasets`` cache, or a task YAML in ``eval.lm_eval_include_path`` that
reads local files (``dataset_path: json`` with ``data_files``). Metrics are reported as
``lm_eval.<task>.<metric>`` (e.g. ``lm_eval.arc_easy.acc``), with lm-eval's own direction: the task's,
from a run in this process, else the metric's in lm-eval's registry (so a report rebuilt from cached
results still knows that perplexity falls), else unknown (reported without a verdict).
"""

from __future__ import annotations

import logging

from sdft.errors import EvalError
from sdft.eval.evaluators.base import EvalContext, Evaluator, Metric

PREFIX = "lm_eval."


class LmEvalEvaluator(Evaluator):
    """``eval.lm_eval_tasks`` with lm-eval's own few-shot settings; the ``knowledge`` benchmark is this
    evaluator on ``eval.knowledge_tasks``, 0-shot, reported under ``knowledge.<task>.<metric>``."""

    name = "lm_eval"
    sampled = False  # log-likelihood tasks; generative tasks use their own gen_kwargs

    def __init__(self, name: str = "lm_eval", option: str = "eval.lm_eval_tasks", num_fewshot: int | None = None):
        self.name, self.option, self.num_fewshot = name, option, num_fewshot
        self.prefix = PREFIX if name == "lm_eval" else f"{name}."

    def settings(self, cfg) -> dict:
        return {"tasks": self.tasks_of(cfg), "num_fewshot": self.num_fewshot, "metric": "acc"}

    def tasks_of(self, cfg) -> list[str]:
        return list(cfg.eval.lm_eval_tasks if self.name == "lm_eval" else cfg.eval.knowledge_tasks)

    def columns(self) -> list[tuple[str, str]]:
        return [(task, f"{self.prefix}{task}.acc") for task in getattr(self, "task_names", [])]

    def prepare(self, ctx: EvalContext) -> None:
        try:
            from lm_eval.tasks import TaskManager
        except ImportError as e:
            raise EvalError(f"the {self.name} evaluator needs lm-eval: pip install lm-eval") from e
        ev = ctx.cfg.eval
        self.task_manager = TaskManager(include_path=ev.lm_eval_include_path or None)
        self.task_names = self.tasks_of(ctx.cfg)
        unknown = [t for t in self.task_names if t not in self.task_manager.all_tasks]
        if unknown:
            raise EvalError(f"{self.option}: lm-eval knows no task {unknown}"
                            + ("" if ev.lm_eval_include_path else "; for your own tasks set eval.lm_eval_include_path"))
        self.directions: dict[str, bool] = {}

    def key(self, ctx: EvalContext) -> dict:
        ev = ctx.cfg.eval
        return {"tasks": self.task_names, "include_path": ev.lm_eval_include_path, "limit": ev.limit,
                "seed": ev.seeds[0], **({"num_fewshot": self.num_fewshot} if self.num_fewshot is not None else {})}

    def run(self, model, model_name: str, ctx: EvalContext, seed: int) -> dict[str, float]:
        import lm_eval
        from lm_eval.models.huggingface import HFLM

        ev = ctx.cfg.eval
        # lm-eval logs every request at INFO; keep our own log readable.
        logging.getLogger("lm_eval").setLevel(logging.WARNING)
        lm = HFLM(pretrained=model, tokenizer=ctx.tok, batch_size=ev.batch_size, device=str(ctx.device))
        try:
            out = lm_eval.simple_evaluate(model=lm, tasks=self.task_names, task_manager=self.task_manager,
                                          num_fewshot=self.num_fewshot,
                                          limit=ev.limit or None, log_samples=False, bootstrap_iters=0,
                                          random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed,
                                          fewshot_random_seed=seed)
        except Exception as e:  # lm-eval raises many kinds; the usual cause offline is missing task data
            raise EvalError(f"lm-eval tasks {self.task_names} failed: {type(e).__name__}: {e} (is the task data "
                            "local? offline, lm-eval can read only the datasets cache or local files)") from e
        metrics: dict[str, float] = {}
        for task, values in out["results"].items():
            better = out.get("higher_is_better", {}).get(task, {})
            for key, value in values.items():
                metric = key.split(",")[0]
                if ("," not in key or isinstance(value, bool) or not isinstance(value, (int, float))
                        or metric.endswith("_stderr")):  # "metric,filter" keys only; not sample_len
                    continue
                name = f"{self.prefix}{task}.{metric}"
                metrics[name] = float(value)
                self.directions[name] = better.get(metric, True)
        ctx.write_outputs(self.name, model_name, seed, [{"task": t, **v} for t, v in out["results"].items()])
        return metrics

    def describe(self, metric: str) -> Metric | None:
        if not metric.startswith(self.prefix):
            return None
        better = getattr(self, "directions", {}).get(metric)
        if better is None:
            from lm_eval.api.registry import is_higher_better

            better = is_higher_better(metric.rsplit(".", 1)[-1])
        return Metric(metric[len(self.prefix):], better)
