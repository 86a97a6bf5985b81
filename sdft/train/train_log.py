"""The training log: ``train_log.jsonl`` (one row per logged step, rank 0), each row also sent to the trackers.

Rows are appended with an fsync; a torn last row (a kill during the append) is dropped when the log
is next opened, and on resume the log is cut back to the checkpoint's step, so a step is never
logged twice or lost. The trackers are handed the rows up to the resumed step, so each gets the ones
its run lacks and is not sent twice the ones it holds (``sdft.tracking.Trackers.resume_train``).
"""

from __future__ import annotations

import logging

from sdft.distributed import runtime
from sdft.layout import RunLayout
from sdft.tracking import Trackers
from sdft.utils.io import append_jsonl, read_jsonl, repair_jsonl_tail, write_jsonl

log = logging.getLogger(__name__)


class TrainLog:
    """Rows ``{step, loss, lr, grad_norm, tokens, epoch, ...}``; ``history`` holds every row of the run."""

    def __init__(self, layout: RunLayout, start: int, trackers: Trackers | None = None):
        self.path = layout.train_log
        self.main = runtime.is_main()
        self.trackers = trackers or Trackers([])
        if self.main and (removed := repair_jsonl_tail(self.path)):
            log.warning("%s: dropped a torn last line (%d bytes) left by an interrupted run", self.path, removed)
        runtime.barrier()  # every rank reads the repaired log
        self.history = [r for r in read_jsonl(self.path) if r["step"] <= start] if self.path.exists() and start else []
        if self.main:
            write_jsonl(self.path, self.history)
            self.trackers.resume_train(start, self.history)

    def add(self, row: dict, tokens_per_s: float | None = None) -> None:
        """Append ``row`` (rank 0 writes it); the trackers get its numbers as ``train/<key>`` at its step,
        with ``train/tokens_per_s`` (the measured throughput: not in the file, which resumes bit for bit)."""
        self.history.append(row)
        if not self.main:
            return
        append_jsonl(self.path, [row])
        self.trackers.log_train_row(row, tokens_per_s)
