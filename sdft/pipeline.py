"""The SDFT recipe as a table of stages, and the runner that skips, refuses or runs each one.

    distill -> filter -> train -> eval
                               -> export

Each row of ``SDFT_STAGES`` names a stage, the function that runs it (one per stage package), the
stage whose output it reads, which ranks run it, the config its output depends on, and the input
files it reads (all checked before the first stage of a command starts, so that a missing
``data.test`` stops the run before distillation, not after training). A stage
writes under ``<output_dir>/<stage>/`` and finishes with ``<stage>/COMPLETE.json``: that config, the
upstream stage's record, a summary and the time taken. A stage whose record matches the current
config is skipped; one made with another config is refused with the differing keys, never silently
reused. Within a stage, distill and train resume after a kill (see their modules). The numbers of a
finished stage's summary and its time go to the trackers (``tracking.report_to``) as ``<stage>/<key>``.

``VANILLA_STAGES`` is ``sdft compare``'s baseline arm: no distill stage, and a filter stage that keeps
every original answer, so training sees the task data as it is. ``ON_POLICY_STAGES`` is on-policy
self-distillation (``train.objective=on_policy``): training reads the task data itself, so there is no
distill or filter stage. ``METHODS`` names each (vanilla, sdft, on_policy) with its objective: ``stages_for``
picks the table a config runs, ``sdft compare`` its arms.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial

from sdft.config.schema import RunConfig
from sdft.config.validate import require_files
from sdft.context import RunContext
from sdft.distill.distill import run_distill
from sdft.distributed import runtime
from sdft.distributed.deepspeed import end_zero3_loading
from sdft.errors import ConfigError, StageError
from sdft.eval.evaluate import eval_preflight, run_eval
from sdft.export.export import run_export
from sdft.filter.filter import keep_originals, run_filter
from sdft.templates.prompts import DISTILL_TEMPLATE_NAMES
from sdft.train.recipe import run_train, run_train_on_policy
from sdft.utils import stop
from sdft.utils.faults import maybe_kill
from sdft.utils.io import atomic_write_json

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Stage:
    name: str
    run: Callable[[RunContext], dict]
    """The stage body: returns the summary kept in the stage's record."""
    upstream: str | None
    """The stage whose output this one reads (it must be complete first)."""
    all_ranks: bool
    """True: every rank runs it (the work is sharded, or collectives join the ranks); False: rank 0
    runs it while the others wait."""
    inputs: Callable[[RunConfig], dict]
    """The config the stage's output depends on (without the upstream stage's record)."""
    preflight: Callable[[RunContext], None]
    """Checks what it needs (input files and data, tools) before the first stage of a command starts;
    raises ``ConfigError`` naming the option, or ``DataError`` naming the record."""
    stops_on_signals: bool = False
    """SIGTERM / SIGUSR1 stop it at its own boundaries (a training step, a distilled batch) and, when
    they come after its last one, once its record is written, before the next stage (``sdft.utils.stop``);
    other stages end at once on them and redo or resume what they had not written."""


def _task_data(cfg: RunConfig) -> dict:
    """The training data settings (the held-out files only matter to evaluation)."""
    return {k: v for k, v in asdict(cfg.data).items() if k not in ("test", "general_prompts")}


def _distill_inputs(cfg: RunConfig) -> dict:
    out = {"model": asdict(cfg.model), "data": _task_data(cfg), "distill": asdict(cfg.distill),
           "generation": asdict(cfg.generation), **cfg.prompt_inputs(cfg.distill.template)}
    if cfg.distill.quantized:
        out["quantization"] = asdict(cfg.quantization)
    return out


def _reads(stage: str, model: bool = True, train_data: bool = False) -> Callable[[RunContext], None]:
    """A preflight that checks the seed model's folder and/or ``data.train`` (read whole: every record
    parsed, conversations rendered through the chat template where one is used)."""
    def check(ctx: RunContext) -> None:
        cfg = ctx.cfg
        files = [("data.train", cfg.data.train)] if train_data else []
        if model and not cfg.model.path.startswith("builtin:"):
            files.append(("model.path", cfg.model.path))
        require_files(files, f"the {stage} stage")
        if train_data:
            ctx.check_train_data([DISTILL_TEMPLATE_NAMES[cfg.distill.template], cfg.train.template])

    return check


def _eval_preflight(ctx: RunContext) -> None:
    _reads("eval")(ctx)
    eval_preflight(ctx)


_TRAIN = Stage("train", run_train, "filter", True, lambda cfg: cfg.training_recipe(), _reads("train"),
               stops_on_signals=True)
_EVAL = Stage("eval", run_eval, "train", False,
              lambda cfg: {"eval": asdict(cfg.eval), "generation": asdict(cfg.generation), "test": cfg.data.test,
                           "general_prompts": cfg.data.general_prompts,
                           **cfg.prompt_inputs(cfg.eval.template, cfg.train.template)},
              _eval_preflight)
