"""Training activations, backward's peak, the generation engine's prefill and the loss head's memory,
counted on the meta device.

What a training step holds between forward and backward is what autograd saves. Rather than a formula
per architecture (RMSNorm's float32 copies, SwiGLU's four [tokens, intermediate] tensors, LoRA's dropout
masks differ between models and library versions), the decoder is built on the meta device and run
once under ``saved_tensors_hooks``, which see every tensor autograd keeps; weights (and views of them)
are left out, they are model states. Built with two and with three layers, the difference is one
layer's share (the first layer may save less: under LoRA its input needs no gradient), and a model of
any depth follows.

On the meta device PyTorch's attention takes its math path, which would keep the [heads, T, T]
probabilities; training on a GPU runs flash or memory-efficient attention, which keeps the output and
its log-sum-exp only. Planning runs the model with ``sdft_plan`` attention, an autograd function
that saves exactly that (query, key, value, output, float32 log-sum-exp), the set PyTorch's CPU flash
kernel saves too (``tests/plan/test_activations.py`` compares the count with a real CPU forward).

Backward can hold more than forward left: each layer's backward makes gradients of its activations
beside them (LoRA's float32 branch makes float32 ones), and under gradient checkpointing a layer is
recomputed while its gradients are made. So the same models also run forward and backward on the meta
device under ``_LiveBytes``, a dispatch mode that follows every tensor operators make until it is freed,
and the peak is taken (with checkpointing on and off; the weights' gradients are dropped as they come,
the plan counts them apart). A real CPU step traced by the C library's allocator agrees within a few
percent (``tests/plan/test_activations.py``).
"""

from __future__ import annotations

import copy
import warnings
import weakref
from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


@dataclass(frozen=True)
class Activations:
    """Bytes autograd saves for one micro-batch, ``two_layers + (layers - 2) x per_layer``, and the most
    its forward and backward hold at once, extrapolated from two and three layers the same way."""

    two_layers: int
    """The model cut to two layers: its embeddings, final norm and first two layers."""
    per_layer: int
    """A layer after the first."""
    layer_input: int
    """One layer's input [rows, T, H]: what gradient checkpointing keeps per layer."""
    layers: int
    backward_two: int
    """The two-layer model's peak from the end of forward through backward (gradients of the weights
    left out), without checkpointing."""
    backward_per_layer: int
    checkpointed_two: int
    """The same with (non-reentrant) gradient checkpointing."""
    checkpointed_per_layer: int

    def backward_peak(self, checkpointing: bool) -> int:
        """The most that forward and backward hold at once, the gradient of the decoder's output included."""
        if checkpointing:
            return self.checkpointed_two + (self.layers - 2) * self.checkpointed_per_layer
        return self.backward_two + (self.layers - 2) * self.backward_per_layer

    def saved(self, checkpointing: bool) -> int:
        """Held at the end of forward: every layer's saved tensors, or with (non-reentrant) gradient
        checkpointing every layer's input plus one layer recomputed during backward."""
        if checkpointing:
            outside = max(0, self.two_layers - 2 * self.per_layer)
            return self.layers * self.layer_input + self.per_layer + outside
        return self.two_layers + (self.layers - 2) * self.per_layer


class _FlashLikeAttention(torch.autograd.Function):
    """Causal attention's output shape, saving what flash attention saves for backward."""

    @staticmethod
    def forward(ctx, query, key, value):  # [B, heads, T, D], [B, kv_heads, T, D] x 2
        out = torch.empty_like(query)
        lse = query.new_empty(query.shape[:3], dtype=torch.float32)
        ctx.save_for_backward(query, key, value, out, lse)
        return out

    @staticmethod
    def backward(ctx, grad):
        query, key, value, _, _ = ctx.saved_tensors
        torch.empty_like(query, dtype=torch.float32)  # flash's float32 accumulator of the query's gradient
        return torch.empty_like(query), torch.empty_like(key), torch.empty_like(value)


