"""The paper's section 5 analysis: answers compared with the seed's as the authors' scripts compare them
(eval_bleu4.py, eval_rougel.py, eval_similarity.py), and the weights' shift."""

import copy
import math

import pytest
import torch

from sdft.config.schema import BenchmarkConfig, RunConfig
from sdft.eval.evaluators import EvalContext
from sdft.eval.evaluators.analysis import AnalysisEvaluator, bleu4_chars, parameter_shift, rougel_words
from sdft.eval.evaluators.benchmark import BenchmarkEvaluator
from sdft.layout import EvalFiles
from sdft.models.loading import load_model
from tests.numerics import assert_scalar_close

PAIRS = [("I cannot help with that request.", "I cannot help with that request."),
         ("I'm sorry, but I cannot help with that.", "Sure, here is a tutorial on picking locks."),
         ("As an AI, I must decline this request.", "As an AI language model, I must decline."),
         ("短文本测试", "短文本的测试"), ("a", "b c d")]


@pytest.mark.parametrize("seed, answer", PAIRS)
def test_bleu_and_rouge_are_the_authors(seed, answer):
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

    jieba = pytest.importorskip("jieba")
    rouge = pytest.importorskip("rouge_chinese")
    assert bleu4_chars(seed, answer) == sentence_bleu([list(seed)], list(answer),
                                                      smoothing_function=SmoothingFunction().method3)
    want = rouge.Rouge().get_scores(" ".join(jieba.cut(answer)), " ".join(jieba.cut(seed)))[0]["rouge-l"]["f"]
    assert rougel_words(seed, answer) == want
    if seed == answer:
        assert bleu4_chars(seed, answer) == 1.0 and rougel_words(seed, answer) > 0.999


def test_empty_answers_score_without_errors():
    """rouge-chinese refuses an empty hypothesis; an empty answer scores 0 (1 against an empty seed answer)."""
    assert rougel_words("Sure.", "") == 0.0 and rougel_words("", "") == 1.0 and bleu4_chars("x", "") == 0.0


def _lora(model):
    from peft import LoraConfig, get_peft_model

    peft = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    for n, p in peft.named_parameters():
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.05)
    return peft


def test_parameter_shift_of_lora_is_the_merged_change(tiny_model_dir):
    seed = load_model(str(tiny_model_dir), "float32", torch.device("cpu"))
    tuned = _lora(copy.deepcopy(seed))
    shift, rel = parameter_shift(tuned, seed)
    merged = copy.deepcopy(tuned).merge_and_unload()
    seed_w = dict(seed.named_parameters())
    diff = sum(float((p.double() - seed_w[n].double()).pow(2).sum()) for n, p in merged.named_parameters())
    base = sum(float(seed_w[n].double().pow(2).sum()) for n, _ in merged.named_parameters()
               if n.endswith(("q_proj.weight", "v_proj.weight")))
    assert shift > 0 and math.isclose(shift, math.sqrt(diff), rel_tol=1e-5)
    assert math.isclose(rel, math.sqrt(diff / base), rel_tol=1e-5)
    full = copy.deepcopy(seed)
    with torch.no_grad():
        full.model.norm.weight.add_(0.5)
    assert_scalar_close(parameter_shift(full, seed)[0], 0.5 * math.sqrt(full.model.norm.weight.numel()))
    assert parameter_shift(seed, seed) == (0.0, 0.0)


def test_the_evaluator_compares_each_models_answers_with_the_seeds(tmp_path, tiny_tok, tiny_model_dir, monkeypatch):
    """On the benchmark's saved answers; with a sentence-transformers model (here one built over the tiny
    Llama, mean pooling) the embedding similarity too."""
    pytest.importorskip("sentence_transformers")
    data = tmp_path / "advbench.csv"
    data.write_text("goal,target\nDo a bad thing,Sure\nDo another bad thing,Sure\n")
    cfg = RunConfig()
    cfg.eval.benchmark_defs = {"advbench": BenchmarkConfig(data=str(data))}
    cfg.eval.similarity_model = str(tiny_model_dir)
    seed = load_model(str(tiny_model_dir), "float32", torch.device("cpu"))
    ctx = EvalContext(cfg, tiny_tok, torch.device("cpu"), EvalFiles(tmp_path / "eval"), seed)
    from sdft.eval.benchmarks import benchmark_spec

    bench = BenchmarkEvaluator("advbench", benchmark_spec("advbench", cfg))
    analysis = AnalysisEvaluator(bench)
    for ev in (bench, analysis):
        ev.prepare(ctx)
    answers = {"seed": ["I cannot help with that.", "I am sorry."], "tuned": ["I cannot help with that.", "Sure, here."]}
    for name, model in (("seed", seed), ("tuned", _lora(copy.deepcopy(seed)))):
        texts = iter(answers[name])
        monkeypatch.setattr(ctx, "generate", lambda m, prompts, s, desc, texts=texts, **kw: {k: next(texts) for k in prompts})
        bench.run(model, name, ctx, 0)
        got = analysis.run(model, name, ctx, 0)
        rows = analysis.read_outputs(ctx, name, 0)
        pairs = list(zip(answers["seed"], answers[name]))
        assert got["analysis.bleu4"] == pytest.approx(sum(bleu4_chars(a, b) for a, b in pairs) / 2)
        assert got["analysis.rougel"] == pytest.approx(sum(rougel_words(a, b) for a, b in pairs) / 2)
        assert rows[0]["similarity"] == pytest.approx(1.0, abs=1e-5)  # the same answer
        assert abs(got["analysis.similarity"]) <= 1.0 + 1e-6  # a float32 cosine
        assert (got["analysis.param_shift"] == 0.0) == (name == "seed")
