"""``sdft plan``'s model-state figures: DeepSpeed's own estimators for full fine-tuning, exact parameter
and LoRA counts from the config alone, and the command on the tiny model and a 70B config."""

import itertools
import json

import pytest
import torch

from sdft.cli import main
from sdft.plan.cards import CARDS, card
from sdft.plan.memory import ZeroSetting, frozen_bytes, model_states, trainable_states
from sdft.plan.shape import model_shape
from tests.conftest import EXAMPLES


@pytest.mark.parametrize("total, largest", [(107_328, 16_640), (6_738_415_616, 131_072_000),
                                            (70_553_706_496, 1_050_673_152)])
def test_full_fine_tuning_equals_deepspeeds_estimators(total, largest):
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    for gpus, nodes, offload in itertools.product([1, 2, 8], [1, 4, 8], [False, True]):
        cpu, gpu = estimate_zero2_model_states_mem_needs(total, gpus, nodes, offload)
        got = trainable_states(total, largest, ZeroSetting(2, offload), gpus, nodes)
        assert (got.gpu, got.cpu) == (gpu, cpu), (gpus, nodes, offload)
        for params, zero_init in itertools.product([False, True] if offload else [False], [True, False]):
            cpu, gpu, _ = estimate_zero3_model_states_mem_needs(total, largest, gpus, nodes, offload, params, zero_init)
            got = trainable_states(total, largest, ZeroSetting(3, offload, params), gpus, nodes, zero_init)
            assert (got.gpu, got.cpu) == (gpu, cpu), (gpus, nodes, offload, params, zero_init)


def test_zero_stages_partition_more_and_more():
    t, largest = 1_000_000_000, 100_000_000
    gpu = [trainable_states(t, largest, ZeroSetting(s), 8).gpu for s in (0, 1, 2, 3)]
    assert gpu == [20 * t, 2 * t + 2 * t + 16 * t // 8, 2 * t + 18 * t // 8, 4 * largest + 18 * t // 8]
    assert gpu == sorted(gpu, reverse=True)


def test_the_shape_counts_what_the_loaded_model_and_peft_count(tiny_model_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    shape = model_shape(AutoConfig.from_pretrained(tiny_model_dir))
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert shape.total_params == sum(p.numel() for p in model.parameters())
    assert shape.largest_layer_params == max(p.numel() for p in model.parameters())
    for targets, r in ((["q_proj", "v_proj"], 8), (["all-linear"], 4)):
        lora = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                              LoraConfig(r=r, target_modules="all-linear" if targets == ["all-linear"] else targets))
        assert shape.lora_params(targets, r) == sum(p.numel() for p in lora.parameters() if p.requires_grad), targets


def test_lora_and_qlora_keep_the_frozen_base_whole_below_zero3_and_partition_it_at_zero3(tiny_model_dir):
    from transformers import AutoConfig

    shape = model_shape(AutoConfig.from_pretrained(tiny_model_dir))
    base = frozen_bytes(shape, "lora", 2)
    assert base == 2 * shape.total_params and frozen_bytes(shape, "full", 2) == 0
    quantized = sum(i * o for n, (i, o) in shape.linear_params.items() if n != "lm_head")
    four_bit = int(quantized * (0.5 + 1 / 64 + 4 / (64 * 256)))
    # Training: the rest in float32 (prepare_model_for_kbit_training); generation keeps it at its width.
    assert frozen_bytes(shape, "qlora", 2) == four_bit + 4 * (shape.total_params - quantized)
    assert frozen_bytes(shape, "qlora", 2, training=False) == four_bit + 2 * (shape.total_params - quantized)
    lora = shape.lora_params(["all-linear"], 8)
    z2 = model_states(shape, "lora", lora, 2, ZeroSetting(2), 4)
    z3 = model_states(shape, "lora", lora, 2, ZeroSetting(3), 4)
    assert z2.gpu == trainable_states(lora, shape.largest_layer_params, ZeroSetting(2), 4).gpu + base
    assert z3.gpu == trainable_states(lora, shape.largest_layer_params, ZeroSetting(3), 4).gpu + base // 4


def test_cards_by_name_or_memory():
    assert card("h100") is CARDS["h100"] and card("48GiB").memory_gib == 48
    assert card("80GB").memory_gib == pytest.approx(80e9 / 2**30)
    with pytest.raises(Exception, match="--gpu 'lots'"):
        card("lots")


def test_the_command_plans_the_tiny_model_and_a_70b_config(tmp_path, capsys):
    assert main(["plan", str(EXAMPLES / "tiny.yaml"), "--gpus", "2", "--gpu", "24GiB"]) == 0
    out = capsys.readouterr().out
    assert "2 24.0 GiB card" in out and "ZeRO-3+offload params" in out and "recommended" in out
    llama70 = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 8192,
               "intermediate_size": 28672, "num_hidden_layers": 80, "num_attention_heads": 64,
               "num_key_value_heads": 8, "vocab_size": 128256, "torch_dtype": "bfloat16"}
    (tmp_path / "config.json").write_text(json.dumps(llama70))
    fits = {}
    for ckpt in ("true", "false"):
        assert main(["plan", str(EXAMPLES / "tiny.yaml"), f"model.path={tmp_path}", "model.dtype=bfloat16",
                     "train.method=full", "train.micro_batch_size=1", "train.cutoff_len=2048",
                     f"train.gradient_checkpointing={ckpt}", "--gpus", "8", "--nodes", "8", "--gpu", "H100"]) == 0
        out = capsys.readouterr().out
        assert "70,553.7M parameters" in out and "loss head" in out
        fits[ckpt] = {line.split()[0]: line.split()[-1] for line in out.splitlines() if line.strip().startswith("ZeRO")}
    # 1.4 TB of model states, or 1/64 of them at ZeRO-3 (22 GiB); with checkpointing the activations of
    # 2048 tokens are 80 layer inputs (2.5 GiB), without it every layer's saved tensors (61 GiB).
    assert fits["true"]["ZeRO-0"] == "no" and fits["true"]["ZeRO-3"] == "yes"
    assert fits["false"]["ZeRO-3"] == "no" and fits["false"]["ZeRO-3+offload"] == "yes"


