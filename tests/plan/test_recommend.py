"""``sdft plan``'s recommendation (the cheapest setting that fits, as a DeepSpeed config sdft accepts and
the overrides), its time estimate, and the GPU check that refuses a command planned not to fit."""

import json
import types

import pytest

from sdft.cli import main
from sdft.config import load_config
from sdft.distributed.deepspeed import fill_ds_config, load_ds_config, shipped_configs
from sdft.errors import ConfigError
from sdft.plan.check import check_fits, configured_setting
from sdft.plan.memory import ZeroSetting
from sdft.plan.recommend import ORDER, SHIPPED, cheapest, ds_config, micro_batches, write_ds_config
from sdft.plan.timing import TRAIN_EFFICIENCY, estimate, measure_workload, stated_workload, train_flops_per_token
from tests.conftest import EXAMPLES

LLAMA70 = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 8192,
           "intermediate_size": 28672, "num_hidden_layers": 80, "num_attention_heads": 64,
           "num_key_value_heads": 8, "vocab_size": 128256, "torch_dtype": "bfloat16"}


def test_micro_batches_keep_the_global_batch_largest_first():
    assert micro_batches(4, 2) == [(4, 2), (2, 4), (1, 8)]
    assert micro_batches(3, 2) == [(3, 2), (2, 3), (1, 6)]
    assert micro_batches(1, 5) == [(1, 5)]


def test_the_cheapest_fit_prefers_no_offload_then_less_partitioning_then_no_checkpointing():
    # A made-up cost: only ZeRO-3 with micro-batch 1 fits, or anything with checkpointing.
    def needed(setting, ckpt, micro):
        return 10 if ckpt or (setting == ZeroSetting(3) and micro == 1) else 100

    choice = cheapest(needed, 4, 2, 50, world=8)
    assert (choice.setting, choice.checkpointing, choice.micro_batch, choice.grad_accum) == (ZeroSetting(3), False, 1, 8)
    assert choice.overrides() == ["train.deepspeed=zero3", "train.micro_batch_size=1", "train.grad_accum=8",
                                  "train.gradient_checkpointing=false"]
    assert cheapest(lambda *a: 100, 4, 2, 50, world=8) is None
    assert ORDER.index((ZeroSetting(3), False)) < ORDER.index((ZeroSetting(0), True)) < \
        ORDER.index((ZeroSetting(2, offload_optimizer=True), False))
    one_gpu = cheapest(lambda *a: 1, 2, 1, 50, world=1)
    assert one_gpu.plain_pytorch and one_gpu.overrides()[0] == "train.deepspeed="


@pytest.mark.parametrize("setting", sorted({s for s, _ in ORDER}, key=lambda s: s.name), ids=lambda s: s.name)
def test_every_recommended_ds_config_is_one_sdft_accepts_with_that_setting(setting, tmp_path):
    if setting in SHIPPED:
        assert ds_config(setting) == load_ds_config(SHIPPED[setting])[0]
    path = tmp_path / "ds.json"
    write_ds_config(setting, path)
    cfg = load_config(EXAMPLES / "tiny.yaml", [f"train.deepspeed={path}"])
    filled = fill_ds_config(json.loads(path.read_text()), cfg, world=2, hidden_size=64)
    assert filled["zero_optimization"]["stage"] == setting.stage
    assert configured_setting(cfg) == setting  # what the GPU check reads back is what was written
    assert set(SHIPPED.values()) == set(shipped_configs())


