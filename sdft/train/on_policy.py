"""On-policy self-distillation (Shenfeld et al., 2026) as a training objective (``train.objective=on_policy``).

At every optimizer step, for the step's global batch of task examples (the same seeded order as SFT):

1. sample: the model as it is now (the student) answers each prompt, ``samples_per_prompt`` times,
   through the generation engine (``models.generation.sample_token_ids``; under ZeRO-3 the whole model
   is gathered first). The answer to example ``e`` at step ``s`` is drawn from a stream keyed by
   (``train.seed``, e's id, s), so a resumed run samples exactly what an unbroken one would.
2. score: ``SelfDistillationLoss`` runs the teacher (``teacher.Teacher``: the same network shown
   ``teacher_template``, i.e. the question and the demonstration, with the teacher's weights, no
   gradient) and the student (the prompt alone) over prompt + answer, and takes the per-token
   divergence of their next-token distributions on every sampled token after the first
   ``skip_first`` (``sdft_kernels.fused_linear_divergence``; the plain logits path with
   ``train.fused_loss=off`` or where the fused loss does not apply).
3. normalise: the summed divergence over the global batch's scored tokens (all ranks), as the SFT
   loss is normalised over response tokens.

After the optimizer step an ``ema`` teacher moves towards the student. Micro-batches are padded (no
packing: the samples are only known at the step).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

from sdft.config.schema import RunConfig
from sdft.data.tokenize import right_pad
from sdft.distributed import runtime
from sdft.errors import ConfigError, DataError
from sdft.models.generation import choose_engine, sample_token_ids
from sdft.templates import encode_prompt_fit
from sdft.train.batching import TokenSlots
from sdft.train.objective import Batch, StepBatches, fused_loss_on, hidden_and_head, register_head
from sdft.train.teacher import Teacher

log = logging.getLogger(__name__)


@dataclass
class PromptPairs:
    """Per training example: the student's prompt (the task template on the instruction) and the
    teacher's (the task template on ``teacher_template``)."""

    ids: list[str]
    student: list[list[int]]
    teacher: list[list[int]]
    skipped_overlength: list[str]
    truncated: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)

    def digest(self) -> dict:
        """What a checkpoint's fingerprint covers of the data."""
        return {"ids": self.ids, "tokens": [sum(map(len, self.student)), sum(map(len, self.teacher))]}


def encode_prompt_pairs(rows: list[dict], tok, cfg: RunConfig) -> PromptPairs:
    """Both prompts of every ``{id, instruction, response, system}`` row. Each prompt must leave room for
    ``train.on_policy.sampling.max_new_tokens`` within ``train.cutoff_len``: a longer one is cut to fit
    by ``prompt.layout``'s rule (``train.overlength=truncate``; counted), or its row skipped (``skip``;
    counted) or refused (``error``)."""
    t, o = cfg.train, cfg.train.on_policy
    room = t.cutoff_len - o.sampling.max_new_tokens
    out = PromptPairs([], [], [], [])
    for row in rows:
        system, history = row.get("system", ""), row.get("history", ())
        teacher_text = o.teacher_template.format(instruction=row["instruction"], demonstration=row["response"])
        prompts = [encode_prompt_fit(tok, t.template, text, system=system, history=history, layout=cfg.prompt.layout,
                                     cutoff=room if t.overlength == "truncate" else None)
                   for text in (row["instruction"], teacher_text)]
        (student, cut_s), (teacher, cut_t) = prompts
        longest = max(len(student), len(teacher)) + o.sampling.max_new_tokens
        if longest > t.cutoff_len:
            if t.overlength == "error":
                raise DataError(f"example {row['id']!r}: its teacher prompt plus train.on_policy.sampling."
                                f"max_new_tokens is {longest} tokens, longer than train.cutoff_len={t.cutoff_len}")
            out.skipped_overlength.append(row["id"])
            continue
        if cut_s or cut_t:
            out.truncated.append(row["id"])
        out.ids.append(row["id"])
        out.student.append(student)
        out.teacher.append(teacher)
    if out.truncated:
        log.warning("train: cut the prompts of %d example(s) to leave train.on_policy.sampling.max_new_tokens=%d "
                    "within train.cutoff_len=%d (e.g. %s)", len(out.truncated), o.sampling.max_new_tokens,
                    t.cutoff_len, out.truncated[0])
    if out.skipped_overlength:
        log.warning("train: skipped %d example(s) whose teacher prompt + answer exceeds train.cutoff_len=%d (e.g. %s)",
                    len(out.skipped_overlength), t.cutoff_len, out.skipped_overlength[0])
    if not out.ids:
        raise DataError(f"no training example fits train.cutoff_len={t.cutoff_len} with its teacher prompt and "
                        f"train.on_policy.sampling.max_new_tokens={o.sampling.max_new_tokens}")
    return out


