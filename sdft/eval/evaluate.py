"""Step 4: evaluate the seed and the tuned model side by side. Stage entry: ``run_eval(ctx)``.

The evaluators of ``eval.evaluators`` (``engine``) run on both models. ``eval.json`` holds, per
model, every metric (mean over ``eval.seeds`` when sampling), the tuned-minus-seed ``delta``, the
spread over seeds (``std``) and the settings the numbers were made with. Per-example outputs are in
``outputs/``; the seed's retention responses are cached in ``seed_responses.jsonl``.
"""

from __future__ import annotations

import json
import logging

from sdft.context import RunContext
from sdft.eval.engine import describe, eval_settings, evaluate
from sdft.utils.io import atomic_write_json

log = logging.getLogger(__name__)


def run_eval(ctx: RunContext) -> dict:
    """The eval stage (rank 0): seed vs this run's tuned model -> ``eval/eval.json``; returns the metrics."""
    files = ctx.layout.eval
    results, evaluators = evaluate(ctx, files, {"tuned": ctx.layout})
    seed, tuned = results["seed"]["metrics"], results["tuned"]["metrics"]
    report = {"seed": seed, "tuned": tuned,
              "delta": {k: tuned[k] - seed[k] for k in seed
                        if k in tuned and describe(evaluators, k).higher_is_better is not None},
              "std": {name: r["std"] for name, r in results.items() if r["std"]},
              "settings": eval_settings(ctx.cfg, ctx.tok, evaluators)}
    atomic_write_json(files.eval_json, report)
    log.info("eval: %s", json.dumps({k: report[k] for k in ("seed", "tuned")}))
    return {k: report[k] for k in ("seed", "tuned")}