def test_the_command_recommends_writes_the_config_and_estimates_the_time(tmp_path, capsys):
    (tmp_path / "config.json").write_text(json.dumps(LLAMA70))
    ds = tmp_path / "ds.json"
    assert main(["plan", str(EXAMPLES / "tiny.yaml"), f"model.path={tmp_path}", "model.dtype=bfloat16",
                 "train.method=full", "train.cutoff_len=2048", "--gpus", "8", "--nodes", "8", "--gpu", "H100",
                 "--examples", "50000", "--avg-tokens", "600", "--write-ds-config", str(ds)]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("recommended"))
    # 2048-token rows: without checkpointing even one row's activations (61 GiB) and ZeRO-3's states do not fit.
    assert "ZeRO-3, micro-batch 4 x accumulation 2, gradient checkpointing on" in line
    assert "time (upper estimate): distill" in out and "(stated)" in out
    assert configured_setting(load_config(EXAMPLES / "tiny.yaml", [f"train.deepspeed={ds}"])) == ZeroSetting(3)
    assert main(["plan", str(EXAMPLES / "tiny.yaml"), "--gpu", "24GiB"]) == 0
    assert "time: not estimated (the card is given by its memory only)" in capsys.readouterr().out
    assert main(["plan", str(EXAMPLES / "tiny.yaml"), "--examples", "5"]) == 2
    assert "--avg-tokens None: give both" in capsys.readouterr().err


def test_training_time_is_its_flops_over_the_cards_rate():
    from transformers import AutoConfig

    from sdft.plan.cards import card
    from sdft.plan.shape import model_shape

    n = 1_000_000
    assert [train_flops_per_token(n, m, c) for m, c in (("full", False), ("lora", False), ("full", True))] == \
        [6 * n, 4 * n, 8 * n]
    cfg = load_config(EXAMPLES / "tiny.yaml", ["train.max_steps=10", "train.method=full"])
    shape = model_shape(AutoConfig.for_model("llama", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                             num_attention_heads=4, vocab_size=500))
    h100 = card("H100")
    got = estimate(cfg, shape, h100, 2, stated_workload(100, 300, cfg), 2)
    t = cfg.train
    tokens = 10 * t.micro_batch_size * t.grad_accum * 2 * 300
    assert got["train_tokens"] == tokens and got["optimizer_steps"] == 10
    assert got["seconds"]["train"] == pytest.approx(6 * shape.total_params * tokens / (2 * 989e12 * TRAIN_EFFICIENCY))
    assert got["seconds"]["distill"] > 0 and "eval" not in got["seconds"]  # no test set was counted


def test_the_workload_is_read_from_local_data(tiny_model_dir):
    from sdft.data.examples import read_examples

    cfg = load_config(EXAMPLES / "tiny.yaml", [f"model.path={tiny_model_dir}"])
    work = measure_workload(cfg)
    assert work.examples == len(read_examples(cfg.data.train, cfg.data, limit=cfg.data.limit)) > 0
    assert work.prompt_tokens > 0 and work.response_tokens > 0 and work.test_examples > 0
    assert measure_workload(load_config(EXAMPLES / "tiny.yaml", ["data.train=hub:gsm8k?config=main"])) is None


def test_a_command_planned_not_to_fit_the_gpu_is_refused_before_anything_runs(tiny_model_dir, monkeypatch, tmp_path):
    from sdft import cli

    cfg = load_config(EXAMPLES / "tiny.yaml", [f"model.path={tiny_model_dir}"])
    with pytest.raises(ConfigError) as e:
        check_fits(cfg, ["distill", "filter", "train", "eval"], 2**20, 1, 1)  # a 1 MiB card
    msg = str(e.value)
    assert "train: ZeRO-0, micro-batch" in msg and "GiB short" in msg and "distill: the weights" in msg
    assert "eval: the weights" in msg and "check_memory=false runs it anyway" in msg
    check_fits(cfg, ["distill", "train", "eval"], 80 * 2**30, 1, 1)  # fits: nothing raised
    check_fits(load_config(EXAMPLES / "tiny.yaml", [f"model.path={tiny_model_dir}", "check_memory=false"]),
               ["train"], 2**20, 1, 1)
    check_fits(cfg, ["filter"], 2**20, 1, 1)  # no training step, no engine
    # The CLI asks the card for its memory (and torchrun for the ranks) on CUDA only.
    monkeypatch.setattr("torch.cuda.get_device_properties", lambda d: types.SimpleNamespace(total_memory=2**20))
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    seen = {}
    monkeypatch.setattr("sdft.plan.check.check_fits", lambda *a: seen.setdefault("args", a))
    cli.check_gpu_memory(cfg, ("train",), "cuda:0")
    assert seen["args"][1:] == (["train"], 2**20, 2, 2)
