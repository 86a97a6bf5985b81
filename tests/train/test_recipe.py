import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from sdft.config import load_config
from sdft.context import RunContext
from sdft.errors import ConfigError, StageError
from sdft.layout import RunLayout
from sdft.pipeline import Pipeline
from sdft.train.recipe import TrainRecipe, train
from tests.conftest import REPRODUCIBLE_ENV, run_cli
from tests.numerics import assert_close_scaled, assert_scalar_close, requires_bf16_sdpa


def _filtered(tiny_config, **over):
    path, out = tiny_config(**over)
    cfg = load_config(path)
    ctx = RunContext(cfg)
    Pipeline(ctx).run(["distill", "filter"])
    rows = [json.loads(x) for x in ctx.layout.filtered.read_text().splitlines()]
    return cfg, ctx, rows, out, path


@pytest.mark.parametrize("method, precision, checkpointing", [
    ("lora", "fp32", False), ("full", "fp32", False), pytest.param("lora", "bf16", True, marks=requires_bf16_sdpa)])
def test_loss_goes_down(tiny_config, method, precision, checkpointing):
    cfg, ctx, rows, out, _ = _filtered(tiny_config, train={"method": method, "max_steps": 12, "lr": 1e-2,
                                                            "save_every": 0, "precision": precision,
                                                            "gradient_checkpointing": checkpointing})
    summary = train(cfg, rows, ctx.layout, ctx.tok, torch.device("cpu"))
    log = [json.loads(x) for x in (out / "train" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 13))
    assert summary["final_loss"] < 0.9 * summary["first_loss"]
    final = out / "train" / "final"
    assert json.loads((final / "training_summary.json").read_text()) == summary
    if method == "lora":
        assert (final / "adapter_model.safetensors").exists() and summary["trainable_parameters"] < summary["total_parameters"]
    else:
        assert (final / "model.safetensors").exists() and summary["trainable_parameters"] == summary["total_parameters"]


def first_step(cfg, rows, layout, tok) -> tuple[dict, dict[str, torch.Tensor]]:
    """The first optimizer step's log row and the gradients it stepped with (trainable parameters,
    after accumulation, before clipping and Adam)."""
    recipe = TrainRecipe(cfg, layout, tok, torch.device("cpu"))
    recipe.setup(rows)
    grads, step = {}, recipe.backend.step

    def capture():
        grads.update({n: p.grad.detach().clone() for n, p in recipe.model.named_parameters() if p.grad is not None})
        return step()

    recipe.backend.step = capture
    return recipe.train_step(0), grads


@pytest.mark.parametrize("packing", ["off", "on"])
def test_loss_is_normalised_over_the_whole_optimizer_step(tiny_config, packing):
    """micro-batch 1 x accum 4 computes the same step as micro-batch 4 x accum 1: the same loss and the
    same accumulated gradient, two float32 computations of one mean over the step's tokens (packed, the
    two layouts also pad rows to different widths). A normalisation error would scale the gradient."""
    cfg, ctx, rows, out, _ = _filtered(tiny_config, train={"max_steps": 1, "save_every": 0, "lora_dropout": 0.0,
                                                            "packing": packing, "lora_targets": ["all-linear"]})
    runs = []
    for mbs, acc in [(1, 4), (4, 1)]:
        cfg.train.micro_batch_size, cfg.train.grad_accum = mbs, acc
        # Same examples in the step: both read the first 4 of the seeded permutation.
        runs.append(first_step(cfg, rows, RunLayout(out / f"run-{mbs}x{acc}"), ctx.tok))
    (row1, g1), (row2, g2) = runs
    assert row1["tokens"] == row2["tokens"] > 0
    assert_scalar_close(row1["loss"], row2["loss"], sides=2)
    assert g1.keys() == g2.keys() and any(g.abs().max() > 0 for g in g1.values())
    for k in g1:
        assert_close_scaled(g1[k], g2[k], msg=k, sides=2)


def test_micro_batch_averaging_is_hf_trainers(tiny_config):
    """train.loss_average=micro_batches, micro-batch 1 x accum 4: the step's gradient is the mean of the
    four examples' own token-mean gradients (HF Trainer: each micro-batch's mean loss / accumulation
    steps), where the default weighs every token alike; packing is refused with it."""
    cfg, ctx, rows, out, _ = _filtered(tiny_config, n_train=4, train={
        "max_steps": 1, "save_every": 0, "lora_dropout": 0.0, "micro_batch_size": 1, "grad_accum": 4,
        "lora_targets": ["all-linear"], "loss_average": "micro_batches"})
    _, per_micro = first_step(cfg, rows, RunLayout(out / "micro"), ctx.tok)
    cfg.train.grad_accum, cfg.train.loss_average = 1, "tokens"
    alone = [first_step(cfg, [row], RunLayout(out / f"alone-{i}"), ctx.tok)[1] for i, row in enumerate(rows)]
    cfg.train.grad_accum = 4
    _, per_token = first_step(cfg, rows, RunLayout(out / "tokens"), ctx.tok)
    assert len({len(r["response"]) for r in rows}) > 1  # answers of different lengths: the two averages differ
    differs = False
    for k in per_micro:
        want = sum(g[k] for g in alone) / len(alone)
        assert_close_scaled(per_micro[k], want, msg=k, sides=2)
        differs |= (per_token[k] - want).abs().max().item() > 1e-3 * want.abs().max().item()
    assert differs
    cfg.train.loss_average, cfg.train.packing = "micro_batches", "on"
    with pytest.raises(ConfigError, match="train.packing=on: train.loss_average=micro_batches"):
        first_step(cfg, rows, RunLayout(out / "packed"), ctx.tok)


