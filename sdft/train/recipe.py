"""Step 3: supervised fine-tuning on the (filtered) data: LoRA or full, one process.

Features: AdamW; cosine / linear / constant schedule with optional warmup; gradient accumulation
with the loss normalised by the number of response tokens in the whole optimizer step; fp32 or bf16
autocast; gradient checkpointing; gradient clipping; a tqdm bar and TensorBoard scalars on rank 0;
``train_log.jsonl`` of every logged step.

Resume: ``train.save_every`` writes atomic checkpoints (weights, optimizer, scheduler, RNG). A rerun
of the same config continues from the newest one. The data order is a pure function of
(seed, epoch), and step ``s`` consumes micro-batches ``[s*A, (s+1)*A)`` of that stream, so the resumed
run replays exactly the steps an unbroken run would take: nothing lost, nothing seen twice.

Output: ``<output_dir>/train/final`` (a peft adapter or a full transformers model, safetensors, with
``COMPLETE.json``), ``checkpoints/``, ``tensorboard/``, ``train_log.jsonl``.
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
from sdft.models.loading import load_model
from sdft.train.checkpoint import list_checkpoints, load_checkpoint, save_checkpoint
from sdft.train.data import TokenizedSet, causal_lm_loss_sum, collate, micro_batch_order, tokenize_rows
from sdft.utils.faults import maybe_kill
from sdft.utils.io import atomic_publish_dir, atomic_write_json, read_jsonl, atomic_write_text
from sdft.utils.runinfo import is_main_process

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_model(cfg: RunConfig, device: torch.device):
    """The seed model made trainable: LoRA adapters (only they train) or every weight."""
    model = load_model(cfg.model.path, cfg.model.dtype, device)
    if cfg.train.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    if cfg.train.method == "lora":
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


def _fingerprint(cfg: RunConfig, data: TokenizedSet) -> str:
    """What a checkpoint must agree on to be resumed: model, training recipe and the exact data."""
    blob = json.dumps({"model": asdict(cfg.model), "train": asdict(cfg.train), "ids": data.ids,
                       "tokens": [sum(map(len, data.input_ids)), sum(sum(1 for t in lab if t != -100) for lab in data.labels)]},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class MicroBatchStream:
    """Micro-batch ``m`` of the run = micro-batch ``m % per_epoch`` of epoch ``m // per_epoch``."""

    def __init__(self, n: int, micro_batch_size: int, seed: int):
        self.n, self.mbs, self.seed = n, micro_batch_size, seed
        self.per_epoch = math.ceil(n / micro_batch_size)
        self._epoch, self._order = -1, []

    def __getitem__(self, m: int) -> list[int]:
        epoch = m // self.per_epoch
        if epoch != self._epoch:
            self._epoch, self._order = epoch, micro_batch_order(self.n, self.mbs, self.seed, epoch)
        return self._order[m % self.per_epoch]


def total_steps(cfg: RunConfig, n_examples: int) -> int:
    if cfg.train.max_steps:
        return cfg.train.max_steps
    per_epoch = math.ceil(n_examples / cfg.train.micro_batch_size)
    return max(1, math.ceil(cfg.train.epochs * per_epoch / cfg.train.grad_accum))


