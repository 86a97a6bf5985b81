"""The SDFT recipe: distill -> filter -> train -> eval -> export, as stages over one output folder.

Each stage reads its inputs from the folder, writes its outputs under ``<output_dir>/<stage>/`` and
finishes by writing ``<stage>/COMPLETE.json`` with the config it depends on (its own section, the
data and model, and the upstream stage's record). A stage whose record matches the current config is
skipped; one made with another config is refused with the differing keys, never silently reused.
Within a stage, distill and train resume after a kill (see their modules).

    <output_dir>/config.yaml            resolved config of the latest command
    <output_dir>/run_info/*.yaml        every command's config, argv and package versions
    <output_dir>/distill/rewrites.jsonl, generation_config.json
    <output_dir>/filter/train.jsonl, stats.json
    <output_dir>/train/final/, checkpoints/, tensorboard/, train_log.jsonl
    <output_dir>/eval/eval.json, outputs/*.jsonl, results/*.json, seed_responses.jsonl
    <output_dir>/export/model/, adapter/   (adapter: LoRA and QLoRA runs)
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import asdict
from pathlib import Path

from sdft.config.schema import RunConfig
from sdft.utils.io import atomic_write_json, read_jsonl

log = logging.getLogger(__name__)

STAGES = ("distill", "filter", "train", "eval", "export")
_UPSTREAM = {"distill": None, "filter": "distill", "train": "filter", "eval": "train", "export": "train"}


class StageError(RuntimeError):
    pass


def stage_inputs(cfg: RunConfig, stage: str, vanilla: bool = False) -> dict:
    """The config a stage's output depends on (without the upstream record)."""
    model = asdict(cfg.model)
    data = {k: v for k, v in asdict(cfg.data).items() if k not in ("test", "general_prompts")}
    return {
        "distill": lambda: {"model": model, "data": data, "distill": asdict(cfg.distill)},
        "filter": lambda: ({"vanilla": True, "model": model, "data": data} if vanilla
                           else {"filter": asdict(cfg.filter)}),
        "train": lambda: {"train": asdict(cfg.train)},
        "eval": lambda: {"eval": asdict(cfg.eval), "test": cfg.data.test, "general_prompts": cfg.data.general_prompts},
        "export": lambda: {"export": asdict(cfg.export)},
    }[stage]()


