"""Step 3: fine-tune the seed on the filtered data (``run_train(ctx)``), or by on-policy
self-distillation on the task data (``run_train_on_policy(ctx)``).

``TrainRecipe`` in torchtune's shape: ``setup(rows)`` builds everything from the config, ``train()``
is the loop, ``train_step(step)`` one optimizer step, ``checkpoint(step)`` and ``save_final()`` the
writes. What a step computes is the objective's (``objective``: the SFT loss; ``on_policy``: sample,
then the teacher-student divergence); where it runs is the backend's (``backends``).

- Methods: LoRA, QLoRA (LoRA on a base quantized to 4 bits at load) or full fine-tuning (``model``).
- Parallelism: one process runs plain PyTorch. Several ranks (``torchrun`` / ``deepspeed`` / SLURM) or
  ``train.deepspeed`` set run a DeepSpeed engine with the ZeRO stage of the chosen ``ds_configs/``
  file (0-3, optimizer / parameter offload, bf16, clipping, accumulation), "auto" values filled from
  this config. Under ZeRO-3 the model is loaded straight into partitions, so no rank ever holds it whole.
- Data: one optimizer step consumes a global batch of ``micro_batch_size x grad_accum x world``
  examples in a seeded per-epoch order (``batching``); the loss is normalised over the global batch's
  response tokens, so the update is the same at any world size, micro-batch size or accumulation.
- Precision: ``train.precision=bf16`` autocasts forward and backward; weights and optimizer stay in
  ``model.dtype``. The fused loss (``train.fused_loss``) never builds the [tokens, vocab] logits;
  ``train.packing`` fills rows with several examples.
- Resume: ``train.save_every`` writes atomic checkpoints (weights, optimizer, scheduler, every rank's
  RNG). A rerun of the same config continues from the newest one at the exact step; the data position
  is a pure function of the step, so nothing is lost or seen twice.
- Output: ``train/final`` (a peft adapter or a full transformers model, safetensors, and
  ``training_summary.json``), ``checkpoints/``, ``train_log.jsonl`` (rank 0; each row also to the
  trackers of ``tracking.report_to``).
"""

from __future__ import annotations

import json
import logging
import random
import time

import numpy as np
import torch
from tqdm.auto import tqdm

from sdft.config.schema import RunConfig
from sdft.context import RunContext
from sdft.distributed import runtime
from sdft.distributed.deepspeed import deepspeed_config, zero_stage
from sdft.layout import RunLayout
from sdft.models.loading import hidden_size
from sdft.tracking import Trackers
from sdft.train.backends import build_backend
from sdft.train.batching import GlobalBatches, TokenSlots
from sdft.train.checkpoint import fingerprint, resume, save_checkpoint
from sdft.train.model import build_model, build_optimizer, log_4bit_layout, parameter_counts
from sdft.train.objective import Objective, SFTObjective
from sdft.train.on_policy import OnPolicyObjective
from sdft.train.train_log import TrainLog
from sdft.utils import stop
from sdft.utils.faults import maybe_hang, maybe_kill
from sdft.utils.io import atomic_write_json, publishing, read_jsonl

log = logging.getLogger(__name__)


def run_train(ctx: RunContext) -> dict:
    """The train stage (every rank): fine-tune with the SFT objective on the filter stage's rows."""
    return train(ctx.cfg, read_jsonl(ctx.layout.filtered), ctx.layout, ctx.tok, ctx.device, ctx.trackers)


def run_train_on_policy(ctx: RunContext) -> dict:
    """The train stage of on-policy self-distillation (every rank): the task data as it is, each
    reference answer the teacher's demonstration."""
    rows = [ex.to_dict() for ex in ctx.train_examples()[0]]
    return train(ctx.cfg, rows, ctx.layout, ctx.tok, ctx.device, ctx.trackers, OnPolicyObjective)