def train(cfg: RunConfig, rows: list[dict], out_dir: Path, tok, device: torch.device) -> dict:
    """Fine-tune the seed model on ``rows`` ({id, instruction, response, system}); returns a summary."""
    t = cfg.train
    out_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(t.seed)
    data = tokenize_rows(rows, tok, t.template, t.cutoff_len, t.overlength)
    model = build_model(cfg, device)
    params = [p for p in model.parameters() if p.requires_grad]
    steps = total_steps(cfg, len(data))
    optimizer = torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay)
    from transformers import get_scheduler

    scheduler = get_scheduler(t.lr_scheduler, optimizer, num_warmup_steps=int(t.warmup_ratio * steps),
                              num_training_steps=steps)
    fingerprint = _fingerprint(cfg, data)
    ckpt_root = out_dir / "checkpoints"
    start = 0
    if ckpts := list_checkpoints(ckpt_root):
        state = json.loads((ckpts[-1] / "state.json").read_text())
        if state.get("fingerprint") != fingerprint:
            raise RuntimeError(f"{ckpts[-1]}: checkpoint was made with another model, train config or data; "
                               f"delete {ckpt_root} or use another output_dir")
        start = load_checkpoint(ckpts[-1], model, optimizer, scheduler)["step"]
        log.info("train: resuming from %s (step %d of %d)", ckpts[-1].name, start, steps)
    log_path = out_dir / "train_log.jsonl"
    history = [r for r in read_jsonl(log_path) if r["step"] <= start] if log_path.exists() and start else []
    atomic_write_text(log_path, "".join(json.dumps(r) + "\n" for r in history))

    n_trainable = sum(p.numel() for p in params)
    n_total = sum(p.numel() for p in model.parameters())
    log.info("train: %d examples, %d steps (micro-batch %d x accum %d), %s: %d / %d parameters trainable",
             len(data), steps, t.micro_batch_size, t.grad_accum, t.method, n_trainable, n_total)
    writer = _tensorboard(out_dir) if is_main_process() else None
    stream = MicroBatchStream(len(data), t.micro_batch_size, t.seed)
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if t.precision == "bf16"
                else contextlib.nullcontext())
    bar = tqdm(total=steps, initial=start, desc="train", unit="step", disable=not is_main_process())
    meta = {"fingerprint": fingerprint, "total_steps": steps}
    for step in range(start, steps):
        batches = [collate(data, stream[m], tok.pad_token_id) for m in range(step * t.grad_accum, (step + 1) * t.grad_accum)]
        # Normalise by the response tokens of the whole optimizer step, so every token weighs the same
        # whatever micro-batch it fell in (a per-micro-batch mean would overweight short batches).
        n_tok = sum(int((b["labels"][:, 1:] != -100).sum()) for b in batches)
        loss_total = 0.0
        for b in batches:
            b = {k: v.to(device) for k, v in b.items()}
            with autocast:
                logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
            loss_sum, _ = causal_lm_loss_sum(logits, b["labels"])
            (loss_sum / max(n_tok, 1)).backward()
            loss_total += loss_sum.item()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, t.max_grad_norm if t.max_grad_norm > 0 else float("inf"))
        lr = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        done = step + 1
        loss = loss_total / max(n_tok, 1)
        if done % t.logging_steps == 0 or done == steps:
            row = {"step": done, "loss": loss, "lr": lr, "grad_norm": float(grad_norm), "tokens": n_tok,
                   "epoch": done * t.grad_accum / stream.per_epoch}
            with open(log_path, "a") as f:
                f.write(json.dumps(row) + "\n")
            history.append(row)
            if writer:
                for k in ("loss", "lr", "grad_norm"):
                    writer.add_scalar(f"train/{k}", row[k], done)
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}")
        if t.save_every and done % t.save_every == 0 and done < steps:
            save_checkpoint(ckpt_root, done, model, optimizer, scheduler, meta, t.keep_checkpoints)
        maybe_kill("train_step")
    bar.close()
    if writer:
        writer.close()
    summary = {"steps": steps, "examples": len(data), "skipped_overlength": len(data.skipped_overlength),
               "trainable_parameters": n_trainable, "total_parameters": n_total,
               "first_loss": history[0]["loss"] if history else None,
               "final_loss": history[-1]["loss"] if history else None, "fingerprint": fingerprint}
    save_final(out_dir / "final", model, tok, summary)
    return summary


def save_final(final_dir: Path, model, tok, summary: dict) -> None:
    """Write the adapter (LoRA) or full model as safetensors, atomically, with ``COMPLETE.json``."""
    tmp = Path(tempfile.mkdtemp(dir=final_dir.parent, prefix=".final-"))
    model.save_pretrained(tmp, safe_serialization=True)
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