def _plan_attention(module, query, key, value, attention_mask, **kwargs):
    out = _FlashLikeAttention.apply(query, key, value)
    return out.transpose(1, 2).contiguous(), None


def _register_plan_attention() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register("sdft_plan", _plan_attention)


def _with_layers(config, n: int):
    """A copy of ``config`` with ``n`` decoder layers (per-layer lists such as ``layer_types`` cut)."""
    config = copy.deepcopy(config)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    text.num_hidden_layers = n
    for key in ("layer_types",):
        value = getattr(text, key, None)
        if isinstance(value, list):
            setattr(text, key, value[:n])
    return config


def saved_tensor_bytes(model, rows: int, seq: int) -> tuple[int, int]:
    """(bytes autograd saves in ``model``'s decoder forward over a [rows, seq] batch, leaving out its
    parameters and views of them; bytes of the decoder's output, one layer's input [rows, seq, H])."""
    params = {id(p) for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor):
        base = t._base if t._base is not None else t
        if id(base) not in params and id(t) not in params:
            saved[id(base)] = base.numel() * base.element_size()
        return t  # kept alive by the graph until the count is done, so ids stay unique

    device = next(model.parameters()).device
    ids = torch.zeros(rows, seq, dtype=torch.long, device=device)
    decoder = (model.get_base_model() if hasattr(model, "get_base_model") else model).get_decoder()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        hidden = decoder(input_ids=ids).last_hidden_state
    return sum(saved.values()), hidden.numel() * hidden.element_size()


class _LiveBytes(TorchDispatchMode):
    """Bytes of the tensors operators make while it is active, alive now and at their peak. A storage
    counts once, from the operator that made it until the last tensor on it (views too) is freed; views
    of storages made before (weights, inputs) count nothing."""

    def __init__(self):
        super().__init__()
        self.live = self.peak = 0
        self._tensors: dict[int, int] = {}  # storage -> tensors alive on it

    def _release(self, storage: int, nbytes: int) -> None:
        self._tensors[storage] -= 1
        if not self._tensors[storage]:
            del self._tensors[storage]
            self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        returns = func._schema.returns
        for i, t in enumerate(tree_leaves(out)):
            if not isinstance(t, torch.Tensor):
                continue
            storage = t.untyped_storage()
            key, nbytes = storage._cdata, storage.nbytes()
            if key not in self._tensors:
                if i < len(returns) and returns[i].alias_info is not None:
                    continue  # a view or in-place result on a storage made before
                self._tensors[key] = 0
                self.live += nbytes
                self.peak = max(self.peak, self.live)
            self._tensors[key] += 1
            weakref.finalize(t, self._release, key, nbytes)
        return out


def backward_peak_bytes(model, rows: int, seq: int, checkpointing: bool) -> int:
    """The most ``model``'s decoder holds at once over a [rows, seq] batch, from its forward through its
    backward (from the output's gradient on), leaving out the weights and their gradients, which are
    dropped as they are made. The input embeddings are frozen meanwhile: their [vocab, H] gradient,
    made last, would set the peak of a shallow model and not of a deep one, which the difference between
    two and three layers must not mix (the plan counts it with the gradients)."""
    embeddings = [p for p in model.get_input_embeddings().parameters() if p.requires_grad]
    for p in embeddings:
        p.requires_grad_(False)
    if checkpointing:
        _set_checkpointing(model, True)
        if hasattr(model, "get_base_model"):
            model.enable_input_require_grads()  # peft: the frozen embeddings' output must carry gradients
    hooks = [p.register_post_accumulate_grad_hook(lambda p: setattr(p, "grad", None))
             for p in model.parameters() if p.requires_grad]
    device = next(model.parameters()).device
    ids = torch.zeros(rows, seq, dtype=torch.long, device=device)
    decoder = (model.get_base_model() if hasattr(model, "get_base_model") else model).get_decoder()
    try:
        with _LiveBytes() as live:
            hidden = decoder(input_ids=ids).last_hidden_state
            hidden.backward(torch.empty_like(hidden))
            del hidden
    finally:
        for h in hooks:
            h.remove()
        for p in embeddings:
            p.requires_grad_(True)
        if checkpointing:
            _set_checkpointing(model, False)
    return live.peak


