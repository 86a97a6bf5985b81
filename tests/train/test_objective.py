"""The SFT objective (``sdft.train.objective``): its loss module, fused and plain, with packing
(``sdft.train.packing``) on every architecture they are enabled for (fused + packed equals plain
logits run one example at a time), and how it splits a step's global batch."""


import copy

import pytest
import torch

from sdft.config.schema import TrainConfig
from sdft.data.tokenize import collate, tokenize_rows
from sdft.errors import ConfigError
from sdft.train.objective import CausalLMLoss, SFTObjective, build_loss_module, fused_loss_blocker
from sdft.train.packing import collate_packed, packing_blocker, plan_packed_step
from tests.conftest import math_rows
from tests.numerics import assert_close_scaled, assert_scalar_close, requires_bf16_sdpa

ARCHS = ["llama", "mistral", "qwen2", "qwen3"]


def tiny(arch: str, vocab: int, attn: str = "sdpa", **extra):
    """A random 2-layer model of ``arch`` (fp32, sdpa or eager attention, no dropout, untied head)."""
    import transformers

    cls = {"llama": "Llama", "mistral": "Mistral", "qwen2": "Qwen2", "qwen3": "Qwen3", "gemma2": "Gemma2"}[arch]
    kw = dict(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=1024, tie_word_embeddings=False)
    if arch == "mistral":
        kw["sliding_window"] = None
    if arch in ("qwen3", "gemma2"):
        kw["head_dim"] = 8
    kw.update(extra)
    torch.manual_seed(0)
    cfg = getattr(transformers, f"{cls}Config")(**kw)
    cfg._attn_implementation = "eager" if arch == "gemma2" else attn  # gemma2 has no sdpa
    return getattr(transformers, f"{cls}ForCausalLM")(cfg).train()


def _rows(n: int = 7) -> list[dict]:
    return [{"id": r["id"], "instruction": r["question"], "response": r["answer"]} for r in math_rows(n)]


@pytest.fixture
def data(tiny_tok):
    return tokenize_rows(_rows(), tiny_tok, "math")


def _grads(module):
    return {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("arch, attn", [(a, "sdpa") for a in ARCHS] + [("llama", "eager"), ("qwen3", "eager")])
def test_fused_packed_equals_plain_one_by_one(arch, attn, data, tiny_tok):
    """The summed loss and every gradient of a packed fp32 batch through the fused loss equal those of
    the examples run alone through a float64 copy's own logits (``tests.numerics`` budgets). Eager
    attention adds its mask to the scores, so the block mask reaches it as an additive one (a bool mask
    would mask nothing)."""
    model = tiny(arch, len(tiny_tok), attn)
    assert fused_loss_blocker(model) is None and packing_blocker(model) is None
    ref = copy.deepcopy(model).double()
    plain = CausalLMLoss(ref, fused=False)
    alone = 0.0
    for i in range(len(data)):
        loss = plain(**collate(data, [i], tiny_tok.pad_token_id))
        loss.backward()
        alone += loss.item()
    g_alone = _grads(ref)
    lengths = [len(x) for x in data.input_ids]
    plan = plan_packed_step(lengths, list(range(len(data))), 1, 2 * max(lengths))
    assert len(plan[0]) < len(data)  # something is packed
    loss = CausalLMLoss(model, fused=True)(**collate_packed(data, plan[0], tiny_tok.pad_token_id))
    loss.backward()
    assert_scalar_close(loss.item(), alone)
    assert g_alone.keys() == _grads(model).keys()
    for n, g in _grads(model).items():
        assert_close_scaled(g, g_alone[n], msg=n)


@requires_bf16_sdpa
def test_fused_under_bf16_autocast_and_lora_matches_plain(data, tiny_tok):
    """LoRA adapters' gradients through the fused loss under bf16 autocast match the plain path's (both
    run the head's matmul in bf16, so each is a bf16 computation of the same gradient: two budgets)."""
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny("llama", len(tiny_tok)), LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0,
                                                                    target_modules="all-linear"))
    for p in model.parameters():  # lora_B starts at zero: give the adapters something to differ by
        if p.requires_grad:
            torch.nn.init.normal_(p, std=0.1)
    b = collate(data, list(range(4)), tiny_tok.pad_token_id)
    out = {}
    for fused in (False, True):
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = CausalLMLoss(model, fused)(**b)
        loss.backward()
        out[fused] = (loss.item(), _grads(model))
    assert_scalar_close(out[True][0], out[False][0], torch.bfloat16, sides=2)
    assert out[True][1].keys() == out[False][1].keys() and out[True][1]
    for n, g in out[True][1].items():
        assert_close_scaled(g, out[False][1][n], torch.bfloat16, msg=n, sides=2)


