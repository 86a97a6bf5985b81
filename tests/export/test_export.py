import json
from dataclasses import replace

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM

from sdft.config import load_config
from sdft.context import RunContext
from sdft.export.model_card import BUILTIN_BASES, model_card
from sdft.layout import RunLayout
from sdft.models.builtin import SMOLLM2
from sdft.models.loading import load_model
from sdft.models.run_models import load_tuned
from sdft.pipeline import Pipeline
from tests.numerics import assert_close_scaled


@pytest.mark.parametrize("method", ["lora", "full"])
def test_export_loads_without_peft_and_matches_the_tuned_model(tiny_config, method):
    path, out = tiny_config(train={"method": method, "max_steps": 3, "lr": 1e-2, "save_every": 0})
    cfg = load_config(path)
    ctx = RunContext(cfg)
    Pipeline(ctx).run(["distill", "filter", "train", "export"])
    exported = AutoModelForCausalLM.from_pretrained(out / "export" / "model")
    assert not any("lora" in n for n, _ in exported.named_parameters())
    assert list((out / "export" / "model").glob("*.safetensors"))
    tuned = load_tuned(cfg, ctx.layout.final, torch.device("cpu"))
    seed = load_model(cfg.model.path, "float32", torch.device("cpu"))
    x = torch.tensor([ctx.tok("The answer is 5.")["input_ids"]])
    with torch.no_grad():
        want, got, base = tuned(x).logits, exported(x).logits, seed(x).logits
    assert_close_scaled(got, want, sides=2)  # merged weights: the same function, summed in another order
    assert (got - base).abs().max() > 1e-3  # training changed something, so the check above has teeth
    _check_card(out / "export" / "model" / "README.md", cfg, ctx.layout)


def _front_matter(text: str) -> dict:
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def _check_card(path, cfg, layout):
    text = path.read_text(encoding="utf-8")
    front = _front_matter(text)
    assert front["library_name"] == "transformers"
    assert {"sdft", cfg.train.method} <= set(front["tags"])
    stats = json.loads(layout.filter_stats.read_text())
    assert f"{stats['accepted']} of {stats['total']} rewrites" in text
    summary = json.loads(layout.final_summary.read_text())
    assert f"| steps | {summary['steps']} |" in text
    assert "Not evaluated" in text  # no eval stage ran
    assert "base_model" not in front  # a local folder is not a hub id


def test_model_card_reports_the_evaluation_and_the_hub_sources(tiny_config, tmp_path):
    path, _ = tiny_config()
    cfg = load_config(path)
    cfg = replace(cfg, model=replace(cfg.model, path="someone/seed-model"),
                  data=replace(cfg.data, train="hub:someone/task-data", test="data/test.jsonl"))
    layout = RunLayout(tmp_path / "run")
    layout.eval.eval_json.parent.mkdir(parents=True)
    layout.eval.eval_json.write_text(json.dumps({
        "seed": {"task_accuracy": 0.25, "safety_refusal_rate": 0.5, "kept_tokens": 100},
        "tuned": {"task_accuracy": 0.5, "safety_refusal_rate": 0.5, "kept_tokens": 100, "note": "text"},
        "delta": {"task_accuracy": 0.25, "safety_refusal_rate": 0.0}}))
    text = model_card(cfg, layout, "bfloat16")
    front = _front_matter(text)
    assert front["base_model"] == "someone/seed-model"
    assert front["datasets"] == ["someone/task-data"]
    assert "| task_accuracy | 0.25 | 0.5 | +0.25 |" in text
    assert "| safety_refusal_rate | 0.5 | 0.5 | +0 |" in text
    assert "kept_tokens" not in text  # no delta: not a score
    assert "Not evaluated" not in text and "What the filter kept" not in text  # no filter record
    assert "| saved dtype | bfloat16 |" in text


def test_model_card_names_the_builtin_base(tiny_config, tmp_path):
    path, _ = tiny_config()
    cfg = load_config(path)
    card = model_card(replace(cfg, model=replace(cfg.model, path=SMOLLM2)), RunLayout(tmp_path), "float32")
    assert _front_matter(card)["base_model"] == BUILTIN_BASES[SMOLLM2]
    assert "datasets" not in _front_matter(card)  # a local file is no hub data set
