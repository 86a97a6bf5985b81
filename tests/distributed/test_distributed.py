"""Two ranks on CPU (gloo) through the real launcher: distill in both modes, training under every
shipped ZeRO config, loss equivalence with one rank, and a killed run resumed to the same weights."""

import json

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import REPRODUCIBLE_ENV, distilled_config, math_rows, run_cli, run_torchrun, write_jsonl
from tests.numerics import requires_bf16_sdpa

pytestmark = [pytest.mark.distributed, pytest.mark.slow]


def _uneven(tiny_config, n=5, **sections):
    path, out = tiny_config(n_train=n, **sections)
    # Very different lengths, so shards and batch counts differ between ranks.
    rows = math_rows(n)
    for i, r in enumerate(rows):
        r["question"] += " Please." * (i * 7)
    write_jsonl(path.parent / "train.jsonl", rows)
    return path, out


@pytest.fixture(scope="module")
def one_rank(tmp_path_factory, tiny_model_dir, _distilled_once):
    """``distilled``'s config trained by one plain PyTorch process (global batch 2 x 2 = 4), once: the
    reference of every test below that trains the same config on 2 ranks."""
    path, out = distilled_config(tmp_path_factory.mktemp("one-rank"), tiny_model_dir, _distilled_once)
    res = run_cli("train", str(path))
    assert res.returncode == 0, res.stderr[-3000:]
    return out


