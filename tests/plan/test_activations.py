"""The activations ``sdft plan`` counts on the meta device are what a real forward saves on the CPU (where
PyTorch's attention is its flash kernel, saving what the plan's stand-in saves), byte for byte, for full
fine-tuning and LoRA, float32 and bfloat16, odd shapes, and architectures beyond Llama."""

import pytest
import torch

from sdft.plan.activations import count_activations, loss_head_bytes, plan_model, saved_tensor_bytes

LORA = dict(r=4, lora_alpha=8, lora_dropout=0.1, target_modules="all-linear")


def _config(kind: str, layers: int):
    from transformers import LlamaConfig, Qwen3Config

    dims = dict(hidden_size=96, intermediate_size=160, num_hidden_layers=layers, num_attention_heads=6,
                num_key_value_heads=2, vocab_size=300)
    if kind == "qwen3":  # per-head q/k norms, explicit head_dim, per-layer attention types
        return Qwen3Config(head_dim=24, **dims)
    return LlamaConfig(**dims)


@pytest.mark.parametrize("kind", ["llama", "qwen3"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("lora", [None, LORA], ids=["full", "lora"])
def test_the_meta_count_is_what_a_real_cpu_forward_saves(kind, dtype, lora):
    rows, seq, layers = 3, 37, 5
    planned = count_activations(_config(kind, layers), dtype, rows, seq, lora)
    torch.manual_seed(0)
    real = plan_model(_config(kind, layers), dtype, lora, device="cpu", attention="sdpa")
    saved, layer_input = saved_tensor_bytes(real, rows, seq)
    assert planned.saved(checkpointing=False) == saved > 0
    assert planned.layer_input == layer_input == rows * seq * 96 * dtype.itemsize
    assert planned.per_layer > 0 and planned.layers == layers


def test_the_count_leaves_out_weights_and_grows_with_the_tokens():
    config = _config("llama", 4)
    small, large = (count_activations(config, torch.float32, 2, seq) for seq in (16, 32))
    # Everything saved scales with the tokens (flash-like attention keeps no [T, T] matrix), so twice the
    # tokens save twice the bytes, up to the few [T, head_dim] rotary tables shared by every layer.
    assert 2 * small.saved(False) - large.saved(False) == pytest.approx(0, abs=2 * 2 * 16 * 16 * 4)


def test_checkpointing_keeps_each_layers_input_and_one_layer():
    a = count_activations(_config("llama", 6), torch.bfloat16, 2, 40)
    outside = a.two_layers - 2 * a.per_layer
    assert a.saved(True) == 6 * a.layer_input + a.per_layer + outside
    assert a.saved(True) < a.saved(False) == outside + 6 * a.per_layer


@pytest.mark.parametrize("dtype_bytes", [4, 2])
def test_the_fused_head_holds_one_chunk_and_the_gradients_the_plain_head_every_logit(dtype_bytes):
    from sdft_kernels.fused_linear_ce import default_chunk_rows

    n, h, v = 1000, 64, 5000
    chunk = default_chunk_rows(n, h, v)
    assert loss_head_bytes(n, h, v, dtype_bytes, fused=False, head_trained=True) == n * v * max(dtype_bytes + 8, 12)
    frozen = loss_head_bytes(n, h, v, dtype_bytes, fused=True, head_trained=False, cuda=True)
    assert frozen == n * h * dtype_bytes + chunk * v * dtype_bytes
    trained_cpu = loss_head_bytes(n, h, v, dtype_bytes, fused=True, head_trained=True, cuda=False)
    cast = dtype_bytes if dtype_bytes != 4 else 0  # the float32 accumulator's copy at the weight's width
    assert trained_cpu == n * h * dtype_bytes + chunk * v * (dtype_bytes + 4) + v * h * (4 + cast)
    assert trained_cpu < loss_head_bytes(n, h, v, dtype_bytes, fused=False, head_trained=True)


@pytest.mark.parametrize("dtype_bytes", [4, 2])
def test_the_divergence_head_counts_the_scored_logits_of_both_models(dtype_bytes):
    from sdft.plan.activations import divergence_head_bytes
    from sdft_kernels.fused_linear_ce import default_chunk_rows
    from sdft_kernels.fused_linear_divergence import CPU_MIN_CHUNK_ROWS

    positions, scored, h, v = 4000, 500, 64, 5000
    copies = 0 if dtype_bytes == 4 else 8  # float32 copies of both models' scored logits
    plain = divergence_head_bytes(positions, scored, h, v, dtype_bytes, fused=False, head_trained=False)
    assert plain == max(positions * v * dtype_bytes + scored * v * 2 * dtype_bytes,
                        scored * v * (2 * dtype_bytes + copies + 20))
    chunk = max(default_chunk_rows(scored, h, v), CPU_MIN_CHUNK_ROWS)
    cpu = divergence_head_bytes(positions, scored, h, v, dtype_bytes, fused=True, head_trained=False, cuda=False)
    assert cpu == 3 * scored * h * dtype_bytes + chunk * v * (2 * dtype_bytes + 24) < plain


@pytest.mark.parametrize("lora", [LORA, dict(LORA, target_modules=["q_proj", "v_proj"])], ids=["all-linear", "q-v"])
def test_the_qlora_count_is_what_a_real_4bit_forward_saves(tmp_path, lora):
    """QLoRA as sdft builds it (bitsandbytes NF4 base, ``prepare_model_for_kbit_training``, peft LoRA):
    the 4-bit layers save nothing, and the float32 norms and embeddings make the rest run in float32."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig, LlamaForCausalLM

    rows, seq, layers = 3, 37, 4
    torch.manual_seed(0)
    LlamaForCausalLM(_config("llama", layers)).to(torch.bfloat16).save_pretrained(tmp_path)
    q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                           bnb_4bit_compute_dtype=torch.bfloat16)
    # float32 attention here: sdpa works at every CPU kernel level (bfloat16's does not below AVX-512).
    real = AutoModelForCausalLM.from_pretrained(tmp_path, quantization_config=q, dtype=torch.bfloat16,
                                                attn_implementation="sdpa", device_map={"": "cpu"}).train()
    real = prepare_model_for_kbit_training(real, use_gradient_checkpointing=False)
    real = get_peft_model(real, LoraConfig(task_type="CAUSAL_LM", **lora)).train()
    saved, layer_input = saved_tensor_bytes(real, rows, seq)
    planned = count_activations(_config("llama", layers), torch.bfloat16, rows, seq, lora, quantized=True)
    assert planned.saved(checkpointing=False) == saved > 0
    assert planned.layer_input == layer_input == rows * seq * 96 * 4  # float32 from the embeddings on
    lora_bf16 = count_activations(_config("llama", layers), torch.bfloat16, rows, seq, lora)
    assert saved > lora_bf16.saved(checkpointing=False)  # what counting QLoRA as LoRA in bfloat16 missed