class SelfDistillationLoss(torch.nn.Module):
    """``forward(input_ids, attention_mask, scored, teacher_input_ids, teacher_attention_mask,
    teacher_scored) -> summed divergence``.

    Args (to forward):
        input_ids, attention_mask: [B, Ts] the student's prompt + sampled answer, right-padded.
        scored: [B, Ts] bool, the positions whose next token is a scored answer token.
        teacher_input_ids, teacher_attention_mask: [B, Tt] the teacher's prompt + the same answer.
        teacher_scored: [B, Tt] bool, the same tokens' positions (row by row, in the same order).
    Returns:
        scalar float32: the divergence summed over scored tokens (the caller normalises it).
    """

    def __init__(self, model, teacher: Teacher, cfg: RunConfig, fused: bool):
        super().__init__()
        self.model, self.teacher, self.fused = model, teacher, fused
        o = cfg.train.on_policy
        self.kw = {"divergence": o.divergence, "beta": o.jsd_beta, "top_k": o.top_k}
        if fused:
            register_head(self, model)

    def forward(self, input_ids, attention_mask, scored, teacher_input_ids, teacher_attention_mask, teacher_scored):
        from sdft_kernels import fused_linear_divergence, token_divergence

        with torch.no_grad(), self.teacher.active():
            if self.fused:
                t_hidden, t_weight = hidden_and_head(self.model, teacher_input_ids, teacher_attention_mask)
                t_x, t_w = t_hidden[teacher_scored], t_weight.detach()        # [N, H], [V, H]: the teacher's head
            else:
                t_logits = self.model(input_ids=teacher_input_ids, attention_mask=teacher_attention_mask).logits
                t_logits = t_logits[teacher_scored]                            # [N, V]
        if not self.fused:
            s_logits = self.model(input_ids=input_ids, attention_mask=attention_mask).logits[scored]
            return token_divergence(s_logits, t_logits, **self.kw).sum()
        s_hidden, s_weight = hidden_and_head(self.model, input_ids, attention_mask)
        with torch.autocast(s_hidden.device.type, enabled=False):
            return fused_linear_divergence(s_hidden[scored], s_weight, t_x.to(s_weight.dtype), t_w.to(s_weight.dtype),
                                           reduction="sum", **self.kw)