def test_bad_cluster_sizes_are_refused(capsys):
    assert main(["plan", str(EXAMPLES / "tiny.yaml"), "--gpus", "0"]) == 2
    assert "--gpus 0" in capsys.readouterr().err


def test_no_weights_are_read(tiny_model_dir, monkeypatch):
    """The plan needs config.json alone: loading weights would fail here."""
    from transformers import AutoConfig, AutoModelForCausalLM

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", lambda *a, **k: pytest.fail("weights were read"))
    assert model_shape(AutoConfig.from_pretrained(tiny_model_dir)).total_params > 0
    assert torch.empty(0).device.type == "cpu"  # meta-device construction left the default device alone


def test_the_kv_cache_is_the_one_the_engine_allocates(tiny_model_dir, tiny_tok, monkeypatch):
    import sdft.models.engine as engine
    from sdft.config.schema import SamplingConfig
    from sdft.models.loading import load_model
    from sdft.plan.memory import kv_cache_bytes

    caches = []
    real = engine.SlotCache
    monkeypatch.setattr(engine, "SlotCache", lambda *a: caches.append(real(*a)) or caches[-1])
    model = load_model(str(tiny_model_dir), "float32", torch.device("cpu"))
    prompts = {f"p{i}": tiny_tok(f"question {i} " * (i + 1))["input_ids"] for i in range(5)}
    sampling = SamplingConfig(max_new_tokens=7)
    list(engine.ContinuousEngine(model, tiny_tok, 3, sampling, 0).run_ids(prompts, desc=""))
    from transformers import AutoConfig

    shape = model_shape(AutoConfig.from_pretrained(tiny_model_dir))
    capacity = max(map(len, prompts.values())) + 7
    assert caches and caches[0].bytes() == kv_cache_bytes(shape, 3, capacity, 4) > 0


