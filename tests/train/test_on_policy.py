"""On-policy self-distillation (``sdft.train.on_policy``, ``sdft.train.teacher``): the loss against a
plain float64 computation of each divergence, the teachers' weights, the prompts, and the per-step samples."""

import contextlib
import copy

import pytest
import torch

from sdft.config.schema import RunConfig
from sdft.config.validate import validate
from sdft.errors import ConfigError, DataError
from sdft.train.on_policy import OnPolicyObjective, encode_prompt_pairs
from sdft.train.teacher import Teacher
from tests.conftest import math_rows
from tests.kernels.test_fused_linear_divergence import reference_divergence
from tests.train.test_objective import tiny


def _rows(n=6):
    return [{"id": r["id"], "instruction": r["question"], "response": r["answer"]} for r in math_rows(n)]


def _cfg(**on_policy) -> RunConfig:
    cfg = RunConfig()
    cfg.train.objective, cfg.train.template, cfg.train.cutoff_len = "on_policy", "math", 1024
    cfg.train.micro_batch_size, cfg.train.grad_accum = 2, 2
    cfg.train.on_policy.sampling.max_new_tokens = 12
    for k, v in on_policy.items():
        setattr(cfg.train.on_policy, k, v)
    return validate(cfg)


def _lora(model, seed=1):
    from peft import LoraConfig, get_peft_model

    peft = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear"))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # lora_B starts at zero: make the student differ from the seed
        for n, p in peft.named_parameters():
            if "lora_B" in n:
                p.copy_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return peft


class _Backend:
    """The one thing the objective asks of a backend: the model to sample with."""

    def __init__(self, model):
        self.model = model

    def generating(self):
        return contextlib.nullcontext(self.model)


@pytest.mark.parametrize("divergence, beta, top_k, skip_first, method", [
    ("forward_kl", 0.5, 0, 3, "lora"), ("reverse_kl", 0.5, 0, 0, "lora"), ("jsd", 0.3, 0, 2, "lora"),
    ("forward_kl", 0.5, 7, 1, "lora"), ("jsd", 0.5, 5, 0, "lora"), ("forward_kl", 0.5, 0, 2, "full"),
    ("reverse_kl", 0.5, 4, 0, "full")])
@pytest.mark.parametrize("fused", [True, False])
def test_loss_and_gradients_equal_a_float64_reference(tiny_tok, divergence, beta, top_k, skip_first, method, fused):
    """float64 tiny Llama with the seed teacher (under LoRA: adapters disabled; under full fine-tuning:
    a copy taken before the weights moved, its own head included): the summed divergence over the
    scored tokens and the trainable weights' gradients equal a plain computation: the seed (an
    untouched copy) on teacher prompt + answer, the student's own logits on prompt + answer, the
    divergence written out per token."""
    cfg = _cfg(divergence=divergence, jsd_beta=beta, top_k=top_k, skip_first=skip_first)
    cfg.train.fused_loss = "on" if fused else "off"
    cfg.train.method = method
    base = tiny("llama", len(tiny_tok)).double()
    seed = copy.deepcopy(base).eval()
    model = _lora(base) if method == "lora" else base
    objective = OnPolicyObjective(cfg, _rows(), tiny_tok, 1, 0, torch.device("cpu"), None)
    module = objective.loss_module(model)
    if method == "full":  # "training" moves every weight, the head too, after the teacher's copy was taken
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.05 * torch.randn_like(p))
    assert objective.fused is fused
    g = torch.Generator().manual_seed(0)
    # Answers of very different lengths, one shorter than skip_first (nothing of it is scored).
    answers = [(0, torch.randint(3, 200, (9,), generator=g).tolist()), (3, torch.randint(3, 200, (2,), generator=g).tolist()),
               (5, torch.randint(3, 200, (5,), generator=g).tolist())]
    batch = objective._collate(answers)
    loss = module(**batch)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()

    ref = torch.zeros((), dtype=torch.float64)
    for i, a in answers:
        sp, tp = objective.pairs.student[i], objective.pairs.teacher[i]
        s_logits = model(input_ids=torch.tensor([sp + a])).logits[0]
        with torch.no_grad():
            t_logits = seed(input_ids=torch.tensor([tp + a])).logits[0]
        rows = [j for j in range(skip_first, len(a))]
        s_pos = [len(sp) - 1 + j for j in rows]
        t_pos = [len(tp) - 1 + j for j in rows]
        support = t_logits[t_pos].topk(top_k, dim=-1).indices if top_k else None
        ref = ref + reference_divergence(s_logits[s_pos], t_logits[t_pos], divergence, beta, support).sum()
    ref.backward()
    assert int(batch["scored"].sum()) == sum(max(0, len(a) - skip_first) for _, a in answers)
    assert loss.dtype == torch.float64
    torch.testing.assert_close(loss.detach(), ref.detach(), rtol=1e-10, atol=1e-12)
    for n, p in model.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(grads[n], p.grad, rtol=1e-8, atol=1e-12, msg=n)


def test_lora_seed_teacher_is_the_adapter_disabled_base(tiny_tok):
    """Its logits equal the seed's; the student's (adapters on) differ; no copy of any weight is held."""
    base = tiny("llama", len(tiny_tok))
    seed = copy.deepcopy(base).eval()
    model = _lora(base).eval()
    teacher = Teacher(model, _cfg().train.on_policy, lora=True)
    ids = torch.tensor([[5, 40, 77, 3, 120, 9]])
    with torch.no_grad():
        with teacher.active():
            inside = model(input_ids=ids).logits
        student = model(input_ids=ids).logits
        expected = seed(input_ids=ids).logits
    torch.testing.assert_close(inside, expected, rtol=0, atol=0)
    assert (student - expected).abs().max() > 1e-3
    assert teacher.copies == [] and teacher.state_dict() == {}