def test_blockers_name_the_reason_and_on_fails(tiny_tok):
    from peft import LoraConfig, get_peft_model

    gemma2 = tiny("gemma2", len(tiny_tok), final_logit_softcapping=30.0)
    assert "final_logit_softcapping=30.0" in fused_loss_blocker(gemma2)
    assert "model_type 'gemma2'" in packing_blocker(gemma2)
    assert build_loss_module(gemma2, "auto").fused is False
    with pytest.raises(ConfigError, match="train.fused_loss=on: the model's config sets final_logit_softcapping"):
        build_loss_module(gemma2, "on")
    head_lora = get_peft_model(tiny("llama", len(tiny_tok)), LoraConfig(r=4, target_modules=["q_proj", "lm_head"]))
    assert "adapted by LoRA" in fused_loss_blocker(head_lora)
    llama = tiny("llama", len(tiny_tok))
    llama.config._attn_implementation = "flash_attention_2"
    assert "does not take the block-diagonal mask" in packing_blocker(llama)
    assert "sliding-window" in packing_blocker(tiny("mistral", len(tiny_tok), sliding_window=64))
    assert build_loss_module(llama, "off").fused is False


MORE_ARCHS = ["gemma", "gemma3_text", "phi3", "olmo2", "granite", "qwen2_moe", "qwen3_moe", "mixtral", "stablelm",
              "starcoder2", "gpt_neox", "helium", "smollm3", "exaone4"]


@pytest.mark.parametrize("model_type", MORE_ARCHS + ["cohere", "phi"])
def test_fused_loss_equals_the_models_own_logits_or_is_refused(model_type):
    """``auto`` turns the fused loss on from the config alone, so every architecture it admits must give
    the model's own loss and gradients (fp32 against a float64 copy's own logits); the ones that
    transform or bias their logits (cohere's logit_scale, phi's head bias) are refused with the reason."""
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.for_model(model_type, vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                               tie_word_embeddings=False, pad_token_id=None, bos_token_id=None, eos_token_id=None)
    if hasattr(cfg, "head_dim"):
        cfg.head_dim = 8
    cfg._attn_implementation = "eager"
    cfg._experts_implementation = "eager"  # the grouped-matmul experts have no float64 kernel
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg).train()
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    blocker = fused_loss_blocker(model)
    if model_type in ("cohere", "phi"):
        assert blocker and ("logit_scale" in blocker or "bias" in blocker)
        return
    assert blocker is None
    ids = torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(1))
    labels = ids.clone()
    labels[:, :5] = -100
    ref = copy.deepcopy(model).double()
    ref_loss = CausalLMLoss(ref, False)(input_ids=ids, labels=labels)
    ref_loss.backward()
    ref_grads = _grads(ref)
    for fused in (False, True):
        model.zero_grad()
        loss = CausalLMLoss(model, fused)(input_ids=ids, labels=labels)
        loss.backward()
        assert_scalar_close(loss.item(), ref_loss.item())
        assert _grads(model).keys() == ref_grads.keys()
        for n, g in _grads(model).items():
            assert_close_scaled(g, ref_grads[n], msg=f"fused={fused} {n}")


@pytest.mark.parametrize("packing", ["off", "on"])
def test_sft_step_batches_split_the_global_batch_over_ranks_and_micro_steps(data, tiny_tok, packing):
    """Every example of the global batch lands in exactly one micro-batch of one rank, every rank is
    told the same token count (the whole step's response tokens), and the stand-in trains nothing."""
    t = TrainConfig(micro_batch_size=2, grad_accum=2, packing=packing, fused_loss="off", cutoff_len=1024,
                    template="math")
    batch_ids = [5, 0, 3, 6, 1, 2]  # 6 examples for 8 slots: some micro-batches are short or empty
    seen, counts = [], set()
    for rank in range(2):
        objective = SFTObjective(t, _rows(), tiny_tok, world=2, rank=rank)
        assert objective.data.input_ids == data.input_ids
        objective.loss_module(tiny("llama", len(tiny_tok)))
        assert objective.packing is (packing == "on")
        work = objective.step_batches(batch_ids)
        assert len(work.micro) == t.grad_accum
        counts.add(work.n_tokens)
        for micro in work.micro:
            if micro is None:
                continue
            ids = micro["input_ids"].tolist()
            for i in range(len(data)):  # which examples does this micro-batch hold (as a contiguous run)?
                ex = data.input_ids[i]
                if any(row[k:k + len(ex)] == ex for row in ids for k in range(len(row) - len(ex) + 1)):
                    seen.append(i)
    assert sorted(seen) == sorted(batch_ids)
    assert counts == {sum(data.response_tokens()[i] for i in batch_ids)}
    stand_in = objective.stand_in()
    assert (stand_in["labels"] == -100).all() and stand_in["input_ids"].shape[1] <= 8