@pytest.mark.parametrize("method, teacher, copy", [("lora", "seed", False), ("lora", "ema", True), ("full", "seed", True)])
def test_on_policy_training_counts_its_samples_teacher_and_sampling(tiny_model_dir, method, teacher, copy):
    from transformers import AutoConfig

    from sdft.config import load_config
    from sdft.plan.cards import card
    from sdft.plan.memory import kv_cache_bytes
    from sdft.plan.plan import TrainingMemory, plan

    config = AutoConfig.from_pretrained(tiny_model_dir)
    shape = model_shape(config)
    over = [f"model.path={tiny_model_dir}", f"train.method={method}", f"train.on_policy.teacher={teacher}"]
    sft = TrainingMemory(load_config(EXAMPLES / "tiny.yaml", over), config, shape, 4, 1)
    cfg = load_config(EXAMPLES / "tiny.yaml", [*over, "train.objective=on_policy", "train.on_policy.samples_per_prompt=2"])
    mem = TrainingMemory(cfg, config, shape, 4, 1)
    # Two samples a prompt: twice the rows of prompt + answer, each at most train.cutoff_len (up to the
    # rotary tables, one for all rows).
    assert mem.activations(False) == pytest.approx(2 * sft.activations(False), rel=1e-2)
    assert mem.teacher() == (4 * mem.trainable if copy else 0)
    t = cfg.train
    kv = kv_cache_bytes(shape, t.micro_batch_size * t.grad_accum * 2, t.cutoff_len, 4)
    assert mem.sampling(ZeroSetting(2)) == kv
    assert mem.sampling(ZeroSetting(3)) == kv + shape.total_params * 4 * 3 // 4  # the other ranks' shares, gathered
    assert mem.supported(ZeroSetting(3)) is not copy and mem.supported(ZeroSetting(2))
    report = plan(cfg, config, card("H100"), 4)
    rows = {r["setting"]: r for r in report["zero"]}
    assert rows["ZeRO-3"]["supported"] is not copy
    assert report["recommendation"]["stage"] == 0 and report["training"]["on_policy"]


