"""The training log: ``train_log.jsonl`` (one row per logged step) and TensorBoard scalars, rank 0 only.

Rows are appended with an fsync; a torn last row (a kill during the append) is dropped when the log
is next opened, and on resume the log is cut back to the checkpoint's step, so a step is never
logged twice or lost.
"""

from __future__ import annotations

import logging

from sdft.distributed import runtime
from sdft.layout import RunLayout
from sdft.utils.io import append_jsonl, read_jsonl, repair_jsonl_tail, write_jsonl

log = logging.getLogger(__name__)


class TrainLog:
    """Rows ``{step, loss, lr, grad_norm, tokens, epoch}``; ``history`` holds every row of the run."""

    def __init__(self, layout: RunLayout, start: int):
        self.path = layout.train_log
        self.main = runtime.is_main()
        if self.main and (removed := repair_jsonl_tail(self.path)):
            log.warning("%s: dropped a torn last line (%d bytes) left by an interrupted run", self.path, removed)
        runtime.barrier()  # every rank reads the repaired log
        self.history = [r for r in read_jsonl(self.path) if r["step"] <= start] if self.path.exists() and start else []
        self.writer = None
        if self.main:
            write_jsonl(self.path, self.history)
            self.writer = _tensorboard(layout)

    def add(self, row: dict) -> None:
        self.history.append(row)
        if not self.main:
            return
        append_jsonl(self.path, [row])
        if self.writer:
            for key in ("loss", "lr", "grad_norm"):
                self.writer.add_scalar(f"train/{key}", row[key], row["step"])

    def close(self) -> None:
        if self.writer:
            self.writer.close()


def _tensorboard(layout: RunLayout):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional at run time
        log.warning("tensorboard is not installed; scalars go to train_log.jsonl only")
        return None
    return SummaryWriter(log_dir=str(layout.tensorboard))
