"""The training log survives a kill in the middle of an append, and hands the trackers what they lack."""

import json

from sdft.layout import RunLayout
from sdft.tracking import Trackers
from sdft.train.train_log import TrainLog


def _row(step):
    return {"step": step, "loss": 1.0 / step, "lr": 1e-4, "grad_norm": 0.5, "tokens": 10, "epoch": step / 4}


def test_a_torn_last_row_is_dropped_and_the_log_continues(tmp_path):
    layout = RunLayout(tmp_path)
    layout.train_log.parent.mkdir(parents=True)
    rows = [json.dumps(_row(s)) + "\n" for s in (1, 2, 3)]
    layout.train_log.write_text(rows[0] + rows[1] + rows[2][:17])  # killed while appending step 3
    log = TrainLog(layout, start=2)
    assert [r["step"] for r in log.history] == [1, 2]
    log.add(_row(3))
    assert [json.loads(x)["step"] for x in layout.train_log.read_text().splitlines()] == [1, 2, 3]
    # A log from a run resumed at step 1 is cut back to it: no step is logged twice.
    TrainLog(layout, start=1)
    assert [json.loads(x)["step"] for x in layout.train_log.read_text().splitlines()] == [1]


class _Tracker:
    """A tracker run that holds the training steps ``held`` (what a killed run's tracker had written)."""

    def __init__(self, held: list[int]):
        self.steps, self.summary = list(held), {}

    def resume_train(self, step: int) -> int:
        return max(self.steps, default=0)

    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        if step is None:
            self.summary.update(metrics)
        else:
            self.steps.append(step)
            assert metrics["train/loss"] == 1.0 / step and "train/step" not in metrics


def test_on_resume_each_tracker_gets_the_steps_it_lacks_once(tmp_path):
    layout = RunLayout(tmp_path)
    layout.train_log.parent.mkdir(parents=True)
    layout.train_log.write_text("".join(json.dumps(_row(s)) + "\n" for s in (1, 2, 3)))  # killed after step 3
    # resumed from the checkpoint at step 2: one tracker lost everything (W&B's buffer), one has step 1,
    # one has every step the killed run logged (MLflow's server)
    lost, partial, complete = _Tracker([]), _Tracker([1]), _Tracker([1, 2, 3])
    log = TrainLog(layout, start=2, trackers=Trackers([lost, partial, complete]))
    for step in (3, 4):  # training goes on from step 3, with the same numbers
        log.add(_row(step), tokens_per_s=100.0)
    assert lost.steps == partial.steps == complete.steps == [1, 2, 3, 4]
