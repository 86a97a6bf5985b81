"""Step 3: supervised fine-tuning on the (filtered) data: LoRA or full, one process or many ranks.

One process: plain PyTorch. Several ranks (``torchrun`` / ``deepspeed`` / SLURM) or
``train.deepspeed`` set: a DeepSpeed engine with the ZeRO stage of the chosen ``ds_configs/`` file
(0-3, optimizer / parameter offload, bf16, clipping, accumulation), "auto" values filled from this
config. Under ZeRO-3 the model is partitioned at load (``HfDeepSpeedConfig`` before
``from_pretrained``), so no rank ever holds the whole model.

Data: one optimizer step consumes a *global batch* of ``micro_batch_size x grad_accum x world``
examples, taken in order from a per-epoch permutation seeded by (seed, epoch). Rank ``r`` takes
micro-batch ``a * world + r`` of it at micro-step ``a``. The loss is the summed token loss divided by
the response tokens of the whole global batch, so the same global batch gives the same update at
any world size, micro-batch size or accumulation. With ``train.packing`` the global batch is packed
into full rows first and the rows are dealt to the same micro-batch slots (``sdft.train.packing``);
the update is unchanged. Under DeepSpeed a rank whose micro-batch is empty (the epoch's short last
batch, or fewer packed rows than slots) still runs forward and backward on a fully masked stand-in:
every rank runs the same collectives. One process simply skips it.

Loss: ``sdft.train.loss`` wraps the model; with ``train.fused_loss`` the lm_head and cross-entropy
run fused (``sdft_kernels``), never building the [tokens, vocab] logits.

Resume: ``train.save_every`` writes atomic checkpoints (weights, optimizer, scheduler, every rank's
RNG). A rerun of the same config continues from the newest one at the exact step; the data position
is a pure function of the step, so nothing is lost or seen twice.

Output: ``<output_dir>/train/final`` (a peft adapter or a full transformers model, safetensors, with
``COMPLETE.json``), ``checkpoints/``, ``tensorboard/``, ``train_log.jsonl`` (rank 0).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import random
import tempfile
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from sdft.config.schema import RunConfig
from sdft.distributed import runtime
from sdft.models.builtin import resolve_model_path
from sdft.train.checkpoint import list_checkpoints, save_checkpoint
from sdft.train.data import TokenizedSet, collate, global_batch_order, tokenize_rows
from sdft.train.loss import build_loss_module
from sdft.train.packing import collate_packed, packing_blocker, plan_packed_step, step_token_slots
from sdft.utils.faults import maybe_kill
from sdft.utils.io import atomic_publish_dir, atomic_write_json, atomic_write_text, read_jsonl

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def deepspeed_config(cfg: RunConfig, hidden_size: int) -> dict | None:
    """The filled DeepSpeed config, or None for plain PyTorch (one process, no ``train.deepspeed``)."""
    name = cfg.train.deepspeed or ("zero1" if runtime.is_distributed() else "")
    if not name:
        return None
    from sdft.distributed.ds_config import fill_ds_config, load_ds_config

    raw, source = load_ds_config(name)
    return fill_ds_config(raw, cfg, runtime.world_size(), hidden_size, source)


def build_model(cfg: RunConfig, device: torch.device, ds: dict | None):
    """The seed model made trainable: LoRA adapters (only they train, on a 4-bit base for qlora) or
    every weight."""
    from sdft.models.loading import load_4bit, load_model

    keep_alive = None
    zero3 = ds is not None and int(ds.get("zero_optimization", {}).get("stage", 0)) == 3
    if zero3:
        from transformers.integrations import HfDeepSpeedConfig

        keep_alive = HfDeepSpeedConfig(ds)  # from_pretrained now loads straight into partitions (zero.Init)
    if cfg.train.method == "qlora":
        from peft import prepare_model_for_kbit_training

        # Train mode before anything runs: see sdft.models.quantized on bitsandbytes' eval-mode repack.
        model = load_4bit(cfg, device, zero3=zero3).train()
        # Norms and head to fp32 and input grads on, so checkpointing works through the frozen 4-bit layers.
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.train.gradient_checkpointing,
                                                gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        model = load_model(cfg.model.path, cfg.model.dtype, device)
        if cfg.train.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if keep_alive is not None:
        model._sdft_ds_ref = keep_alive  # transformers holds it weakly; it must outlive the run
    model.config.use_cache = False
    if cfg.train.method in ("lora", "qlora"):
        from peft import LoraConfig, get_peft_model

        targets = cfg.train.lora_targets
        lora = LoraConfig(r=cfg.train.lora_r, lora_alpha=cfg.train.lora_alpha, lora_dropout=cfg.train.lora_dropout,
                          target_modules="all-linear" if targets == ["all-linear"] else targets, task_type="CAUSAL_LM")
        try:
            model = get_peft_model(model, lora)
        except ValueError as e:
            raise ValueError(f"train.lora_targets={targets}: {e}") from e
    model.train()
    return model


def _log_4bit_layout(model) -> None:
    """Say whether ZeRO-3 partitioned the 4-bit weights (it does only when their storage dtype is the
    load dtype; otherwise every rank silently holds them all)."""
    import bitsandbytes as bnb

    weights = [m.weight for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    parted = sum(1 for w in weights if hasattr(w, "ds_id"))
    log.info("train: qlora: %d 4-bit weights (storage %s), %d partitioned by ZeRO-3", len(weights),
             weights[0].dtype if weights else None, parted)


def build_optimizer(t, params):
    """AdamW: torch's, or bitsandbytes' 8-bit / paged variant (``train.optimizer``)."""
    if t.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay)
    import bitsandbytes as bnb

    cls = {"adamw_8bit": bnb.optim.AdamW8bit, "paged_adamw": bnb.optim.PagedAdamW,
           "paged_adamw_8bit": bnb.optim.PagedAdamW8bit}[t.optimizer]
    return cls(params, lr=t.lr, weight_decay=t.weight_decay)


def use_packing(mode: str, model) -> bool:
    """``train.packing`` resolved for ``model``: auto is on where packing is tested safe."""
    if mode == "off":
        return False
    blocker = packing_blocker(model)
    if blocker and mode == "on":
        raise ValueError(f"train.packing=on: {blocker}; set train.packing=auto or off")
    if blocker:
        log.info("train: packing off (%s)", blocker)
    return blocker is None


def _micro_batch(data: TokenizedSet, step_ids: list[int], plan, slot: int, micro: int, pad_id: int):
    """The batch of micro-batch ``slot`` of a step, or None when it has no examples."""
    if plan is not None:
        return collate_packed(data, plan[slot], pad_id) if plan[slot] else None
    mine = step_ids[slot * micro:(slot + 1) * micro]
    return collate(data, mine, pad_id) if mine else None


def _stand_in(data: TokenizedSet, pad_id: int) -> dict[str, torch.Tensor]:
    """A short fully masked batch: a rank with no examples in a micro-step runs it to join the collectives."""
    b = collate(data, [0], pad_id)
    b = {k: v[:, :8] for k, v in b.items()}
    b["labels"].fill_(-100)
    return b


def _fingerprint(cfg: RunConfig, data: TokenizedSet) -> str:
    """What a checkpoint must agree on to be resumed: model, training recipe and the exact data."""
    blob = json.dumps({"model": asdict(cfg.model), "train": asdict(cfg.train), "ids": data.ids,
                       "tokens": [sum(map(len, data.input_ids)), sum(sum(1 for t in lab if t != -100) for lab in data.labels)]},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def global_batch_size(cfg: RunConfig) -> int:
    return cfg.train.micro_batch_size * cfg.train.grad_accum * runtime.world_size()


def total_steps(cfg: RunConfig, n_examples: int) -> tuple[int, int]:
    """(total optimizer steps, steps per epoch)."""
    per_epoch = math.ceil(n_examples / global_batch_size(cfg))
    if cfg.train.max_steps:
        return cfg.train.max_steps, per_epoch
    return max(1, math.ceil(cfg.train.epochs * per_epoch)), per_epoch


def train(cfg: RunConfig, rows: list[dict], out_dir: Path, tok, device: torch.device) -> dict:
    """Fine-tune the seed model on ``rows`` ({id, instruction, response, system}); returns a summary.

    Call it on every rank with the same arguments (the launcher sets RANK / WORLD_SIZE).
    """
    t = cfg.train
    main = runtime.rank() == 0
    out_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(t.seed)
    data = tokenize_rows(rows, tok, t.template, t.cutoff_len, t.overlength)
    from transformers import AutoConfig, get_scheduler

    hidden = AutoConfig.from_pretrained(resolve_model_path(cfg.model.path)).hidden_size
    ds = deepspeed_config(cfg, hidden)
    model = build_model(cfg, device, ds)
    loss_module = build_loss_module(model, t.fused_loss)
    packing = use_packing(t.packing, model)
    params = [p for p in model.parameters() if p.requires_grad]
    steps, per_epoch = total_steps(cfg, len(data))
    optimizer = build_optimizer(t, params)
    scheduler = get_scheduler(t.lr_scheduler, optimizer, num_warmup_steps=int(t.warmup_ratio * steps),
                              num_training_steps=steps)
    if ds is None:
        from sdft.train.backends import LocalBackend

        backend = LocalBackend(loss_module, optimizer, scheduler, t.max_grad_norm)
    else:
        from sdft.train.backends import DeepSpeedBackend

        backend = DeepSpeedBackend(loss_module, optimizer, scheduler, ds)
        if main:
            atomic_write_json(out_dir / "ds_config.json", ds)
            log.info("train: DeepSpeed ZeRO-%d on %d rank(s); resolved config (saved in %s):\n%s",
                     backend.stage, runtime.world_size(), out_dir / "ds_config.json", json.dumps(ds, indent=2))

    if t.method == "qlora":
        _log_4bit_layout(model)
    fingerprint = _fingerprint(cfg, data)
    ckpt_root = out_dir / "checkpoints"
    start = 0
    if ckpts := list_checkpoints(ckpt_root):
        state = json.loads((ckpts[-1] / "state.json").read_text())
        if state.get("fingerprint") != fingerprint:
            raise RuntimeError(f"{ckpts[-1]}: checkpoint was made with another model, train config or data; "
                               f"delete {ckpt_root} or use another output_dir")
        if state.get("world_size", 1) != runtime.world_size():
            raise RuntimeError(f"{ckpts[-1]}: written by {state.get('world_size', 1)} rank(s), now "
                               f"{runtime.world_size()}; resume with the same world size")
        backend.load(ckpts[-1])
        start = state["step"]
        log.info("train: resuming from %s (step %d of %d)", ckpts[-1].name, start, steps)
    log_path = out_dir / "train_log.jsonl"
    history = [r for r in read_jsonl(log_path) if r["step"] <= start] if log_path.exists() and start else []
    if main:
        atomic_write_text(log_path, "".join(json.dumps(r) + "\n" for r in history))

    n_trainable = sum(p.ds_numel if hasattr(p, "ds_numel") else p.numel() for p in params)
    n_total = sum(p.ds_numel if hasattr(p, "ds_numel") else p.numel() for p in model.parameters())
    log.info("train: %d examples, %d steps (global batch %d = micro-batch %d x accum %d x %d rank(s)), "
             "%s: %d / %d parameters trainable; fused loss %s, packing %s", len(data), steps, global_batch_size(cfg),
             t.micro_batch_size, t.grad_accum, runtime.world_size(), t.method, n_trainable, n_total,
             "on" if loss_module.fused else "off", "on" if packing else "off")
    writer = _tensorboard(out_dir) if main else None
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if t.precision == "bf16" and ds is None
                else contextlib.nullcontext())  # DeepSpeed runs bf16 itself from its config
    world, r = runtime.world_size(), runtime.rank()
    bar = tqdm(total=steps, initial=start, desc="train", unit="step", disable=not main)
    meta = {"fingerprint": fingerprint, "total_steps": steps}
    order = None
    # Response tokens per example (what the loss is averaged over) and lengths, counted once.
    n_targets = [sum(1 for y in labels[1:] if y != -100) for labels in data.labels]
    lengths = [len(ids) for ids in data.input_ids]
    n_micro = t.grad_accum * world
    slots = [0, 0, 0]  # real tokens, token slots run, token slots padded batches would use
    for step in range(start, steps):
        epoch = step // per_epoch
        if order is None or order[0] != epoch:
            order = (epoch, global_batch_order(len(data), t.seed, epoch))
        g = global_batch_size(cfg)
        batch_ids = order[1][(step % per_epoch) * g:(step % per_epoch + 1) * g]
        n_tok = sum(n_targets[i] for i in batch_ids)
        plan = plan_packed_step(lengths, batch_ids, n_micro, t.cutoff_len) if packing else None
        slots = [a + b for a, b in zip(slots, step_token_slots(lengths, batch_ids, n_micro, t.micro_batch_size, plan))]
        loss_sum_local = 0.0
        for a in range(t.grad_accum):
            b = _micro_batch(data, batch_ids, plan, a * world + r, t.micro_batch_size, tok.pad_token_id)
            if b is None:
                if not backend.needs_stand_ins:
                    continue
                b = _stand_in(data, tok.pad_token_id)
            b = {key: v.to(device) for key, v in b.items()}
            with autocast:
                loss_sum = backend.module(**b)
            # DeepSpeed averages gradients over ranks, hence x world: the update is sum(loss) / n_tok.
            backend.backward(loss_sum * (world if ds is not None else 1) / max(n_tok, 1))
            loss_sum_local += loss_sum.item()
        lr = backend.lr()
        grad_norm = backend.step()
        loss = runtime.all_reduce_sum(loss_sum_local, device) / max(n_tok, 1)
        done = step + 1
        if main and (done % t.logging_steps == 0 or done == steps):
            row = {"step": done, "loss": loss, "lr": lr, "grad_norm": grad_norm, "tokens": n_tok,
                   "epoch": round(done / per_epoch, 4)}
            with open(log_path, "a") as f:
                f.write(json.dumps(row) + "\n")
            history.append(row)
            if writer:
                for key in ("loss", "lr", "grad_norm"):
                    writer.add_scalar(f"train/{key}", row[key], done)
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}")
        if t.save_every and done % t.save_every == 0 and done < steps:
            save_checkpoint(ckpt_root, done, backend, meta, t.keep_checkpoints)
        maybe_kill("train_step")
    bar.close()
    if writer:
        writer.close()
    summary = {"steps": steps, "examples": len(data), "skipped_overlength": len(data.skipped_overlength),
               "world_size": world, "zero_stage": getattr(backend, "stage", None),
               "trainable_parameters": n_trainable, "total_parameters": n_total,
               "first_loss": history[0]["loss"] if history else None,
               "final_loss": history[-1]["loss"] if history else None, "fingerprint": fingerprint,
               "fused_loss": loss_module.fused, "packing": packing,
               "token_slots": {"real": slots[0], "run": slots[1], "padded": slots[2],
                               "efficiency": round(slots[0] / slots[1], 4) if slots[1] else None,
                               "padded_efficiency": round(slots[0] / slots[2], 4) if slots[2] else None}}
    if slots[1]:
        log.info("train: %.1f%% of token slots held real tokens (%s; padded batches: %.1f%%)",
                 100 * slots[0] / slots[1], "packed" if packing else "padded", 100 * slots[0] / slots[2])
    state = backend.trainable_state()  # a collective under ZeRO-3: every rank calls it
    if main:
        save_final(out_dir / "final", model, tok, summary, state, full=cfg.train.method == "full")
    runtime.barrier()
    return summary


def save_final(final_dir: Path, model, tok, summary: dict, state: dict, full: bool) -> None:
    """Write the adapter (LoRA) or full model as safetensors, atomically, with ``COMPLETE.json``."""
    tmp = Path(tempfile.mkdtemp(dir=final_dir.parent, prefix=".final-"))
    model.save_pretrained(tmp, state_dict=state, safe_serialization=True)
    if full:
        model.config.use_cache = True
        model.config.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    atomic_write_json(tmp / "COMPLETE.json", summary)
    atomic_publish_dir(tmp, final_dir)


def _tensorboard(out_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional at run time
        log.warning("tensorboard is not installed; scalars go to train_log.jsonl only")
        return None
    return SummaryWriter(log_dir=str(out_dir / "tensorboard"))
