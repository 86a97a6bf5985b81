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


class _MallocPeak:
    """The C library's bytes in use (``mallinfo2``: heap and mmap'd blocks), sampled after every operator:
    a real step's peak, counted apart from the plan's own bookkeeping."""

    def __init__(self):
        import ctypes

        class Info(ctypes.Structure):
            _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                       "fsmblks", "uordblks", "fordblks", "keepcost")]

        self._libc = ctypes.CDLL("libc.so.6")
        self._libc.mallinfo2.restype = Info

    def used(self) -> int:
        info = self._libc.mallinfo2()
        return info.uordblks + info.hblkhd

    def mode(self):
        from torch.utils._python_dispatch import TorchDispatchMode

        outer = self

        class Sample(TorchDispatchMode):
            peak = 0

            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                Sample.peak = max(Sample.peak, outer.used())
                return out

        return Sample


@pytest.mark.numeric
@pytest.mark.parametrize("checkpointing", [False, True], ids=["plain", "checkpointed"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("lora", [None, LORA], ids=["full", "lora"])
def test_the_meta_backward_peak_is_what_a_real_cpu_step_allocates(dtype, lora, checkpointing):
    """The same model on the CPU, forward and backward (the plan's stand-in attention, the weights'
    gradients dropped as the plan drops them), its peak taken from glibc's own count after every
    operator: the meta trace is 90-100% of it, the rest being the autograd graph's and Python's own
    small objects, which the trace does not see (measured 0.93-0.98; a trace counting a tensor's storage
    once per view, or freeing a saved tensor when its Python object goes, was 0.3-0.7 or over 1)."""
    import gc
    import platform

    from sdft.plan.activations import backward_peak_bytes

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("mallinfo2 is glibc's")
    rows, seq = 3, 256
    planned = backward_peak_bytes(plan_model(_config("llama", 3), dtype, lora), rows, seq, checkpointing)
    malloc = _MallocPeak()
    for _ in range(2):  # the first run also allocates the kernels' one-time state
        torch.manual_seed(0)
        real = plan_model(_config("llama", 3), dtype, lora, device="cpu", attention="sdft_plan")
        gc.collect()
        before, mode = malloc.used(), malloc.mode()
        mode.peak = 0
        with mode():
            backward_peak_bytes(real, rows, seq, checkpointing)
        measured = mode.peak - before
    assert 0.9 * measured <= planned <= measured


@pytest.mark.numeric
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_meta_prefill_is_what_a_real_cpu_prefill_allocates(dtype):
    """The engine's first prefill (no gradients, logits of the last position only) on the CPU, the same
    stand-in attention, its peak from glibc's count: the meta trace is 90-100% of it."""
    import gc
    import platform

    from sdft.plan.activations import prefill_bytes

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("mallinfo2 is glibc's")
    rows, tokens = 8, 256
    planned = prefill_bytes(_config("llama", 3), dtype, rows, tokens)
    malloc = _MallocPeak()
    for _ in range(2):  # the first run also allocates the kernels' one-time state
        real = plan_model(_config("llama", 3), dtype, None, device="cpu", attention="sdft_plan").eval()
        ids = torch.zeros(rows, tokens, dtype=torch.long)
        gc.collect()
        before, mode = malloc.used(), malloc.mode()
        mode.peak = 0
        with torch.no_grad(), mode():
            real(input_ids=ids, use_cache=False, logits_to_keep=1)
        measured = mode.peak - before
    assert 0.9 * measured <= planned <= measured