class OnPolicyObjective:
    """On-policy self-distillation (see the module docstring); the recipe drives it like ``SFTObjective``."""

    name = "on_policy"

    def __init__(self, cfg: RunConfig, rows: list[dict], tok, world: int, rank: int, device: torch.device,
                 zero_stage: int | None):
        self.cfg, self.t, self.o, self.tok = cfg, cfg.train, cfg.train.on_policy, tok
        self.world, self.rank, self.device = world, rank, device
        self.pad_id = tok.pad_token_id
        if zero_stage == 3 and (self.o.teacher == "ema" or cfg.train.method == "full"):
            raise ConfigError("train.objective=on_policy under ZeRO-3 supports a seed teacher with LoRA only: a "
                              "teacher copy of partitioned weights (train.on_policy.teacher=ema, or "
                              "train.method=full) is not supported yet; use ZeRO-2 (train.deepspeed=zero2)")
        self.pairs = encode_prompt_pairs(rows, tok, cfg)
        self.fused = False
        self.packing = False  # the samples are only known at the step: micro-batches are padded
        self.engine = "hf"
        self.teacher: Teacher | None = None

    @classmethod
    def build(cls, cfg: RunConfig, rows: list[dict], tok, world: int, rank: int, device: torch.device,
              zero_stage: int | None) -> OnPolicyObjective:
        return cls(cfg, rows, tok, world, rank, device, zero_stage)

    def __len__(self) -> int:
        return len(self.pairs)

    @property
    def skipped_overlength(self) -> list[str]:
        return self.pairs.skipped_overlength

    def digest(self) -> dict:
        return self.pairs.digest()

    def loss_module(self, model) -> SelfDistillationLoss:
        self.teacher = Teacher(model, self.o, lora=self.t.method in ("lora", "qlora"))
        self.fused = fused_loss_on(model, self.t.fused_loss)
        prompts = dict(zip(self.pairs.ids, self.pairs.student))
        self.engine = choose_engine(self.cfg.generation.engine, model, prompts, self.o.sampling)
        return SelfDistillationLoss(model, self.teacher, self.cfg, self.fused)

    def step_batches(self, batch_ids: list[int], step: int, backend) -> StepBatches:
        """Sample this rank's answers with the current weights, then build its micro-batches."""
        t, n = self.t, self.o.samples_per_prompt
        slots = [batch_ids[(a * self.world + self.rank) * t.micro_batch_size:
                           (a * self.world + self.rank + 1) * t.micro_batch_size] for a in range(t.grad_accum)]
        keys = {i: [f"{self.pairs.ids[i]}\0{step}\0{j}" for j in range(n)] for mine in slots for i in mine}
        prompts = {k: self.pairs.student[i] for i, ks in keys.items() for k in ks}
        with backend.generating() as model:  # every rank: a gather under ZeRO-3 is a collective
            samples = sample_token_ids(model, self.tok, prompts, self.o.sampling, batch_size=max(1, len(prompts)),
                                       seed=t.seed, engine=self.engine)
        micro, counts = [], [0, 0, 0]
        for mine in slots:
            answers = [(i, samples[k]) for i in mine for k in keys[i]]
            batch = self._collate(answers) if answers else None
            micro.append(batch)
            if batch is not None:
                counts[0] += int(batch["scored"].sum())
                counts[1] += int(batch["attention_mask"].sum())
                counts[2] += batch["input_ids"].numel()
        scored, real, run = runtime.all_reduce_sums(counts, self.device)
        return StepBatches(micro, int(scored), TokenSlots(int(real), int(run), int(run)))

    def _collate(self, answers: list[tuple[int, list[int]]]) -> Batch:
        """Student and teacher sequences of (example index, answer ids) pairs, with the scored positions."""
        student = [self.pairs.student[i] + a for i, a in answers]
        teacher = [self.pairs.teacher[i] + a for i, a in answers]
        ids, mask = right_pad(student, self.pad_id)
        t_ids, t_mask = right_pad(teacher, self.pad_id)
        scored = torch.zeros_like(ids, dtype=torch.bool)
        t_scored = torch.zeros_like(t_ids, dtype=torch.bool)
        skip = self.o.skip_first
        for r, (i, a) in enumerate(answers):
            # Position p predicts token p + 1: answer token j (at len(prompt) + j) is predicted at len(prompt) + j - 1.
            s0, t0 = len(self.pairs.student[i]) - 1, len(self.pairs.teacher[i]) - 1
            scored[r, s0 + skip:s0 + len(a)] = True
            t_scored[r, t0 + skip:t0 + len(a)] = True
        return {"input_ids": ids, "attention_mask": mask, "scored": scored, "teacher_input_ids": t_ids,
                "teacher_attention_mask": t_mask, "teacher_scored": t_scored}

    def stand_in(self) -> Batch:
        b = self._collate([(0, [self.pad_id])])
        b["scored"].fill_(False)
        b["teacher_scored"].fill_(False)
        return b

    def after_step(self) -> None:
        self.teacher.update()

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.teacher.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.teacher.load_state_dict(state)

    def summary(self) -> dict:
        o = self.o
        return {"objective": "on_policy", "fused_loss": self.fused, "packing": False, "sampling_engine": self.engine,
                "truncated": len(self.pairs.truncated),
                "teacher": o.teacher, "divergence": o.divergence, "top_k": o.top_k, "skip_first": o.skip_first,
                "samples_per_prompt": o.samples_per_prompt}
