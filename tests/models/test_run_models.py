"""The models a run loads: distillation and evaluation in ``generation.dtype``, training in ``model.dtype``."""

import torch

from sdft.config import load_config
from sdft.context import RunContext
from sdft.models.run_models import load_distill_seed, load_seed, load_tuned
from sdft.pipeline import Pipeline
from sdft.train.model import build_model

CPU = torch.device("cpu")


def test_generation_can_run_in_float16_while_training_stays_in_the_model_dtype(tiny_config):
    """The authors generated with ``--fp16`` and trained in bf16: ``generation.dtype=float16`` loads the
    distillation seed and every evaluated model in float16, training's model stays in ``model.dtype``."""
    path, out = tiny_config(train={"max_steps": 2, "save_every": 0})
    cfg = load_config(path, ["generation.dtype=float16"])
    assert cfg.generation_dtype == "float16" and load_config(path).generation_dtype == "float32"
    assert next(load_distill_seed(cfg, CPU).parameters()).dtype == torch.float16
    assert next(load_seed(cfg, CPU).parameters()).dtype == torch.float16
    assert next(build_model(cfg, CPU, None).parameters()).dtype == torch.float32
    Pipeline(RunContext(cfg)).run(["distill", "filter", "train"])
    assert {p.dtype for p in load_tuned(cfg, out / "train" / "final", CPU).parameters()} >= {torch.float16}