def _set_checkpointing(model, on: bool) -> None:
    with warnings.catch_warnings():  # transformers renames the methods; training calls them by these names too
        warnings.simplefilter("ignore", FutureWarning)
        if on:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_disable()


def _as_prepared_4bit(model, dtype: torch.dtype) -> None:
    """Make ``model`` hold and compute what QLoRA's does (``train.method=qlora``): its linear layers but
    the LM head are bitsandbytes' 4-bit layers, which cast their input to the compute dtype and their
    output back to the input's dtype and save nothing for backward (the weight is frozen, the input not
    needed); peft's ``prepare_model_for_kbit_training`` casts every other parameter to float32, so norms,
    embeddings and what follows them run in float32."""
    head = model.get_output_embeddings()

    def to_compute(module, args):
        module._plan_input_dtype = args[0].dtype
        return (args[0].to(dtype), *args[1:])

    def back(module, args, output):
        return output.to(module._plan_input_dtype)

    four_bit = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m is not head]
    for module in four_bit:
        module.requires_grad_(False)
        module.register_forward_pre_hook(to_compute)
        module.register_forward_hook(back)
    quantized = {id(m.weight) for m in four_bit}
    for p in model.parameters():
        if id(p) not in quantized:
            p.data = p.data.to(torch.float32)


def plan_model(config, dtype: torch.dtype, lora: dict | None, device: str = "meta", attention: str = "sdft_plan",
               quantized: bool = False):
    """The causal LM of ``config`` as training builds it (LoRA adapters by peft; ``quantized``: on a
    4-bit base prepared as QLoRA prepares it), in train mode on ``device``."""
    from transformers import AutoModelForCausalLM

    _register_plan_attention()
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, attn_implementation=attention, dtype=dtype)
    model.config.use_cache = False
    if quantized:
        _as_prepared_4bit(model, dtype)
    if lora is not None:
        from peft import LoraConfig, get_peft_model

        with warnings.catch_warnings():  # peft asks transformers a deprecated question; not the user's concern
            warnings.simplefilter("ignore", FutureWarning)
            model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", **lora))
    return model.train()


def count_activations(config, dtype: torch.dtype, rows: int, seq: int, lora: dict | None = None,
                      quantized: bool = False) -> Activations:
    """What training the causal LM of transformers ``config`` saves for a [rows, seq] micro-batch.

    Args:
        config: the model's transformers config (its ``config.json``).
        dtype: the weights' dtype in training (activations follow it; norms may upcast to float32).
        lora: ``LoraConfig`` keyword arguments (``r``, ``lora_alpha``, ``lora_dropout``,
            ``target_modules``) when LoRA adapters train, else None (every weight trains).
        quantized: QLoRA's 4-bit base (``_as_prepared_4bit``), ``dtype`` its compute dtype.
    """
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    counts = {}
    for n in (2, 3):
        model = plan_model(_with_layers(config, n), dtype, lora, quantized=quantized)
        saved, layer_input = saved_tensor_bytes(model, rows, seq)
        counts[n] = (saved, backward_peak_bytes(model, rows, seq, False), backward_peak_bytes(model, rows, seq, True))
    (two, back_two, ckpt_two), (three, back_three, ckpt_three) = counts[2], counts[3]
    return Activations(two_layers=two, per_layer=three - two, layer_input=layer_input, layers=text.num_hidden_layers,
                       backward_two=back_two, backward_per_layer=back_three - back_two,
                       checkpointed_two=ckpt_two, checkpointed_per_layer=ckpt_three - ckpt_two)


