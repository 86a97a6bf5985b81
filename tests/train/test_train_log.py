"""The training log survives a kill in the middle of an append."""

import json

from sdft.layout import RunLayout
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
    log.close()
    assert [json.loads(x)["step"] for x in layout.train_log.read_text().splitlines()] == [1, 2, 3]
    # A log from a run resumed at step 1 is cut back to it: no step is logged twice.
    log = TrainLog(layout, start=1)
    log.close()
    assert [json.loads(x)["step"] for x in layout.train_log.read_text().splitlines()] == [1]