_EXPORT = Stage("export", run_export, "train", False, lambda cfg: {"export": asdict(cfg.export)}, _reads("export"))

SDFT_STAGES = (
    Stage("distill", run_distill, None, True, _distill_inputs, _reads("distill", train_data=True),
          stops_on_signals=True),
    Stage("filter", run_filter, "distill", False, lambda cfg: {"filter": asdict(cfg.filter)},
          _reads("filter", model=False, train_data=True)),
    _TRAIN, _EVAL, _EXPORT,
)
VANILLA_STAGES = (
    Stage("filter", keep_originals, None, False,
          lambda cfg: {"vanilla": True, "model": asdict(cfg.model), "data": _task_data(cfg)},
          _reads("filter", model=False, train_data=True)),
    _TRAIN, _EVAL, _EXPORT,
)


ON_POLICY_STAGES = (
    Stage("train", run_train_on_policy, None, True, lambda cfg: {**cfg.training_recipe(), "data": _task_data(cfg)},
          _reads("train", train_data=True), stops_on_signals=True),
    _EVAL, _EXPORT,
)


@dataclass(frozen=True)
class Method:
    """A way to fine-tune the seed: one row of ``METHODS``, from which ``sdft run``'s stage table and
    ``sdft compare``'s arms are derived. A new method (or objective) is a row here, its stage table, and
    its name in ``train.objective`` / ``compare.arms`` (``tests/test_pipeline.py`` checks they agree)."""

    name: str
    """Its name as an arm of ``sdft compare`` (``compare.arms``)."""
    objective: str
    """The ``train.objective`` it trains with."""
    stages: tuple[Stage, ...]
    """Its stage table."""
    trains: tuple[str, ...]
    """The stages that make its tuned model (what ``sdft compare`` runs before evaluating every arm)."""
    rewrites: bool
    """Whether its filter stage judged rewrites (the report shows how many were kept)."""
    runs: bool
    """Whether ``sdft run`` with its ``train.objective`` runs this method."""


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("vanilla", "sft", VANILLA_STAGES, ("filter", "train"), rewrites=False, runs=False),
    Method("sdft", "sft", SDFT_STAGES, ("distill", "filter", "train"), rewrites=True, runs=True),
    Method("on_policy", "on_policy", ON_POLICY_STAGES, ("train",), rewrites=False, runs=True),
)}


def stages_for(cfg: RunConfig) -> tuple[Stage, ...]:
    """The stage table ``sdft run`` runs for ``train.objective``: SDFT's rewrite recipe, or on-policy
    self-distillation."""
    return next(m.stages for m in METHODS.values() if m.runs and m.objective == cfg.train.objective)


