"""Every path of a run's output folder, in one place.

    <output_dir>/config.yaml, run_info/<time>-<command>.yaml   resolved config and versions per command
    <output_dir>/<stage>/COMPLETE.json                         a stage's completion record (sdft.pipeline)
    <output_dir>/distill/rewrites.jsonl, rewrites.part-<rank>.jsonl, generation_config.json
    <output_dir>/filter/train.jsonl, stats.json
    <output_dir>/train/final/ (+ training_summary.json), checkpoints/step-<N>/, train_log.jsonl,
                      ds_config.json
    <output_dir>/eval/eval.json, outputs/ (+ <benchmark>_<model>.alpaca_eval.json), results/,
                      seed_responses.jsonl
    <output_dir>/export/model/ (+ README.md, its model card), adapter/
    <output_dir>/tracking/runs.json, tensorboard/<run>/, wandb/, mlflow.db   the trackers (tracking.report_to)
    <output_dir>/vanilla/...                                   sdft compare's vanilla arm: a run layout of its own
    <output_dir>/compare/report.md, report.json, plots/, outputs/, results/, seed_responses.jsonl

Code never joins a path under an output folder by hand; it asks a ``RunLayout``. Temporary files
beside a target are named by ``sdft.utils.io`` from the target's path (``.<name>.tmp-<tag>``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sdft.utils.io import temp_sibling

STAGE_NAMES = ("distill", "filter", "train", "eval", "export")


@dataclass(frozen=True)
class EvalFiles:
    """One evaluation folder: ``eval/`` of a run (seed vs tuned) or ``compare/`` (seed vs both arms)."""

    root: Path

    def output(self, evaluator: str, model: str, seed: int | None) -> Path:
        """Per-example outputs of one evaluator on one model; ``seed`` is None for greedy decoding."""
        suffix = "" if seed is None else f"_seed{seed}"
        return self.root / "outputs" / f"{evaluator}_{model}{suffix}.jsonl"

    def alpaca_eval_outputs(self, evaluator: str, model: str, seed: int | None) -> Path:
        """One model's answers to an AlpacaEval-style benchmark, in AlpacaEval's own format (a JSON list
        of ``{instruction, output, generator}``), for the ``alpaca-eval`` package to judge."""
        return self.output(evaluator, model, seed).with_suffix(".alpaca_eval.json")

    def results(self, model: str) -> Path:
        """One model's cached evaluator results."""
        return self.root / "results" / f"{model}.json"

    @property
    def seed_responses(self) -> Path:
        return self.root / "seed_responses.jsonl"

    @property
    def eval_json(self) -> Path:
        return self.root / "eval.json"

    @property
    def report_json(self) -> Path:
        return self.root / "report.json"

    @property
    def report_md(self) -> Path:
        return self.root / "report.md"

    def plot(self, evaluator: str) -> Path:
        """The report's plot of one evaluator's metrics."""
        return self.root / "plots" / f"{evaluator}.png"


@dataclass(frozen=True)
class CheckpointFiles:
    """The files of one resumable training checkpoint folder."""

    root: Path
    DEEPSPEED_TAG = "ds"
    """The tag DeepSpeed's own sharded checkpoint is saved under, inside ``root``."""

    @property
    def state(self) -> Path:
        """``state.json``: step, world size, fingerprint. Its presence marks a complete checkpoint."""
        return self.root / "state.json"

    @property
    def trainable(self) -> Path:
        return self.root / "trainable.safetensors"

    @property
    def optimizer(self) -> Path:
        """Optimizer, scheduler and RNG states of a one-process run."""
        return self.root / "training_state.pt"

    def rng(self, rank: int) -> Path:
        return self.root / f"rng_rank{rank}.pt"

    def objective(self, rank: int) -> Path:
        """The training objective's state on one rank (an on-policy EMA teacher)."""
        return self.root / f"objective_rank{rank}.safetensors"