def train(cfg: RunConfig, rows: list[dict], layout: RunLayout, tok, device: torch.device,
          trackers: Trackers | None = None, objective: type[Objective] = SFTObjective) -> dict:
    """Fine-tune the seed with ``objective`` on ``rows`` ({id, instruction, response, system}) into
    ``layout``; returns the summary; each logged step also goes to ``trackers``. Call it on every rank
    with the same arguments (the launcher sets RANK / WORLD_SIZE)."""
    if objective.name != cfg.train.objective:  # the stage table and the config disagree: a bug, never a choice
        raise ValueError(f"train(): objective {objective.name} with train.objective={cfg.train.objective}")
    recipe = TrainRecipe(cfg, layout, tok, device, trackers, objective)
    recipe.setup(rows)
    return recipe.train()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class TrainRecipe:
    """One training run into ``layout``'s ``train/`` folder (see the module docstring)."""

    def __init__(self, cfg: RunConfig, layout: RunLayout, tok, device: torch.device, trackers: Trackers | None = None,
                 objective: type[Objective] = SFTObjective):
        self.cfg, self.t, self.layout, self.tok, self.device = cfg, cfg.train, layout, tok, device
        self.objective_type = objective
        self.trackers = trackers or Trackers([])
        self.world, self.rank = runtime.world_size(), runtime.rank()

    def setup(self, rows: list[dict]) -> None:
        """Tokenise, build model, objective, optimizer, schedule and backend, and resume if a checkpoint exists."""
        t = self.t
        seed_everything(t.seed)  # before the model: LoRA's initial weights come from this seed
        name = t.deepspeed or ("zero1" if runtime.is_distributed() else "")
        self.ds = (deepspeed_config(name, "train.deepspeed", self.cfg, self.world, hidden_size(self.cfg.model.path))
                   if name else None)
        self.objective = self.objective_type.build(self.cfg, rows, self.tok, self.world, self.rank, self.device,
                                                   zero_stage(self.ds) if self.ds else None)
        self.model = build_model(self.cfg, self.device, self.ds)
        module = self.objective.loss_module(self.model)
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.batches = GlobalBatches(t, len(self.objective), self.world)
        self.steps = self.batches.total_steps
        from transformers import get_scheduler

        optimizer = build_optimizer(t, params)
        scheduler = get_scheduler(t.lr_scheduler, optimizer, num_warmup_steps=int(t.warmup_ratio * self.steps),
                                  num_training_steps=self.steps)
        self.backend = build_backend(module, optimizer, scheduler, self.ds, t.max_grad_norm, t.precision == "bf16",
                                     self.device)
        if self.ds is not None and runtime.is_main():
            atomic_write_json(self.layout.ds_config, self.ds)
            log.info("train: DeepSpeed ZeRO-%d on %d rank(s); resolved config (saved in %s):\n%s",
                     self.backend.stage, self.world, self.layout.ds_config, json.dumps(self.ds, indent=2))
        if t.method == "qlora":
            log_4bit_layout(self.model)
        self.fingerprint = fingerprint(self.cfg, self.objective.digest())
        self.start = resume(self.layout, self.fingerprint, self.backend, self.steps, self.objective)
        self.log = TrainLog(self.layout, self.start, self.trackers)
        self.slots = TokenSlots()
        self.n_trainable, self.n_total = parameter_counts(self.model, params)
        log.info("train: %s, %d examples, %d steps (global batch %d = micro-batch %d x accum %d x %d rank(s)), "
                 "%s: %d / %d parameters trainable; fused loss %s, packing %s", t.objective, len(self.objective),
                 self.steps, self.batches.size, t.micro_batch_size, t.grad_accum, self.world, t.method,
                 self.n_trainable, self.n_total,
                 *("on" if on else "off" for on in (self.objective.fused, self.objective.packing)))

    def train(self) -> dict:
        """Run the remaining steps, then write ``train/final``; returns the summary."""
        bar = tqdm(total=self.steps, initial=self.start, desc="train", unit="step", disable=not runtime.is_main())
        since, tokens = time.perf_counter(), 0  # tokens/s over the steps since the last logged one
        with stop.on_signals():
            for step in range(self.start, self.steps):
                row = self.train_step(step)
                done, tokens = step + 1, tokens + row["tokens"]
                if done % self.t.logging_steps == 0 or done == self.steps:
                    self.log.add(row, tokens / max(time.perf_counter() - since, 1e-9))
                    since, tokens = time.perf_counter(), 0
                bar.update(1)
                bar.set_postfix(loss=f"{row['loss']:.4f}")
                saved = self.t.save_every and done % self.t.save_every == 0 and done < self.steps
                if saved:
                    self.checkpoint(done)
                maybe_kill("train_step")
                maybe_hang("train_step")
                if done < self.steps and runtime.any_rank(stop.requested() is not None, self.device):
                    self.stop(done, saved)
            bar.close()
            maybe_kill("train_end")
            return self.save_final()  # a signal now waits for it (the pipeline stops after the record)

    def stop(self, done: int, saved: bool) -> None:
        """A signal asked a rank to stop: checkpoint after step ``done`` (all ranks), then end the command."""
        started = time.perf_counter()
        if not saved:
            self.checkpoint(done)
        signal_name = stop.requested() or "a signal to another rank"
        raise stop.Stopped(f"train: stopped by {signal_name} after step {done} of {self.steps}, checkpoint "
                           f"{self.layout.checkpoint(done).root.name} written in "
                           f"{time.perf_counter() - started:.1f} s; rerun the same command to resume")

    def train_step(self, step: int) -> dict:
        """One optimizer step (0-based ``step``) on every rank; returns its log row."""
        batch_ids = self.batches[step]
        work = self.objective.step_batches(batch_ids, step, self.backend)
        self.slots += work.slots
        loss_sum_local = 0.0
        per_micro = self.t.loss_average == "micro_batches"
        for micro in self.backend.micro_batches(work.micro, self.objective.stand_in):
            loss_sum = self.backend.forward({k: v.to(self.device) for k, v in micro.items()})
            # micro_batches: this micro-batch's token mean, over the step's grad_accum x world micro-batches
            denominator = (max(int((micro["labels"][:, 1:] != -100).sum()), 1) * self.t.grad_accum * self.world
                           if per_micro else work.n_tokens)
            self.backend.backward(loss_sum, denominator)
            loss_sum_local += loss_sum.item()
        lr = self.backend.lr()
        grad_norm = self.backend.step()
        self.objective.after_step()
        loss = runtime.all_reduce_sum(loss_sum_local, self.device) / max(work.n_tokens, 1)
        return {"step": step + 1, "loss": loss, "lr": lr, "grad_norm": grad_norm, "tokens": work.n_tokens,
                "epoch": self.batches.epoch(step + 1)}

    def checkpoint(self, steps_done: int) -> None:
        """A resumable checkpoint after ``steps_done`` steps (a collective)."""
        save_checkpoint(self.layout, steps_done, self.backend, {"fingerprint": self.fingerprint,
                                                                 "total_steps": self.steps}, self.t.keep_checkpoints,
                        self.objective)

    def summary(self) -> dict:
        history = self.log.history
        return {"steps": self.steps, "examples": len(self.objective),
                "skipped_overlength": len(self.objective.skipped_overlength),
                "world_size": self.world, "zero_stage": self.backend.stage,
                "trainable_parameters": self.n_trainable, "total_parameters": self.n_total,
                "first_loss": history[0]["loss"] if history else None,
                "final_loss": history[-1]["loss"] if history else None, "fingerprint": self.fingerprint,
                **self.objective.summary(), "token_slots": self.slots.summary()}

    def save_final(self) -> dict:
        """Write ``train/final`` on rank 0 (the trainable state is gathered on every rank); returns the summary."""
        summary = self.summary()
        if self.slots.run:
            log.info("train: %.1f%% of token slots held real tokens (%s; padded batches: %.1f%%)",
                     100 * self.slots.real / self.slots.run, "packed" if self.objective.packing else "padded",
                     100 * self.slots.real / self.slots.padded)
        state = self.backend.trainable_state()  # a collective under ZeRO-3: every rank calls it
        if runtime.is_main():
            save_final(self.layout, self.model, self.tok, summary, state, full=self.t.method == "full")
        runtime.barrier()
        return summary


def save_final(layout: RunLayout, model, tok, summary: dict, state: dict, full: bool) -> None:
    """Write the adapter (LoRA) or full model as safetensors with ``training_summary.json``, atomically."""
    with publishing(layout.final) as tmp:
        model.save_pretrained(tmp, state_dict=state, safe_serialization=True)
        if full:
            model.config.use_cache = True
            model.config.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        atomic_write_json(tmp / layout.final_summary.name, summary)