def _rewrites(out):
    return [json.loads(x) for x in (out / "distill" / "rewrites.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("mode", ["replica", "zero3:gather", "zero3:per-layer"])
def test_two_rank_distill_equals_one_rank(tiny_config, tmp_path, mode):
    greedy = {"sampling": {"do_sample": False, "max_new_tokens": 6}, "batch_size": 2}
    path, out = _uneven(tiny_config, distill=greedy)
    one = run_cli("distill", str(path), f"output_dir={tmp_path / 'one'}")
    assert one.returncode == 0, one.stderr[-3000:]
    name, _, how = mode.partition(":")
    two = run_torchrun(2, "distill", str(path), f"distill.mode={name}", f"distill.zero3_gather={how != 'per-layer'}")
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = _rewrites(tmp_path / "one"), _rewrites(out)
    assert [r["id"] for r in a] == [r["id"] for r in b] and len(b) == 5  # data-set order, nothing lost
    assert [r["rewrite"] for r in a] == [r["rewrite"] for r in b]         # greedy: the very same text
    stats = json.loads((out / "filter" / "stats.json").read_text())
    assert stats == json.loads((tmp_path / "one" / "filter" / "stats.json").read_text())
    assert not list((out / "distill").glob("rewrites.part-*"))


def test_sampled_rewrites_of_conversations_are_the_same_on_one_and_two_ranks(tiny_config, tmp_path):
    """Every assistant turn of a multi-turn conversation is its own unit: sharded over ranks, sampled from
    its own stream (id and turn), merged back in data-set order, one record per turn."""
    sampled = {"sampling": {"do_sample": True, "max_new_tokens": 6}, "batch_size": 3, "template": "chat"}
    path, out = tiny_config(distill=sampled)
    convs = []
    for i in range(5):
        msgs = []
        for k in range(1 + i % 3):
            msgs += [{"role": "user", "content": f"What is {i + k} plus 1?" + " Please." * (i * 5)},
                     {"role": "assistant", "content": f"The answer is {i + k + 1}."}]
        convs.append({"id": f"c{i}", "messages": msgs})
    write_jsonl(path.parent / "train.jsonl", convs)
    one = run_cli("distill", str(path), f"output_dir={tmp_path / 'one'}")
    assert one.returncode == 0, one.stderr[-3000:]
    two = run_torchrun(2, "distill", str(path))
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = _rewrites(tmp_path / "one"), _rewrites(out)
    assert [(r["id"], r.get("turn"), r["rewrite"]) for r in a] == [(r["id"], r.get("turn"), r["rewrite"]) for r in b]
    assert [(r["id"], r.get("turn")) for r in b] == \
        [(f"c{i}", None if i % 3 == 0 else k) for i in range(5) for k in range(1 + i % 3)]


@pytest.mark.parametrize("mode", ["replica", "zero3"])
def test_sampled_rewrites_are_the_same_on_one_and_two_ranks(tiny_config, tmp_path, mode):
    """The continuous engine's per-example seeds: an example's sampled text does not depend on the
    world size, the shard it lands in, or the slots it shares."""
    sampled = {"sampling": {"do_sample": True, "max_new_tokens": 6}, "batch_size": 3}
    path, out = _uneven(tiny_config, distill=sampled)
    one = run_cli("distill", str(path), f"output_dir={tmp_path / 'one'}", "generation.engine=continuous")
    assert one.returncode == 0, one.stderr[-3000:]
    two = run_torchrun(2, "distill", str(path), f"distill.mode={mode}", "generation.engine=continuous")
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = _rewrites(tmp_path / "one"), _rewrites(out)
    assert [(r["id"], r["rewrite"]) for r in a] == [(r["id"], r["rewrite"]) for r in b]
    assert len({r["rewrite"] for r in a}) > 1


def _train2(path, out, *overrides, env=None):
    """A 2-rank ``sdft train`` into ``out`` that must succeed."""
    res = run_torchrun(2, "train", str(path), f"output_dir={out}", *overrides, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


def _losses(out):
    return [json.loads(x)["loss"] for x in (out / "train" / "train_log.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("ds, micro, accum", [("zero1", 2, 1), ("zero2", 1, 2), ("zero2_offload", 2, 1),
                                               ("zero3", 1, 2), ("zero3_offload", 2, 1)])
def test_two_rank_training_matches_one_rank(distilled, one_rank, ds, micro, accum):
    path, _, clone = distilled
    out = one_rank
    two_dir = clone(ds)
    # Global batch micro x accum x 2 ranks = 4: the same examples in every step.
    two = _train2(path, two_dir, f"train.deepspeed={ds}", f"train.micro_batch_size={micro}", f"train.grad_accum={accum}")
    assert f"DeepSpeed ZeRO-{ds[4]}" in two.stderr
    l1, l2 = _losses(out), _losses(two_dir)
    assert len(l1) == len(l2) == 3
    assert l2 == pytest.approx(l1, rel=2e-4)
    a = load_file(str(out / "train" / "final" / "adapter_model.safetensors"))
    b = load_file(str(two_dir / "train" / "final" / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-3, atol=1e-5)
    resolved = json.loads((two_dir / "train" / "ds_config.json").read_text())
    assert resolved["train_batch_size"] == 4 and resolved["train_micro_batch_size_per_gpu"] == micro


def test_full_finetune_under_zero3_exports_a_gathered_model(distilled):
    path, _, clone = distilled
    d = clone("full")
    _train2(path, d, "train.deepspeed=zero3", "train.method=full", "train.grad_accum=1", "train.lr=1e-3")
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(d / "train" / "final")
    assert all(p.numel() > 0 for p in model.parameters())  # real tensors, not empty ZeRO-3 shards
    assert _losses(d)[-1] < _losses(d)[0]


def test_a_users_own_stage0_config_path_works(distilled, one_rank, tmp_path):
    path, _, clone = distilled
    out = one_rank
    mine = tmp_path / "mine.json"
    mine.write_text(json.dumps({"zero_optimization": {"stage": 0}, "gradient_accumulation_steps": 1,
                                "train_micro_batch_size_per_gpu": "auto"}))
    d = clone("stage0")
    res = _train2(path, d, f"train.deepspeed={mine}", "train.grad_accum=1")
    assert "DeepSpeed ZeRO-0 on 2 rank(s)" in res.stderr and '"train_batch_size": 4' in res.stderr
    assert _losses(d) == pytest.approx(_losses(out), rel=2e-4)
    bad = run_torchrun(2, "train", str(path), f"output_dir={clone('stage0-bad')}", f"train.deepspeed={mine}")
    assert bad.returncode != 0 and "gradient_accumulation_steps=1 contradicts train.grad_accum (= 2)" in bad.stderr


@requires_bf16_sdpa
def test_bf16_under_zero2_trains(distilled):
    path, _, clone = distilled
    d = clone("bf16")
    _train2(path, d, "train.deepspeed=zero2", "train.precision=bf16", "train.grad_accum=1", "train.max_steps=6")
    assert json.loads((d / "train" / "ds_config.json").read_text())["bf16"]["enabled"] is True
    losses = _losses(d)
    assert len(losses) == 6 and losses[-1] < losses[0]


def test_killed_two_rank_training_resumes_to_the_same_weights(distilled):
    path, _, clone = distilled
    over = ["train.deepspeed=zero3", "train.grad_accum=1", "train.max_steps=4", "train.save_every=2",
            "train.lora_dropout=0.1"]
    broken, unbroken = clone("broken"), clone("unbroken")
    killed = run_torchrun(2, "train", str(path), f"output_dir={broken}", *over,
                          env={**REPRODUCIBLE_ENV, "SDFT_KILL_AT": "train_step:3"}, retry=False)
    assert killed.returncode != 0
    assert [p.name for p in (broken / "train" / "checkpoints").glob("step-*")] == ["step-000002"]
    resumed = _train2(path, broken, *over, env=REPRODUCIBLE_ENV)
    assert "resuming from step-000002 (step 2 of 4)" in resumed.stderr
    _train2(path, unbroken, *over, env=REPRODUCIBLE_ENV)
    a = load_file(str(broken / "train" / "final" / "adapter_model.safetensors"))
    b = load_file(str(unbroken / "train" / "final" / "adapter_model.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    assert _losses(broken) == _losses(unbroken) and len(_losses(broken)) == 4


def test_two_rank_compare_trains_three_arms_and_reports_once(tiny_config):
    """The three arms train on 2 ranks with uneven shards (5 examples for global batches of 8: a rank
    samples and trains on fewer examples, or none, in a step); evaluation runs on rank 0 while rank 1 waits."""
    path, out = _uneven(tiny_config, filter={"gates": ["ban_list"]},
                        eval={"checker": "math", "limit": 2, "evaluators": ["task", "retention"]})
    res = run_torchrun(2, "compare", str(path), timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads((out / "compare" / "report.json").read_text())
    assert list(report["models"]) == ["seed", "vanilla", "sdft", "on_policy"]
    for arm in (out, out / "vanilla", out / "on_policy"):
        assert json.loads((arm / "train" / "COMPLETE.json").read_text())["world_size"] == 2
    assert (out / "compare" / "report.md").exists()


@pytest.mark.parametrize("ds", ["zero2", "zero3"])
def test_two_rank_qlora_matches_one_rank(distilled, ds):
    """QLoRA under ZeRO-2 (each rank holds the 4-bit model) and ZeRO-3 (4-bit weights partitioned)."""
    pytest.importorskip("bitsandbytes")
    path, _, clone = distilled
    qlora = ("train.method=qlora", "quantization.compute_dtype=float32")
    one_dir = clone(f"qlora-one-{ds}")
    one = run_cli("train", str(path), f"output_dir={one_dir}", *qlora)
    assert one.returncode == 0, one.stderr[-3000:]
    two_dir = clone(f"qlora-{ds}")
    two = _train2(path, two_dir, *qlora, f"train.deepspeed={ds}", "train.micro_batch_size=1", "train.grad_accum=2")
    assert _losses(two_dir) == pytest.approx(_losses(one_dir), rel=1e-3)
    partitioned = 14 if ds == "zero3" else 0
    assert f"qlora: 14 4-bit weights (storage torch.{'float32' if ds == 'zero3' else 'uint8'}), {partitioned} partitioned" in two.stderr
    a = load_file(str(one_dir / "train" / "final" / "adapter_model.safetensors"))
    b = load_file(str(two_dir / "train" / "final" / "adapter_model.safetensors"))
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-2, atol=1e-4)


@pytest.mark.parametrize("method", ["lora", "full"])
def test_zero3_fused_and_packed_matches_plain_one_rank(distilled, method):
    """ZeRO-3 on 2 ranks with the fused loss (lm_head weight partitioned, gathered inside the engine's
    forward; trained too under ``full``) and packing, against one plain padded process. A global batch
    of 4 examples packs into fewer rows than the 2 micro-batch slots now and then, so a rank runs a
    masked stand-in while the other has all the labels: nothing may hang or drift."""
    path, _, clone = distilled
    one_dir, two_dir = clone(f"plain-{method}"), clone(f"fused-packed-{method}")
    common = (f"train.method={method}", "train.lr=1e-3")
    one = run_cli("train", str(path), f"output_dir={one_dir}", "train.fused_loss=off", "train.packing=off", *common)
    assert one.returncode == 0, one.stderr[-3000:]
    two = _train2(path, two_dir, "train.deepspeed=zero3", "train.grad_accum=1", "train.fused_loss=on",
                  "train.packing=on", *common)
    assert "fused loss on, packing on" in two.stderr
    assert _losses(two_dir) == pytest.approx(_losses(one_dir), rel=1e-3)
    summary = json.loads((two_dir / "train" / "final" / "training_summary.json").read_text())
    assert summary["token_slots"]["efficiency"] > summary["token_slots"]["padded_efficiency"]
    if method == "lora":
        a = load_file(str(one_dir / "train" / "final" / "adapter_model.safetensors"))
        b = load_file(str(two_dir / "train" / "final" / "adapter_model.safetensors"))
        for k in a:  # Adam magnifies float noise on near-zero gradients; a real error moves weights ~lr = 1e-3
            torch.testing.assert_close(b[k], a[k], rtol=1e-3, atol=1e-4)
    else:
        from transformers import AutoModelForCausalLM

        a = AutoModelForCausalLM.from_pretrained(one_dir / "train" / "final").lm_head.weight
        b = AutoModelForCausalLM.from_pretrained(two_dir / "train" / "final").lm_head.weight
        from sdft.config import load_config

        seed = AutoModelForCausalLM.from_pretrained(load_config(path).model.path).lm_head.weight
        assert (b - seed).abs().max() > 1e-3  # the head trained: its gradient reached its ZeRO-3 shards
        torch.testing.assert_close(b, a, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("ds, method, teacher", [("zero3", "lora", "seed"), ("zero2", "full", "ema")])
def test_two_rank_on_policy_training_follows_one_rank(tiny_config, tmp_path, ds, method, teacher):
    """On-policy self-distillation on 2 ranks under ZeRO-3 (LoRA, the adapter-disabled seed teacher; the
    whole model gathered to sample at every step) and ZeRO-2 (full fine-tuning, an EMA teacher) against
    one plain process: each rank samples its own examples from the same (seed, id, step) streams, so
    the losses agree to float noise. 5 examples in global batches of 4: the last step is uneven. The
    random tiny model's next-token distributions barely depend on the prompt, so the divergences are
    ~1e-4 and float32 cancellation leaves ~1e-7 of noise in them (other samples would move them by 10%+)."""
    train = {"objective": "on_policy", "method": method, "max_steps": 3, "micro_batch_size": 2, "grad_accum": 2,
             "lora_dropout": 0.0, "save_every": 0, "lr": 1e-3,
             "on_policy": {"teacher": teacher, "ema_rate": 0.5, "sampling": {"max_new_tokens": 8}}}
    path, out = tiny_config(n_train=5, train=train)
    one = run_cli("train", str(path))
    assert one.returncode == 0, one.stderr[-3000:]
    two_dir = tmp_path / "two"
    _train2(path, two_dir, f"train.deepspeed={ds}", "train.micro_batch_size=1")
    l1, l2 = _losses(out), _losses(two_dir)
    assert len(l1) == len(l2) == 3 and all(x > 0 for x in l1)
    assert l2 == pytest.approx(l1, rel=1e-3, abs=3e-7)
    summary = json.loads((two_dir / "train" / "final" / "training_summary.json").read_text())
    assert summary["objective"] == "on_policy" and summary["zero_stage"] == int(ds[-1]) and summary["world_size"] == 2


def test_sdft_run_under_zero3_evaluates_in_the_process_that_trained(tiny_config):
    """The whole `sdft run` on two ranks with ZeRO-3 distillation and training: eval, in the processes
    that trained, loads its seed model whole (it loaded into ZeRO-3 partitions on rank 0 alone, whose
    gathers rank 1 never joined: the run hung until the collective timeout)."""
    path, out = tiny_config(n_train=8, n_test=2, train={"max_steps": 2, "save_every": 0, "grad_accum": 1})
    res = run_torchrun(2, "run", str(path), "train.deepspeed=zero3", "distill.mode=zero3", "collective_timeout_s=60")
    assert res.returncode == 0, res.stderr[-3000:]
    assert all((out / stage / "COMPLETE.json").exists() for stage in ("distill", "filter", "train", "eval", "export"))
    assert json.loads((out / "train" / "COMPLETE.json").read_text())["summary"]["zero_stage"] == 3