@dataclass(frozen=True)
class RunLayout:
    """The output folder of one run (``output_dir``)."""

    root: Path

    def __post_init__(self):
        object.__setattr__(self, "root", Path(self.root))

    # -- the run as a whole --------------------------------------------------------------------
    @property
    def config_yaml(self) -> Path:
        return self.root / "config.yaml"

    @property
    def lock(self) -> Path:
        """Held (an OS file lock) by the one run that owns the folder; names its holder."""
        return self.root / ".sdft.lock"

    def run_record(self, stamp: str, command: str) -> Path:
        """The record of one command: its resolved config, argv and package versions."""
        return self.root / "run_info" / f"{stamp}-{command}.yaml"

    def stage_dir(self, stage: str) -> Path:
        return self.root / stage

    def record(self, stage: str) -> Path:
        """The stage's completion record."""
        return self.root / stage / "COMPLETE.json"

    # -- distill -------------------------------------------------------------------------------
    @property
    def rewrites(self) -> Path:
        return self.root / "distill" / "rewrites.jsonl"

    def rewrites_part(self, rank: int) -> Path:
        """What rank ``rank`` appended before the merge into ``rewrites``."""
        return self.root / "distill" / f"rewrites.part-{rank}.jsonl"

    def rewrites_parts(self) -> list[Path]:
        return sorted((self.root / "distill").glob("rewrites.part-*.jsonl"))

    @property
    def generation_config(self) -> Path:
        return self.root / "distill" / "generation_config.json"

    # -- filter --------------------------------------------------------------------------------
    @property
    def filtered(self) -> Path:
        """The training rows: one per example, the kept rewrite or the original answer."""
        return self.root / "filter" / "train.jsonl"

    @property
    def filter_stats(self) -> Path:
        return self.root / "filter" / "stats.json"

    # -- train ---------------------------------------------------------------------------------
    @property
    def final(self) -> Path:
        """The trained adapter or full model (safetensors) and tokenizer."""
        return self.root / "train" / "final"

    @property
    def final_summary(self) -> Path:
        return self.final / "training_summary.json"

    @property
    def checkpoints(self) -> Path:
        return self.root / "train" / "checkpoints"

    def checkpoint(self, step: int) -> CheckpointFiles:
        return CheckpointFiles(self.checkpoints / f"step-{step:06d}")

    def checkpoint_tmp(self, step: int) -> Path:
        """Where a checkpoint is written before it is renamed into place."""
        return temp_sibling(self.checkpoint(step).root, "save")

    def complete_checkpoints(self) -> list[CheckpointFiles]:
        """Complete checkpoints, oldest first (hidden temporary folders are not complete)."""
        if not self.checkpoints.exists():
            return []
        return [CheckpointFiles(p) for p in sorted(self.checkpoints.glob("step-*")) if CheckpointFiles(p).state.exists()]

    @property
    def train_log(self) -> Path:
        return self.root / "train" / "train_log.jsonl"

    @property
    def ds_config(self) -> Path:
        """The resolved DeepSpeed config training ran with."""
        return self.root / "train" / "ds_config.json"

    # -- tracking ------------------------------------------------------------------------------
    @property
    def tracking_dir(self) -> Path:
        """The trackers' local files (``tracking.report_to``); W&B writes its ``wandb/`` folder here."""
        return self.root / "tracking"

    @property
    def tracking_runs(self) -> Path:
        """``{tracker: run id}``: the tracker runs this folder reports into (a rerun goes on in them)."""
        return self.tracking_dir / "runs.json"

    @property
    def tensorboard(self) -> Path:
        """TensorBoard event files, one folder per tracker run."""
        return self.tracking_dir / "tensorboard"

    @property
    def mlflow_store(self) -> Path:
        """The local MLflow store (SQLite) when no tracking URI is given."""
        return self.tracking_dir / "mlflow.db"

    @property
    def mlflow_artifacts(self) -> Path:
        return self.tracking_dir / "mlflow-artifacts"

    # -- eval, export, compare -----------------------------------------------------------------
    @property
    def eval(self) -> EvalFiles:
        return EvalFiles(self.root / "eval")

    @property
    def export_model(self) -> Path:
        return self.root / "export" / "model"

    @property
    def model_card(self) -> Path:
        """The exported model's card (the hub's README.md)."""
        return self.export_model / "README.md"

    @property
    def export_adapter(self) -> Path:
        return self.root / "export" / "adapter"

    @property
    def compare(self) -> EvalFiles:
        return EvalFiles(self.root / "compare")

    @property
    def vanilla(self) -> RunLayout:
        """The vanilla arm of ``sdft compare``: a run folder inside this one."""
        return RunLayout(self.root / "vanilla")

    def arm(self, name: str) -> RunLayout:
        """The run folder of an arm of ``sdft compare``: this one for ``sdft``, a folder inside it for
        ``vanilla`` and ``on_policy``."""
        return self if name == "sdft" else RunLayout(self.root / name)
