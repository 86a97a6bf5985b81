"""The trackers of ``tracking.report_to``, opened once per run folder and command, rank 0 only.

One output folder is one tracker run: its ids are kept in ``<output_dir>/tracking/runs.json``, so the
next command on the folder (``sdft train`` after ``sdft distill``, or the rerun after a kill) reports
into the same run, and ``--force`` starts a new one. An arm of ``sdft compare`` is a run of its own in
the same project (W&B: one group; MLflow: a child of the output folder's run).

What is reported, and by whom: the resolved config (``open_trackers``); each logged training step
(``train_log``); each stage's time and the numbers of its summary, the evaluation's metrics among them
(``pipeline``); the compare report's table (``compare``). The run's own files stay the record; a
tracker is a view of them.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

from sdft.config.schema import RunConfig
from sdft.distributed import runtime
from sdft.errors import ConfigError
from sdft.layout import RunLayout
from sdft.utils.io import atomic_write_json

log = logging.getLogger(__name__)

# tracker -> the module it needs (the pip package has the same name)
_MODULES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}


class Tracker(Protocol):
    """One backend's run. ``step`` is the optimizer step of a training row; values without a step (a
    stage's time, an evaluation metric) are the run's summary."""

    run_id: str

    def log_config(self, config: dict) -> None: ...

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None: ...

    def log_table(self, key: str, columns: list[str], rows: list[list]) -> None: ...

    def resume_train(self, step: int) -> int:
        """Training (re)starts after ``step`` steps. Returns the last training step this tracker run
        holds: the rows after it up to ``step`` are sent again from ``train_log.jsonl``, and the rows up
        to it are not sent twice (resumed training is exact, so they are the same numbers)."""

    def close(self, failed: bool = False) -> None: ...


class Trackers:
    """The trackers of one run folder; every call is a no-op on ranks other than 0 and without trackers."""

    def __init__(self, trackers: list[Tracker]):
        self.trackers = trackers
        self.held: dict[int, int] = {}  # id(tracker) -> the last training step it holds

    def __iter__(self) -> Iterator[Tracker]:
        return iter(self.trackers)

    def log_config(self, config: dict) -> None:
        for t in self.trackers:
            t.log_config(config)

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        """Log the finite numbers of ``metrics``; a training step a tracker holds already is not sent again."""
        for t in self.trackers:
            if step is None or step > self.held.get(id(t), 0):
                _send(t, metrics, step)

    def log_train_row(self, row: dict, tokens_per_s: float | None = None) -> None:
        """A row of ``train_log.jsonl`` as ``train/<key>`` at its step (with the measured throughput)."""
        self.log_metrics(_train_metrics(row, tokens_per_s), row["step"])

    def log_summary(self, prefix: str, summary: dict) -> None:
        """Every number in ``summary`` (nested dicts joined with ``/``) as ``<prefix>/<key>``."""
        self.log_metrics(dict(_flatten(summary, prefix)))

    def log_table(self, key: str, columns: list[str], rows: list[list]) -> None:
        for t in self.trackers:
            t.log_table(key, columns, rows)

    def resume_train(self, step: int, history: list[dict]) -> None:
        """Training goes on after ``step`` steps, ``history`` the rows of ``train_log.jsonl`` up to it:
        each tracker gets the rows it lacks (a killed run's tracker may not have written its last ones)
        and is not sent again the ones it holds."""
        for t in self.trackers:
            held = t.resume_train(step)
            for row in history:
                if held < row["step"] <= step:
                    _send(t, _train_metrics(row), row["step"])
            self.held[id(t)] = held

    def close(self, failed: bool = False) -> None:
        for t in self.trackers:
            t.close(failed)
        self.trackers = []


def check_trackers(cfg: RunConfig) -> None:
    """Refuse a tracker of ``tracking.report_to`` that is not installed, before any work."""
    for name in cfg.tracking.report_to:
        if importlib.util.find_spec(_MODULES[name]) is None:
            raise ConfigError(f"tracking.report_to has {name}, but the {_MODULES[name]} package is not installed: "
                              f"pip install {_MODULES[name]} (or pip install 'sdft[tracking]'), or leave it out "
                              "of tracking.report_to")


def open_trackers(cfg: RunConfig, layout: RunLayout, new_run: bool = False, parent: Trackers | None = None,
                  arm: str = "") -> Trackers:
    """Open (rank 0) the trackers of ``cfg.tracking.report_to`` for the run folder ``layout``: the run
    recorded in its ``tracking/runs.json`` unless ``new_run``, else a new one. ``parent``: the output
    folder's trackers when ``layout`` is the arm ``arm`` of ``sdft compare``. A tracker that cannot be
    reached raises ``ConfigError`` naming the option."""
    if not runtime.is_main() or not cfg.tracking.report_to:
        return Trackers([])
    from sdft.tracking.backends import BACKENDS  # each imports its library when opened

    check_trackers(cfg)
    base = cfg.tracking.run_name or Path(cfg.output_dir).resolve().name
    name = f"{base}/{arm}" if arm else base
    known = {} if new_run or not layout.tracking_runs.exists() else json.loads(layout.tracking_runs.read_text())
    parents = {t.__class__.__name__: t for t in (parent or [])}
    opened: list[Tracker] = []
    try:
        for tracker in cfg.tracking.report_to:
            cls = BACKENDS[tracker]
            opened.append(cls(cfg.tracking, layout, name, known.get(tracker), resumed=tracker in known,
                              parent=parents.get(cls.__name__), group=base))
            layout.tracking_runs.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_json(layout.tracking_runs, {**known, **{t.name: t.run_id for t in opened}})
    except BaseException:
        Trackers(opened).close(failed=True)
        raise
    log.info("tracking: %s (run %s)", ", ".join(f"{t.name} {t.where}" for t in opened), name)
    return Trackers(opened)


def _train_metrics(row: dict, tokens_per_s: float | None = None) -> dict:
    speed = {} if tokens_per_s is None else {"tokens_per_s": tokens_per_s}
    return {f"train/{k}": v for k, v in {**row, **speed}.items() if k != "step"}


def _send(tracker: Tracker, metrics: dict, step: int | None) -> None:
    """The finite numbers of ``metrics`` (NaN and infinity are left out: not every tracker takes them)."""
    finite = {k: float(v) for k, v in metrics.items() if _is_number(v) and math.isfinite(v)}
    if finite:
        tracker.log_metrics(finite, step)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _flatten(tree: dict, prefix: str) -> Iterator[tuple[str, float]]:
    for k, v in tree.items():
        key = f"{prefix}/{k}"
        if isinstance(v, dict):
            yield from _flatten(v, key)
        elif _is_number(v):
            yield key, v
