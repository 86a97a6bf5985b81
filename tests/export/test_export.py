import pytest
import torch
from transformers import AutoModelForCausalLM

from sdft.config import load_config
from sdft.context import RunContext
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