def prefill_bytes(config, dtype: torch.dtype, rows: int, tokens: int) -> int:
    """The most the generation engine's first prefill holds beside its KV cache and the weights: the
    model's forward without gradients over [rows, tokens] (logits for the last position only, as the
    engine asks), traced under ``_LiveBytes`` on the meta device with the flash-like attention (no
    [tokens, tokens] scores). Without gradients a layer's tensors are freed before the next layer's, so
    the peak is one layer's largest live set beside the residual stream, the embeddings and the rotary
    tables; taken from two and three layers like the activations, in case a model keeps more per layer."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    peaks = []
    for n in (2, 3):
        model = plan_model(_with_layers(config, n), dtype, None).eval()
        ids = torch.zeros(rows, tokens, dtype=torch.long, device="meta")
        with torch.no_grad(), _LiveBytes() as live:
            model(input_ids=ids, use_cache=False, logits_to_keep=1)
        peaks.append(live.peak)
    return peaks[0] + (text.num_hidden_layers - 2) * (peaks[1] - peaks[0])


def loss_head_bytes(tokens: int, hidden: int, vocab: int, dtype_bytes: int, fused: bool, head_trained: bool,
                    cuda: bool = True) -> int:
    """The loss head's peak beyond the activations, for ``tokens`` positions of one micro-batch.

    Plain (transformers' loss): the [tokens, V] logits at the model's width, their float32 copy and
    log-softmax, and in backward the float32 gradient beside them: ``max(w + 8, 12)`` bytes a logit.
    Fused (``sdft_kernels``): the gradient of the hidden states [tokens, H] and one chunk's logits
    (about as large as the hidden states, ``default_chunk_rows``); with a trained head also its gradient
    [V, H]. On CUDA (Triton) the chunk's gradient is formed in place and the head's gradient accumulates
    at the model's width; the CPU path (``cuda=False``) works on a float32 copy of the chunk and
    accumulates the head's gradient in float32 (then cast to the model's width, a copy below float32).
    """
    if not fused:
        return tokens * vocab * max(dtype_bytes + 8, 12)
    from sdft_kernels.fused_linear_ce import default_chunk_rows

    chunk = min(tokens, default_chunk_rows(tokens, hidden, vocab)) * vocab * (dtype_bytes + (0 if cuda else 4))
    weight_grad = 0
    if head_trained:
        weight_grad = vocab * hidden * (dtype_bytes if cuda else 4 + (dtype_bytes if dtype_bytes != 4 else 0))
    return tokens * hidden * dtype_bytes + chunk + weight_grad


def divergence_head_bytes(positions: int, scored: int, hidden: int, vocab: int, dtype_bytes: int, fused: bool,
                          head_trained: bool, cuda: bool = True) -> int:
    """On-policy training's loss head beyond the student's activations, for a micro-batch of ``positions``
    student positions of which ``scored`` are scored answer tokens.

    Plain (``token_divergence``): first the student's [positions, V] logits at the model's width beside
    the scored rows of both models' logits; then, at the end of forward, those scored rows, their float32
    copies (none when they are float32 already) and the float32 math over them (both log-softmaxes, the
    teacher's probabilities, the difference and the product: 5 values a logit). Fused
    (``sdft_kernels.fused_linear_divergence``): the scored hidden states of both models and their
    gradient [scored, H], a chunk of both logits (float32 math on the CPU path: six more), and with a
    trained head its gradient as in ``loss_head_bytes``.
    """
    if not fused:
        copies = 0 if dtype_bytes == 4 else 8
        return max(positions * vocab * dtype_bytes + scored * vocab * 2 * dtype_bytes,
                   scored * vocab * (2 * dtype_bytes + copies + 20))
    from sdft_kernels.fused_linear_ce import default_chunk_rows
    from sdft_kernels.fused_linear_divergence import CPU_MIN_CHUNK_ROWS

    rows = default_chunk_rows(scored, hidden, vocab)
    if not cuda:
        rows = max(rows, CPU_MIN_CHUNK_ROWS)
    chunk = min(scored, rows) * vocab * (2 * dtype_bytes + (0 if cuda else 24))
    weight_grad = 0
    if head_trained:
        weight_grad = vocab * hidden * (dtype_bytes if cuda else 4 + (dtype_bytes if dtype_bytes != 4 else 0))
    return 3 * scored * hidden * dtype_bytes + chunk + weight_grad