class Stages:
    """Runs stages with completion records. ``force`` reruns a finished stage from scratch.

    ``vanilla``: the baseline arm of ``sdft compare``. It has no distill stage; its filter stage keeps
    every original answer, so training sees the task data as it is.
    """

    def __init__(self, cfg: RunConfig, force: bool = False, vanilla: bool = False):
        self.cfg, self.force, self.vanilla = cfg, force, vanilla
        self.upstream = {**_UPSTREAM, "filter": None} if vanilla else _UPSTREAM
        self.root = Path(cfg.output_dir)
        self._device = self._tok = self._examples = None

    # -- shared state, loaded once per command ------------------------------------------------
    @property
    def device(self):
        """This rank's device; joins the process group on first use when launched on several ranks."""
        if self._device is None:
            from sdft.distributed import runtime
            from sdft.models.loading import pick_device

            device = pick_device(self.cfg.device)
            runtime.init(device)
            self._device = runtime.local_device(device)
        return self._device

    @property
    def tok(self):
        if self._tok is None:
            from sdft.models.loading import load_tokenizer

            self._tok = load_tokenizer(self.cfg.model.path)
        return self._tok

    # -- completion records -------------------------------------------------------------------
    def _record_path(self, stage: str) -> Path:
        return self.root / stage / "COMPLETE.json"

    def _expected(self, stage: str) -> dict:
        up = self.upstream[stage]
        upstream = json.loads(self._record_path(up).read_text())["inputs"] if up else None
        return {**stage_inputs(self.cfg, stage, self.vanilla), "upstream": upstream}

    def is_complete(self, stage: str) -> bool:
        """True when the stage finished with this config; raises when it finished with another one."""
        path = self._record_path(stage)
        if not path.exists():
            return False
        up = self.upstream[stage]
        if up and not self._record_path(up).exists():
            raise StageError(f"{path} exists but its input stage {up} is not complete; delete {path.parent}")
        found = json.loads(path.read_text())["inputs"]
        expected = self._expected(stage)
        if found != expected:
            diff = ", ".join(_diff_keys(found, expected)[:6])
            raise StageError(f"{path.parent} was completed with a different config (differs in: {diff}); "
                             f"use a new output_dir, or pass --force to redo {stage} and what follows it")
        return True

    def _require(self, stage: str) -> None:
        if not self.is_complete(stage):
            raise StageError(f"stage {stage} has not completed in {self.root}; run `sdft {stage}` first "
                             "(or `sdft run` for the whole pipeline)")

    def _finish(self, stage: str, summary: dict, started: float) -> dict:
        from sdft.distributed import runtime

        if runtime.rank() == 0:
            atomic_write_json(self._record_path(stage), {"inputs": self._expected(stage), "summary": summary,
                                                         "seconds": round(time.time() - started, 1),
                                                         "world_size": runtime.world_size()})
        runtime.barrier()
        log.info("%s: done in %.1f s", stage, time.time() - started)
        return summary

    def run(self, stage: str) -> dict | None:
        """Run one stage unless it is already complete with this config. Returns its summary."""
        if self.upstream[stage]:
            self._require(self.upstream[stage])
        from sdft.distributed import runtime

        _ = self.device  # join the process group before any rank-dependent step
        if self.force:
            if runtime.rank() == 0:
                for s in STAGES[STAGES.index(stage):]:
                    if (self.root / s).exists():
                        shutil.rmtree(self.root / s)
            runtime.barrier()
        elif self.is_complete(stage):
            log.info("%s: already complete in %s, skipping", stage, self.root / stage)
            return None
        started = time.time()
        (self.root / stage).mkdir(parents=True, exist_ok=True)
        if stage in ("distill", "train") or runtime.rank() == 0:
            summary = getattr(self, f"_{stage}")()
        else:  # filter, eval and export are single-process work: rank 0 does it, the others wait
            summary = {}
        return self._finish(stage, summary, started)

    # -- the stages ---------------------------------------------------------------------------
    def train_examples(self):
        """The training examples and load report, read once per command (distill and filter share them)."""
        if self._examples is None:
            from sdft.data.examples import load_examples

            if not self.cfg.data.train:
                raise StageError("data.train is not set: name the training data file")
            self._examples = load_examples(self.cfg.data.train, self.cfg.data, limit=self.cfg.data.limit)
        return self._examples

    def _distill(self) -> dict:
        from sdft.distributed import runtime
        from sdft.distill.distill import distill
        from sdft.models.loading import load_distill_seed, load_seed_zero3

        examples, report = self.train_examples()
        if self.cfg.distill.mode == "zero3" and runtime.is_distributed():
            model = load_seed_zero3(self.cfg, self.device)
        else:
            model = load_distill_seed(self.cfg, self.device)
        summary = distill(self.cfg, examples, self.root / "distill", model, self.tok)
        return {**summary, "skipped_records": report.skipped}

    def _filter(self) -> dict:
        from sdft.data.examples import write_examples_jsonl
        from sdft.filter.apply import filter_rewrites, load_rewrites, write_stats

        examples, _ = self.train_examples()
        rewrites = {} if self.vanilla else load_rewrites(self.root / "distill" / "rewrites.jsonl")
        gates = [] if self.vanilla else self.cfg.filter.gates
        rows, stats = filter_rewrites(examples, rewrites, gates)
        write_examples_jsonl(self.root / "filter" / "train.jsonl", rows)
        write_stats(self.root / "filter" / "stats.json", stats)
        return stats

    def _train(self) -> dict:
        from sdft.train.recipe import train

        rows = read_jsonl(self.root / "filter" / "train.jsonl")
        return train(self.cfg, rows, self.root / "train", self.tok, self.device)

    def _eval(self) -> dict:
        from sdft.eval.evaluate import evaluate

        report = evaluate(self.cfg, self.root / "eval", self.tok, self.device)
        return {k: report[k] for k in ("seed", "tuned")}

    def _export(self) -> dict:
        from sdft.export.merge import export_model

        path = export_model(self.cfg, self.root / "train" / "final", self.root / "export", self.tok)
        return {"model": str(path)}


def _diff_keys(a, b, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _diff_keys(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [prefix.rstrip(".")]