class Pipeline:
    """Runs stages of one table in one run folder, with completion records."""

    def __init__(self, ctx: RunContext, stages: tuple[Stage, ...] | None = None):
        self.ctx, self.layout = ctx, ctx.layout
        self.stages = {s.name: s for s in (stages or stages_for(ctx.cfg))}

    def command_stages(self, names: tuple[str, ...], command: str) -> tuple[str, ...]:
        """The stages of a command (``names``) this table has; a command left with none is refused."""
        mine = tuple(n for n in names if n in self.stages)
        if not mine:
            raise ConfigError(f"`sdft {command}`: train.objective={self.ctx.cfg.train.objective} has no "
                              f"{' or '.join(names)} stage (its stages: {', '.join(self.stages)})")
        return mine

    def run(self, names: list[str] | tuple[str, ...], force: bool = False) -> None:
        """Run ``names`` in order. ``force`` redoes the first of them and everything after it in the
        table (its output is deleted); the rest then run fresh. Before the first stage starts, every
        input file of the stages that will run is checked."""
        self.check_inputs(names, force)
        for i, name in enumerate(names):
            deferred = self.stages[name].stops_on_signals
            # A stage that stops on signals holds them from its start until its record is written and checked.
            with stop.on_signals() if deferred else contextlib.nullcontext():
                self.run_stage(name, force=force and i == 0)
                later = names[i + 1:]
                if deferred and later and runtime.any_rank(stop.requested() is not None, self.ctx.device):
                    raise stop.Stopped(f"{name}: complete; stopped by {stop.requested() or 'a signal to another rank'}"
                                       f" before {later[0]}; rerun the same command to go on")

    def check_inputs(self, names: list[str] | tuple[str, ...], force: bool = False) -> None:
        """Refuse a missing input of any stage in ``names`` that is not complete yet (all of them with
        ``force``); a stage completed with another config is refused here too."""
        todo = names if force else [n for n in names if not self.is_complete(n)]
        for name in todo:  # once per command: the CLI checks before holding the folder, run() again
            self.ctx.check_once((str(self.layout.root), name), partial(self.stages[name].preflight, self.ctx))

    def run_stage(self, name: str, force: bool = False) -> dict | None:
        """Run one stage unless it is already complete with this config. Returns its summary."""
        stage = self.stages[name]
        if stage.upstream:
            self._require(stage.upstream)
        _ = self.ctx.device  # join the process group before any rank-dependent step
        if force:
            if runtime.is_main():
                order = list(self.stages)
                for later in order[order.index(name):]:
                    shutil.rmtree(self.layout.stage_dir(later), ignore_errors=True)
            runtime.barrier()
        elif self.is_complete(name):
            log.info("%s: already complete in %s, skipping", name, self.layout.stage_dir(name))
            if runtime.is_main():  # again: a killed command's tracker may not have written them
                record = self.record(name)
                self.ctx.trackers.log_summary(name, {**record["summary"], "seconds": record["seconds"]})
            return None
        maybe_kill(f"stage:{name}")
        started = time.time()
        self.layout.stage_dir(name).mkdir(parents=True, exist_ok=True)
        try:
            summary = stage.run(self.ctx) if stage.all_ranks or runtime.is_main() else {}
        except RuntimeError as e:
            if not (runtime.is_distributed() and runtime.is_collective_timeout(e)):
                raise
            raise StageError(f"{name}: rank {runtime.rank()} of {runtime.world_size()} waited "
                             f"collective_timeout_s={self.ctx.cfg.collective_timeout_s} s in a collective that "
                             "another rank did not join (stuck or dead): the run stops here; its checkpoints "
                             "and finished examples are kept, rerun to resume") from e
        finally:
            end_zero3_loading()
        seconds = round(time.time() - started, 1)
        if runtime.is_main():
            atomic_write_json(self.layout.record(name), {"inputs": self._expected(name), "summary": summary,
                                                         "seconds": seconds, "world_size": runtime.world_size()})
            self.ctx.trackers.log_summary(name, {**summary, "seconds": seconds})
        runtime.barrier()
        log.info("%s: done in %.1f s", name, time.time() - started)
        return summary

    def record(self, name: str) -> dict:
        """A complete stage's record: ``{inputs, summary, seconds, world_size}``."""
        return json.loads(self.layout.record(name).read_text())

    def is_complete(self, name: str) -> bool:
        """True when the stage finished with this config; raises when it finished with another one."""
        path = self.layout.record(name)
        if not path.exists():
            return False
        up = self.stages[name].upstream
        if up and not self.layout.record(up).exists():
            raise StageError(f"{path} exists but its input stage {up} is not complete; delete {path.parent}")
        found = self.record(name)["inputs"]
        expected = self._expected(name)
        # A setting added to sdft after the record was written, left at its default, changes nothing;
        # except ``prompt``: a record without it encoded its text templates the way sdft 0.1 did.
        defaults = {k: v for k, v in self.stages[name].inputs(RunConfig()).items() if k != "prompt"}
        differs = _diff_keys(found, expected, defaults)
        if differs:
            diff = ", ".join(differs[:6])
            raise StageError(f"{path.parent} was completed with a different config (differs in: {diff}); "
                             f"use a new output_dir, or pass --force to redo {name} and what follows it")
        return True

    def _require(self, name: str) -> None:
        if not self.is_complete(name):
            raise StageError(f"stage {name} has not completed in {self.layout.root}; run `sdft {name}` first "
                             "(or `sdft run` for the whole pipeline)")

    def _expected(self, name: str) -> dict:
        stage = self.stages[name]
        upstream = self.record(stage.upstream)["inputs"] if stage.upstream else None
        return {**stage.inputs(self.ctx.cfg), "upstream": upstream}


# Settings added after sdft 0.1 whose absence from a record means another behaviour than their default:
# the value the record's run behaved with.
_LEGACY = {"distill.overlength": "skip", "train.overlength": "skip"}


def _diff_keys(found, expected, defaults=None, prefix: str = "") -> list[str]:
    """The dotted keys where a record's ``found`` inputs and the ``expected`` ones differ. A key the record
    lacks is a setting newer than the record: it counts as its ``_LEGACY`` value if it has one, else it
    does not count while its expected value is its default (in ``defaults``, the inputs of a default config)."""
    if isinstance(found, dict) and isinstance(expected, dict):
        defaults = defaults if isinstance(defaults, dict) else {}
        out = []
        for k in sorted(set(found) | set(expected)):
            key = f"{prefix}{k}"
            if k not in found and key in _LEGACY:
                out += [] if expected.get(k) == _LEGACY[key] else [key]
                continue
            if k not in found and k in defaults and expected[k] == defaults[k]:
                continue
            out += _diff_keys(found.get(k), expected.get(k), defaults.get(k), f"{key}.")
        return out
    return [] if found == expected else [prefix.rstrip(".")]