def test_fused_and_packed_training_follows_the_plain_padded_run(tiny_config):
    """Same examples per step, same normalisation: the fused + packed run computes the plain run's
    gradients (fp32, no dropout), and it computes fewer token slots for the same real tokens. Over 4
    steps the losses stay within 1e-4: Adam turns rounding noise on near-zero gradient entries into
    lr-sized weight differences, but only in entries the loss is flat in (their gradient is ~0)."""
    cfg, ctx, rows, out, _ = _filtered(tiny_config, n_train=16, train={"max_steps": 4, "save_every": 0,
                                                                        "lora_dropout": 0.0, "lr": 1e-2})
    runs = {}
    for mode in ("off", "on"):
        cfg.train.fused_loss = cfg.train.packing = mode
        _, grads = first_step(cfg, rows, RunLayout(out / f"first-{mode}"), ctx.tok)
        layout = RunLayout(out / f"run-{mode}")
        summary = train(cfg, rows, layout, ctx.tok, torch.device("cpu"))
        log = [json.loads(x)["loss"] for x in layout.train_log.read_text().splitlines()]
        runs[mode] = (summary, log, grads)
    (s_off, l_off, g_off), (s_on, l_on, g_on) = runs["off"], runs["on"]
    assert (s_off["fused_loss"], s_off["packing"], s_on["fused_loss"], s_on["packing"]) == (False, False, True, True)
    assert l_on == pytest.approx(l_off, rel=1e-4) and l_on[-1] < l_on[0]
    assert g_on.keys() == g_off.keys()
    for k in g_off:
        assert_close_scaled(g_on[k], g_off[k], msg=k, sides=2)
    slots_on, slots_off = s_on["token_slots"], s_off["token_slots"]
    assert slots_on["real"] == slots_off["real"] > 0
    assert slots_on["run"] < slots_off["run"] and slots_on["efficiency"] > slots_off["efficiency"]
    assert slots_on["padded_efficiency"] == slots_off["efficiency"]


def test_checkpoint_of_another_config_is_refused(tiny_config):
    cfg, ctx, rows, out, _ = _filtered(tiny_config, train={"max_steps": 3, "save_every": 1})
    train(cfg, rows, ctx.layout, ctx.tok, torch.device("cpu"))
    cfg.train.lr = 5e-4
    with pytest.raises(StageError, match="checkpoint was made with another model, train config or data"):
        train(cfg, rows, ctx.layout, ctx.tok, torch.device("cpu"))


@pytest.mark.slow
def test_sigkill_mid_training_then_rerun_equals_an_unbroken_run(tiny_config, tmp_path):
    path, out = tiny_config(train={"save_every": 2, "lora_dropout": 0.1})
    assert run_cli("distill", str(path)).returncode == 0
    unbroken = tmp_path / "unbroken"
    unbroken.mkdir()
    for stage in ("distill", "filter"):
        shutil.copytree(out / stage, unbroken / stage)

    _kill_resume_and_compare(path, out, unbroken)
    assert not (out / "train" / "checkpoints" / "step-000002" / "objective_rank0.safetensors").exists()


def _kill_resume_and_compare(path, out, unbroken):
    """Kill ``sdft train`` at step 3 (checkpoint at 2), rerun it, run it unbroken into ``unbroken``: the
    resumed run's adapter and training log must equal the unbroken run's exactly (``REPRODUCIBLE_ENV``)."""
    killed = run_cli("train", str(path), env={**REPRODUCIBLE_ENV, "SDFT_KILL_AT": "train_step:3"})
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert [p.name for p in (out / "train" / "checkpoints").glob("step-*")] == ["step-000002"]
    assert not (out / "train" / "final").exists()
    resumed = run_cli("train", str(path), env=REPRODUCIBLE_ENV)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming from step-000002 (step 2 of 6)" in resumed.stderr
    ref = run_cli("train", str(path), f"output_dir={unbroken}", env=REPRODUCIBLE_ENV)
    assert ref.returncode == 0, ref.stderr[-2000:]

    a = load_file(str(out / "train" / "final" / "adapter_model.safetensors"))
    b = load_file(str(unbroken / "train" / "final" / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    log_a = [json.loads(x) for x in (out / "train" / "train_log.jsonl").read_text().splitlines()]
    log_b = [json.loads(x) for x in (unbroken / "train" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log_a] == [1, 2, 3, 4, 5, 6]  # no step lost or logged twice
    assert [r["loss"] for r in log_a] == [r["loss"] for r in log_b]


@pytest.mark.slow
def test_on_policy_sigkill_then_rerun_equals_an_unbroken_run(tiny_config, tmp_path):
    """On-policy with an EMA teacher and LoRA dropout: a rerun after a kill between checkpoints reaches
    the unbroken run's weights and losses exactly (the EMA average is in the checkpoint; the samples are
    keyed by step, so the resumed steps sample what the unbroken run sampled)."""
    on_policy = {"teacher": "ema", "ema_rate": 0.2, "sampling": {"max_new_tokens": 8}}
    path, out = tiny_config(train={"objective": "on_policy", "save_every": 2, "lora_dropout": 0.1, "lr": 1e-2,
                                   "on_policy": on_policy})
    _kill_resume_and_compare(path, out, tmp_path / "unbroken")
    assert (out / "train" / "checkpoints" / "step-000002" / "objective_rank0.safetensors").exists()
    summary = json.loads((out / "train" / "final" / "training_summary.json").read_text())
    assert summary["objective"] == "on_policy" and summary["teacher"] == "ema"
