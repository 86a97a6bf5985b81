"""The paper's section 5: how far a model moved from the seed, in what it says and in its weights.

On the answers of one benchmark (``eval.analysis_benchmark``, AdvBench's plain requests by default, as
the authors' scripts), each model's answer is compared with the seed's answer to the same prompt:

- ``analysis.bleu4``: sentence BLEU-4 over characters, smoothing method 3 (nltk; the authors'
  ``eval_bleu4.py``);
- ``analysis.rougel``: ROUGE-L F over jieba's word segmentation (rouge-chinese; ``eval_rougel.py``);
- ``analysis.similarity``: cosine similarity of the two answers' sentence embeddings under
  ``eval.similarity_model`` (a sentence-transformers model; the authors used all-MiniLM-L6-v2), skipped
  with a log line when none is set;

each the mean over prompts, and ``analysis.param_shift``: the L2 norm of the change of the weights from
the seed's (under LoRA: of every adapted layer's ``scale * B @ A``), and ``analysis.param_shift_rel``,
that over the norm of the same seed weights.
"""

from __future__ import annotations

import logging
import math

import torch

from sdft.errors import EvalError
from sdft.eval.evaluators.base import EvalContext, Evaluator, Metric

log = logging.getLogger(__name__)


def bleu4_chars(reference: str, answer: str) -> float:
    """Character-level sentence BLEU-4 of ``answer`` against ``reference`` (smoothing method 3)."""
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

    if not answer or not reference:
        return float(answer == reference)
    return float(sentence_bleu([list(reference)], list(answer), smoothing_function=SmoothingFunction().method3))


def rougel_words(reference: str, answer: str) -> float:
    """ROUGE-L F of ``answer`` against ``reference`` over jieba's segmentation, as rouge-chinese scores it
    (an empty answer or reference: 1.0 when both are empty, else 0.0; rouge-chinese refuses them)."""
    try:
        import jieba
        from rouge_chinese import Rouge
    except ImportError as e:
        raise EvalError("the analysis benchmark's ROUGE-L needs jieba and rouge-chinese: pip install 'sdft[eval]'") from e
    jieba.setLogLevel(logging.WARNING)
    hyp, ref = " ".join(jieba.cut(answer)), " ".join(jieba.cut(reference))
    if not hyp.strip() or not ref.strip():
        return float(hyp.strip() == ref.strip())
    return float(Rouge().get_scores(hyp, ref)[0]["rouge-l"]["f"])


@torch.no_grad()
def parameter_shift(model, seed) -> tuple[float, float]:
    """(L2 norm of the weights' change from ``seed``, that over the norm of the same seed weights). A peft
    LoRA model's change is its adapters' ``scale * B @ A`` per adapted layer; another model's, its
    parameters minus the seed's of the same name."""
    seed_params = dict(seed.named_parameters())
    change = base = 0.0
    layers = [(n, m) for n, m in model.named_modules() if hasattr(m, "lora_A") and len(getattr(m, "lora_A", {}))]
    if layers:
        for name, m in layers:
            for adapter in m.active_adapters:
                delta = m.lora_B[adapter].weight.double() @ m.lora_A[adapter].weight.double() * m.scaling[adapter]
                change += float(delta.pow(2).sum())
            weight = seed_params.get(name.removeprefix("base_model.model.") + ".weight")
            if weight is not None:
                base += float(weight.double().pow(2).sum())
    else:
        for name, p in model.named_parameters():
            if name in seed_params:
                change += float((p.double() - seed_params[name].double()).pow(2).sum())
                base += float(seed_params[name].double().pow(2).sum())
    return math.sqrt(change), math.sqrt(change / base) if base else 0.0


class AnalysisEvaluator(Evaluator):
    """Runs after ``benchmark`` (an evaluator of the same evaluation), on its saved answers."""

    name = "analysis"
    metrics = {"analysis.bleu4": Metric("BLEU-4 (chars) to the seed's answers", None),
               "analysis.rougel": Metric("ROUGE-L to the seed's answers", None),
               "analysis.similarity": Metric("embedding similarity to the seed's answers", None),
               "analysis.param_shift": Metric("parameter shift (L2)", None),
               "analysis.param_shift_rel": Metric("parameter shift, relative", None)}

    def __init__(self, benchmark: Evaluator):
        self.benchmark = benchmark
        self.sampled = benchmark.sampled

    def settings(self, cfg) -> dict:
        return {"benchmark": self.benchmark.name, "similarity_model": cfg.eval.similarity_model or "not set"}

    def prepare(self, ctx: EvalContext) -> None:
        self.encoder = None
        path = ctx.cfg.eval.similarity_model
        if not path:
            log.info("eval: analysis: embedding similarity skipped (set eval.similarity_model to a sentence-"
                     "transformers model, e.g. a local copy of all-MiniLM-L6-v2)")
            return
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as e:
            raise EvalError("eval.similarity_model needs sentence-transformers: pip install sentence-transformers") from e
        self.encoder = SentenceTransformer(path, device=str(ctx.device))

    def key(self, ctx: EvalContext) -> dict:
        return {"benchmark": self.benchmark.name, "benchmark_key": self.benchmark.key(ctx),
                "similarity_model": ctx.cfg.eval.similarity_model}

    def run(self, model, model_name: str, ctx: EvalContext, seed: int) -> dict[str, float]:
        ours = {r["id"]: r["prediction"] for r in self.benchmark.read_outputs(ctx, model_name, seed)}
        seeds = {r["id"]: r["prediction"] for r in self.benchmark.read_outputs(ctx, "seed", seed)}
        ids = [i for i in seeds if i in ours]
        if not ids:
            raise EvalError(f"analysis: no answers of {self.benchmark.name} for both the seed and {model_name}")
        rows = [{"id": i, "bleu4": bleu4_chars(seeds[i], ours[i]), "rougel": rougel_words(seeds[i], ours[i])}
                for i in ids]
        if self.encoder is not None:
            from sentence_transformers import util

            a = self.encoder.encode([seeds[i] for i in ids], convert_to_tensor=True)
            b = self.encoder.encode([ours[i] for i in ids], convert_to_tensor=True)
            for row, sim in zip(rows, util.pytorch_cos_sim(a, b).diagonal().tolist()):
                row["similarity"] = float(sim)
        ctx.write_outputs(self.name, model_name, seed, rows)
        shift, rel = parameter_shift(model, ctx.seed_model)
        out = {f"analysis.{k}": sum(r[k] for r in rows) / len(rows) for k in ("bleu4", "rougel", "similarity")
               if k in rows[0]}
        return {**out, "analysis.param_shift": shift, "analysis.param_shift_rel": rel}
