"""The benchmarks a config names (``sdft.eval.benchmarks``): settings, refusals before any work, and the
``knowledge`` benchmark through lm-eval, 0-shot."""

import json

import pytest
import torch

from sdft.config import load_config
from sdft.config.schema import RunConfig
from sdft.errors import ConfigError
from sdft.eval.benchmarks import GENERATIVE, benchmark_evaluators, benchmark_spec
from sdft.eval.evaluators import EvalContext
from sdft.layout import EvalFiles
from sdft.models.loading import load_model
from tests.conftest import run_cli


def test_every_built_in_benchmark_reads_the_authors_files_at_one_commit():
    for name, spec in GENERATIVE.items():
        assert spec.data.startswith("hub:") and "sail-sg/sdft/bfb6c255fccdce7459235c20f19a3b9817a9cd5d/data/" in spec.data
        assert spec.scorer and spec.template in ("alpaca", "math_infer"), name
    assert GENERATIVE["advbench_gcg"].suffix.startswith("describing.") and not GENERATIVE["advbench"].suffix


def test_a_definition_changes_only_what_it_sets(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("eval:\n  benchmarks: [gsm8k, mine, analysis]\n  analysis_benchmark: mine\n  benchmark_defs:\n"
                    "    gsm8k: {data: local.json, template: llama3_math_infer}\n"
                    "    mine: {data: m.jsonl, scorer: refusal, suffix: '!!'}\n")
    cfg = load_config(path)
    gsm8k = benchmark_spec("gsm8k", cfg)
    assert (gsm8k.data, gsm8k.template, gsm8k.instruction_field, gsm8k.scorer) == \
        ("local.json", "llama3_math_infer", "question", "math")
    mine = benchmark_spec("mine", cfg)
    assert (mine.instruction_field, mine.template, mine.scorer, mine.suffix) == ("instruction", "alpaca", "refusal", "!!")
    assert [e.name for e in benchmark_evaluators(cfg)] == ["gsm8k", "mine", "analysis"]


@pytest.mark.parametrize("overrides, match", [
    (["eval.benchmarks=[gsm9k]"], r"unknown benchmark 'gsm9k'"),
    (["eval.benchmarks=[gsm8k,gsm8k]"], "listed twice"),
    (["eval.benchmarks=[humaneval]", "eval.evaluators=[humaneval]"], "both name 'humaneval'"),
    (["eval.benchmarks=[analysis]"], r"eval.analysis_benchmark='advbench'"),
    (["eval.benchmarks=[advbench,analysis]", "eval.analysis_benchmark=humaneval"], "analysis_benchmark='humaneval'"),
    (["eval.benchmark_defs={mine: {template: alpaca}}"], r"benchmark_defs\.mine: a new benchmark needs data"),
    (["eval.benchmark_defs={mine: {data: x, scorer: nope}}"], r"benchmark_defs\.mine\.scorer: unknown gate 'nope'"),
    (["eval.benchmark_defs={gsm8k: {template: gsm}}"], r"benchmark_defs\.gsm8k\.template: 'gsm'"),
    (["eval.benchmark_defs={knowledge: {data: x}}"], r"knowledge is not a generative benchmark"),
    (["eval.benchmark_defs={mine: [1]}"], r"eval\.benchmark_defs\.mine: expected a mapping"),
])
def test_bad_benchmark_settings_are_refused_naming_the_option(overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, overrides)


def test_a_benchmarks_bad_records_stop_the_run_before_any_work(tiny_config, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"question": "q", "answer": "a"}, {"question": "", "answer": "b"}]))
    path, out = tiny_config()
    res = run_cli("run", str(path), "eval.benchmarks=[gsm8k]", f"eval.benchmark_defs={{gsm8k: {{data: {bad}}}}}")
    assert res.returncode == 2 and "eval.benchmarks: gsm8k:" in res.stderr and "bad.json" in res.stderr
    assert not (out / "distill").exists()


def test_knowledge_runs_lm_eval_zero_shot_under_its_own_names(tmp_path, tiny_tok, tiny_model_dir):
    pytest.importorskip("lm_eval")
    from tests.eval.evaluators.test_lm_eval import _task_folder

    tasks = _task_folder(tmp_path, [1, 0, 1, 0, 0])
    cfg = RunConfig()
    cfg.eval.benchmarks, cfg.eval.knowledge_tasks, cfg.eval.lm_eval_include_path = ["knowledge"], ["tiny_mc"], str(tasks)
    (ev,) = benchmark_evaluators(cfg)
    ctx = EvalContext(cfg, tiny_tok, torch.device("cpu"), EvalFiles(tmp_path / "eval"))
    ev.prepare(ctx)
    assert ev.key(ctx)["num_fewshot"] == 0 and ev.columns() == [("tiny_mc", "knowledge.tiny_mc.acc")]
    metrics = ev.run(load_model(str(tiny_model_dir), "float32", torch.device("cpu")), "seed", ctx, 0)
    assert set(metrics) >= {"knowledge.tiny_mc.acc"} and 0.0 <= metrics["knowledge.tiny_mc.acc"] <= 1.0
    assert ev.describe("knowledge.tiny_mc.acc").higher_is_better is True