def test_distillation_in_zero3_mode_holds_a_share_and_what_it_gathers(tiny_model_dir):
    from transformers import AutoConfig

    from sdft.config import load_config
    from sdft.plan.cards import card
    from sdft.plan.plan import GIB, generation

    config = AutoConfig.from_pretrained(tiny_model_dir)
    shape = model_shape(config)
    whole = shape.total_params * 4
    for gather, gathered in ((True, whole), (False, shape.largest_layer_params * 4)):
        cfg = load_config(EXAMPLES / "tiny.yaml", [f"model.path={tiny_model_dir}", "distill.mode=zero3",
                                                   f"distill.zero3_gather={str(gather).lower()}"])
        distill, evaluation = generation(cfg, config, shape, card("H100"), world=4)
        assert distill["weights_gib"] * GIB == pytest.approx(whole // 4 + gathered)
        assert evaluation["weights_gib"] * GIB == whole and evaluation["mode"] == "replica"
        assert generation(cfg, config, shape, card("H100"), world=1)[0]["weights_gib"] * GIB == whole  # one rank


def _memory(tiny_model_dir, overrides, gpus=2, cuda=True):
    from transformers import AutoConfig

    from sdft.config import load_config
    from sdft.plan.plan import TrainingMemory

    config = AutoConfig.from_pretrained(tiny_model_dir)
    cfg = load_config(EXAMPLES / "tiny.yaml", [f"model.path={tiny_model_dir}", *overrides])
    return TrainingMemory(cfg, config, model_shape(config), gpus, 1, cuda=cuda)


def test_plain_pytorch_on_one_gpu_holds_weights_gradients_and_moments_at_the_trained_width(tiny_model_dir):
    """ZeRO-0 on one GPU is sdft's plain PyTorch step (torch's AdamW, no float32 master copy): 4 copies of
    the trained weights at their width; LoRA's adapters are float32 beside the base at its width. On two
    GPUs ZeRO-0 is DeepSpeed's stage 0, counted as DeepSpeed does (20 bytes a parameter)."""
    full = ["train.method=full", "model.dtype=bfloat16"]
    one, two = _memory(tiny_model_dir, full, gpus=1), _memory(tiny_model_dir, full, gpus=2)
    t = one.shape.total_params
    assert one.states(ZeroSetting(0)).gpu == 4 * 2 * t
    assert one.phases(ZeroSetting(0)).held == 3 * 2 * t  # the gradients are set to None after each step
    assert two.states(ZeroSetting(0)).gpu == 20 * t
    assert _memory(tiny_model_dir, ["train.method=full", "model.dtype=float32"], gpus=1).states(ZeroSetting(0)).gpu == 16 * t
    lora = _memory(tiny_model_dir, ["train.method=lora", "model.dtype=bfloat16"], gpus=1)
    assert lora.states(ZeroSetting(0)).gpu == 16 * lora.trainable + 2 * t
    # bitsandbytes' 8-bit AdamW: a byte a moment and a float32 scale a block of 256; it updates in place.
    eight = _memory(tiny_model_dir, [*full, "train.optimizer=adamw_8bit"], gpus=1).phases(ZeroSetting(0))
    assert eight.held == 2 * t + int(t * (2 + 8 / 256)) and eight.step == eight.gradients == 2 * t


def test_the_peak_is_what_stays_plus_the_largest_phase_never_their_sum(tiny_model_dir):
    """8 tokens of a tiny model: AdamW's step outgrows the activations, so the peak is what stays between
    steps plus the step's phase; 4 x 512 tokens: forward and backward set it. The CPU's AdamW steps one
    parameter at a time (two temporaries of the largest), CUDA's all at once (one copy of each)."""
    for cuda in (True, False):
        small = _memory(tiny_model_dir, ["train.method=full", "train.micro_batch_size=1", "train.cutoff_len=8"], cuda=cuda)
        large = {head: _memory(tiny_model_dir, ["train.method=full", "train.micro_batch_size=4", "train.cutoff_len=512",
                                                f"train.fused_loss={head}"], cuda=cuda) for head in ("on", "off")}
        for setting in (ZeroSetting(0), ZeroSetting(1), ZeroSetting(2), ZeroSetting(3)):
            m = small.phases(setting)
            forward = max(small.activations(False) + small.head(), small.backward_peak(False)) + m.backward
            assert m.step >= max(forward, m.gradients)
            assert small.peak(setting, False) == m.held + m.step
            # Backward holds more than forward saved (each layer's gradients beside its activations): it
            # sets the peak beside the fused loss's small head, not beside the full logits, freed first.
            fused, plain = large["on"], large["off"]
            m = fused.phases(setting)
            assert fused.activations(False) + fused.head() < fused.backward_peak(False)
            assert fused.peak(setting, False) == m.held + fused.backward_peak(False) + m.backward
            assert plain.activations(False) + plain.head() > plain.backward_peak(False) == fused.backward_peak(False)
            assert plain.peak(setting, False) == m.held + plain.activations(False) + plain.head() + m.backward
        assert small.phases(ZeroSetting(2, offload_optimizer=True)).step == 0  # the CPU steps
    t, share = small.shape.total_params, small.shape.total_params // 2
    plain = _memory(tiny_model_dir, ["train.method=full", "model.dtype=float32"], gpus=1, cuda=False)
    assert plain.phases(ZeroSetting(0)).step == 4 * t + 2 * 4 * plain.shape.largest_layer_params
    plain = _memory(tiny_model_dir, ["train.method=full", "model.dtype=float32"], gpus=1, cuda=True)
    assert plain.phases(ZeroSetting(0)).step == 4 * t + 4 * t
    assert small.phases(ZeroSetting(2)).step == 4 * (1 + 2) * share  # float32 gradients, two temporaries


def test_zero1_holds_every_16_bit_gradient_at_the_end_of_backward(tmp_path):
    """ZeRO-1 partitions the optimizer states but not the 16-bit gradients: on 64 GPUs its peak holds a
    70B model's 131 GiB of them, where ZeRO-2's holds a 64th."""
    from transformers import LlamaConfig

    from sdft.config import load_config
    from sdft.plan.memory import LIVE_PARAMETERS
    from sdft.plan.plan import TrainingMemory

    config = LlamaConfig(hidden_size=8192, intermediate_size=28672, num_hidden_layers=80, num_attention_heads=64,
                         num_key_value_heads=8, vocab_size=128256)
    cfg = load_config(EXAMPLES / "tiny.yaml", ["model.dtype=bfloat16", "train.method=full", "train.micro_batch_size=1",
                                               "train.cutoff_len=2048", "train.gradient_checkpointing=true"])
    mem = TrainingMemory(cfg, config, model_shape(config), 8, 8)
    t = mem.shape.total_params
    assert mem.peak(ZeroSetting(1), True) >= mem.phases(ZeroSetting(1)).held + 2 * t
    assert mem.peak(ZeroSetting(1), True) - mem.peak(ZeroSetting(2), True) > 0.95 * 2 * t  # less the activations ZeRO-2 peaks with
    # ZeRO-3 keeps what it gathers for reuse in backward, at most DeepSpeed's live-parameter limit.
    assert mem.phases(ZeroSetting(3)).backward == 2 * LIVE_PARAMETERS
    assert mem.phases(ZeroSetting(3, offload_optimizer=True, offload_params=True)).backward == 2 * LIVE_PARAMETERS


def test_zero3_on_one_rank_gathers_nothing_and_on_two_the_whole_small_model(tiny_model_dir):
    one, two = _memory(tiny_model_dir, ["train.method=full"], gpus=1), _memory(tiny_model_dir, ["train.method=full"])
    assert one.phases(ZeroSetting(3)).backward == 0
    assert two.phases(ZeroSetting(3)).backward == 2 * two.shape.total_params


def test_generation_counts_the_first_prefill_over_every_slot(tiny_model_dir):
    """The engine's first prefill runs every slot's prompt at once, after its KV cache is allocated: a
    card holding the weights and the cache but not the prefill does not fit."""
    from transformers import AutoConfig

    from sdft.config import load_config
    from sdft.plan.activations import prefill_bytes
    from sdft.plan.cards import Card
    from sdft.plan.plan import GIB, generation, needed_bytes

    config = AutoConfig.from_pretrained(tiny_model_dir)
    shape = model_shape(config)
    cfg = load_config(EXAMPLES / "tiny.yaml", [f"model.path={tiny_model_dir}", "distill.batch_size=64",
                                               "distill.cutoff_len=300"])
    widest = max(o for n, (_, o) in shape.linear_params.items() if n != "lm_head")
    prefill = prefill_bytes(config, torch.float32, 64, 300)
    # At least one layer's MLP (three [rows, tokens, intermediate]) beside the residual stream.
    assert prefill >= 64 * 300 * (3 * widest + 2 * shape.hidden_size) * 4
    row = generation(cfg, config, shape, Card("big", 80.0))[0]
    assert row["stage"] == "distill" and row["prefill_gib"] == prefill / GIB
    without = needed_bytes(int((row["weights_gib"] + row["kv_cache_gib"]) * GIB)) / GIB
    between = Card("tight", without + (needed_bytes(int((row["weights_gib"] + row["kv_cache_gib"] + row["prefill_gib"])
                                                        * GIB)) / GIB - without) / 2)
    assert generation(cfg, config, shape, between)[0]["fits"] is False and row["fits"] is True