def test_full_finetuning_seed_and_ema_teachers(tiny_tok):
    """Full fine-tuning: the seed teacher is a copy taken before training; the EMA teacher moves by
    ``rate`` of the way to the student after each step; the student's weights come back after ``active``."""
    model = tiny("llama", len(tiny_tok)).eval()
    seed = copy.deepcopy(model)
    ids = torch.tensor([[5, 40, 77, 3, 120, 9]])
    frozen = Teacher(model, _cfg().train.on_policy, lora=False)
    ema = Teacher(model, _cfg(teacher="ema", ema_rate=0.25).train.on_policy, lora=False)
    with torch.no_grad():
        for p in model.parameters():  # an "optimizer step"
            p.add_(0.01 * torch.randn_like(p))
    after_step = {n: p.detach().clone() for n, p in model.named_parameters()}
    frozen.update()
    ema.update()
    with torch.no_grad():
        with frozen.active():
            torch.testing.assert_close(model(input_ids=ids).logits, seed(input_ids=ids).logits, rtol=0, atol=0)
        with ema.active():
            for (n, p), s in zip(model.named_parameters(), seed.parameters()):
                torch.testing.assert_close(p, 0.75 * s + 0.25 * after_step[n], rtol=1e-6, atol=1e-7)
    for n, p in model.named_parameters():
        assert torch.equal(p, after_step[n]), n
    state = ema.state_dict()
    assert len(state) == len(list(model.parameters())) and frozen.state_dict() == {}
    fresh = Teacher(model, _cfg(teacher="ema").train.on_policy, lora=False)
    fresh.load_state_dict(state)
    assert all(torch.equal(a, b) for a, b in zip(fresh.copies, ema.copies))


def test_samples_depend_on_the_example_and_step_not_on_the_rank_layout(tiny_tok):
    """Each answer is keyed by (train.seed, id, step): one rank holding the whole step, or two ranks
    each holding their micro-batch slots, sample the same answers; another step samples others."""
    model = tiny("llama", len(tiny_tok)).eval()
    batch_ids = [4, 1, 0, 5]  # a global batch of 2 x 2 x 1 rank, or 1 x 2 x 2 ranks

    def answers(world, rank, step):
        cfg = _cfg(samples_per_prompt=2)
        cfg.train.micro_batch_size = 2 // world
        objective = OnPolicyObjective(cfg, _rows(), tiny_tok, world, rank, torch.device("cpu"), None)
        objective.loss_module(model)
        assert objective.engine == "continuous"
        work = objective.step_batches(batch_ids, step, _Backend(model))
        out = []
        for micro in work.micro:
            if micro is None:
                continue
            for row, mask in zip(micro["input_ids"].tolist(), micro["attention_mask"].tolist()):
                out.append(tuple(t for t, m in zip(row, mask) if m))
        return out, work

    one, work = answers(1, 0, step=3)
    two = answers(2, 0, step=3)[0] + answers(2, 1, step=3)[0]
    assert len(one) == 2 * len(batch_ids) and sorted(one) == sorted(two)
    assert work.n_tokens == sum(int(m["scored"].sum()) for m in work.micro if m is not None) > 0
    assert sorted(answers(1, 0, step=4)[0]) != sorted(one)


def test_prompts_show_the_demonstration_to_the_teacher_only(tiny_tok):
    cfg = _cfg()
    pairs = encode_prompt_pairs(_rows(2), tiny_tok, cfg)
    row = _rows(2)[1]
    student, teacher = tiny_tok.decode(pairs.student[1]), tiny_tok.decode(pairs.teacher[1])
    assert row["instruction"] in student and row["response"] not in student
    assert row["instruction"] in teacher and row["response"] in teacher
    assert "This is an example for a response to the question:" in teacher
    cfg.train.cutoff_len = len(pairs.teacher[1]) + 11  # one short of teacher prompt + 12 new tokens
    cut = encode_prompt_pairs(_rows(2), tiny_tok, cfg)  # the default: cut to leave room for the answer
    assert cut.truncated == [row["id"]] and cut.teacher[1] == pairs.teacher[1][:-1] and cut.student == pairs.student
    cfg.train.overlength = "skip"
    short = encode_prompt_pairs(_rows(2), tiny_tok, cfg)
    assert row["id"] in short.skipped_overlength
    cfg.train.overlength = "error"
    with pytest.raises(DataError, match="train.cutoff_len"):
        encode_prompt_pairs(_rows(2), tiny_tok, cfg)


@pytest.mark.parametrize("key, value, match", [
    ("jsd_beta", 1.0, "jsd_beta"), ("ema_rate", 0.0, "ema_rate"), ("top_k", -1, "top_k"),
    ("teacher_template", "{instruction} only", "demonstration"), ("teacher_template", "{instruction} {demonstration} {x}",
                                                                   "teacher_template"),
    ("skip_first", 12, "skip_first"), ("samples_per_prompt", 0, "samples_per_prompt")])
def test_bad_settings_name_the_option(key, value, match):
    cfg = RunConfig()
    cfg.train.on_policy.divergence = "jsd"
    cfg.train.on_policy.sampling.max_new_tokens = 12
    setattr(cfg.train.on_policy, key, value)
    with pytest.raises(ConfigError, match=match):
        validate(cfg)


def test_zero3_refuses_a_teacher_copy(tiny_tok):
    with pytest.raises(ConfigError, match="ZeRO-3"):
        OnPolicyObjective(_cfg(teacher="ema"), _rows(), tiny_tok, 2, 0, torch.device("cpu"), 3)
