import pytest

from sdft.config import RunConfig
from sdft.distributed.deepspeed import fill_ds_config, load_ds_config, shipped_configs, zero_stage
from sdft.errors import ConfigError


@pytest.mark.parametrize("name", ["zero1", "zero2", "zero2_offload", "zero3", "zero3_offload"])
def test_shipped_configs_fill_completely(name):
    cfg = RunConfig()
    cfg.train.micro_batch_size, cfg.train.grad_accum, cfg.train.precision = 3, 5, "bf16"
    raw, source = load_ds_config(name)
    ds = fill_ds_config(raw, cfg, world=4, hidden_size=64, source=source)
    assert (ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"], ds["train_batch_size"]) == (3, 5, 60)
    assert ds["bf16"]["enabled"] is True and ds["gradient_clipping"] == 1.0 and ds["fp16"]["enabled"] is False
    assert ds["zero_optimization"]["reduce_bucket_size"] == 64 * 64
    assert zero_stage(ds) == int(name[4])
    assert "auto" not in str(ds)
    assert raw["train_batch_size"] == "auto"  # the loaded file itself is not modified


def test_contradictions_are_errors_naming_both_sides(tmp_path):
    cfg = RunConfig()
    with pytest.raises(ConfigError, match=r"mine.json: gradient_accumulation_steps=8 contradicts train.grad_accum \(= 4\)"):
        fill_ds_config({"gradient_accumulation_steps": 8}, cfg, 1, 64, "mine.json")
    with pytest.raises(ConfigError, match=r"train_batch_size=8 contradicts .*world size 2"):
        fill_ds_config({"train_batch_size": 8}, cfg, 2, 64, "mine.json")
    with pytest.raises(ConfigError, match=r"bf16.enabled=True contradicts train.precision"):
        fill_ds_config({"bf16": {"enabled": True}}, cfg, 1, 64, "mine.json")
    with pytest.raises(ConfigError, match="has a 'optimizer' section"):
        fill_ds_config({"optimizer": {"type": "AdamW"}}, cfg, 1, 64, "mine.json")
    with pytest.raises(ConfigError, match="fp16 is not supported"):
        fill_ds_config({"fp16": {"enabled": True}}, cfg, 1, 64, "mine.json")
    with pytest.raises(ConfigError, match=r"cannot fill \"auto\" for zero_optimization.sub_group_size"):
        fill_ds_config({"zero_optimization": {"stage": 3, "sub_group_size": "auto"}}, cfg, 1, 64, "mine.json")
    # Agreeing explicit values are fine.
    ds = fill_ds_config({"gradient_accumulation_steps": 4, "train_batch_size": 8}, cfg, 1, 64, "mine.json")
    assert ds["train_micro_batch_size_per_gpu"] == 2


def test_user_paths_and_unknown_names(tmp_path):
    p = tmp_path / "custom.json"
    p.write_text('{"zero_optimization": {"stage": 2}}')
    raw, source = load_ds_config(str(p))
    assert raw["zero_optimization"]["stage"] == 2 and source == str(p)
    with pytest.raises(ConfigError, match=r"train.deepspeed='zero9': no such file; shipped configs: \['zero1', 'zero2'"):
        load_ds_config("zero9")
    with pytest.raises(ConfigError, match=r"distill.deepspeed='zero9'"):
        load_ds_config("zero9", "distill.deepspeed")
    bad = tmp_path / "bad.json"
    bad.write_text("{oops")
    with pytest.raises(ConfigError, match=r"bad.json:1: not valid JSON"):
        load_ds_config(str(bad))
    assert sorted(shipped_configs()) == ["zero1", "zero2", "zero2_offload", "zero3", "zero3_offload"]
    assert zero_stage(None) == 0
