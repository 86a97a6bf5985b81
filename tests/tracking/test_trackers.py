"""The trackers of ``tracking.report_to``, tested for real: a tiny ``sdft run`` killed in training and run
again reports into TensorBoard, W&B (offline: its ``.wandb`` run files are read back record by record)
and a real ``mlflow server`` started on loopback with a SQLite store (read back through its client);
each training step shows once, with the numbers of ``train_log.jsonl``. A tracker that is not installed
or cannot be reached stops the command before any stage."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from sdft.cli import main
from sdft.config import load_config
from sdft.errors import ConfigError
from sdft.tracking import wandb_files
from tests.conftest import EXAMPLES, REPRODUCIBLE_ENV, tiny_run_config


def _config(tmp_path: Path, **tracking) -> Path:
    return tiny_run_config(tmp_path / "tracked.yaml", tracking=tracking)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """``mlflow server`` on loopback with a SQLite store; yields its URI."""
    pytest.importorskip("mlflow")
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"http://127.0.0.1:{_free_port()}"
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{root / 'store.db'}",
         "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1", "--port", uri.rsplit(":", 1)[1],
         "--workers", "1"], stdout=open(root / "server.log", "w"), stderr=subprocess.STDOUT,
        start_new_session=True)  # its own process group: the server starts uvicorn and job consumers
    try:
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(uri + "/health", timeout=2).close()
                break
            except OSError:
                if server.poll() is not None or time.time() > deadline:
                    pytest.fail(f"mlflow server did not start: {(root / 'server.log').read_text()[-2000:]}")
                time.sleep(0.5)
        yield uri
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def _sdft(config: Path, out: Path, *overrides: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sdft", "run", str(config), f"output_dir={out}", *overrides],
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
                               "WANDB_SILENT": "true", **REPRODUCIBLE_ENV, **env},
                          capture_output=True, text=True, timeout=600)


def _wandb_run(tracking_dir: Path, run_id: str) -> dict:
    """The config, history rows and summary of every file of W&B run ``run_id``, oldest first."""
    out = {"config": {}, "history": [], "summary": {}, "files": 0}
    for run_file in wandb_files.run_files(tracking_dir / "wandb", run_id):
        out["files"] += 1
        for r in wandb_files.records(run_file):
            kind = r.WhichOneof("record_type")
            if kind == "run":
                out["config"].update({u.key: json.loads(u.value_json) for u in r.run.config.update})
            elif kind == "config":
                out["config"].update({u.key: json.loads(u.value_json) for u in r.config.update})
            elif kind == "history":
                out["history"].append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item})
            elif kind == "summary":
                out["summary"].update({u.key or "/".join(u.nested_key): json.loads(u.value_json) for u in r.summary.update})
    return out


def _tensorboard_scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """Scalars as TensorBoard shows them (the purged steps of a resumed run gone)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), purge_orphaned_data=True)
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


@pytest.mark.slow
def test_a_killed_and_resumed_run_reports_each_step_once_to_every_tracker(tmp_path, mlflow_server):
    pytest.importorskip("wandb")
    from mlflow import MlflowClient

    config, out = _config(tmp_path, report_to=["tensorboard", "wandb", "mlflow"], wandb_mode="offline",
                          mlflow_tracking_uri=mlflow_server, project="sdft-test"), tmp_path / "run"
    killed = _sdft(config, out, "train.logging_steps=1", SDFT_KILL_AT="train_step:3")  # after step 3 is logged
    assert killed.returncode == -9, killed.stderr[-3000:]
    first_ids = json.loads((out / "tracking" / "runs.json").read_text())
    done = _sdft(config, out, "train.logging_steps=1")
    assert done.returncode == 0, done.stderr[-3000:]
    ids = json.loads((out / "tracking" / "runs.json").read_text())
    assert ids == first_ids  # the rerun went on in the same tracker runs

    rows = [json.loads(x) for x in (out / "train" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    losses = [(r["step"], r["loss"]) for r in rows]
    eval_json = json.loads((out / "eval" / "eval.json").read_text())
    filter_record = json.loads((out / "filter" / "COMPLETE.json").read_text())

    # MLflow, read back through its client from the server
    client = MlflowClient(tracking_uri=mlflow_server)
    run = client.get_run(ids["mlflow"])
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    assert client.get_experiment(run.info.experiment_id).name == "sdft-test"
    assert [(m.step, m.value) for m in client.get_metric_history(ids["mlflow"], "train/loss")] == losses
    assert len(client.get_metric_history(ids["mlflow"], "train/tokens_per_s")) == 4
    assert [m.step for m in client.get_metric_history(ids["mlflow"], "train/lr")] == [1, 2, 3, 4]
    metrics, params = run.data.metrics, run.data.params
    assert metrics["eval/tuned/retention_kl"] == pytest.approx(eval_json["tuned"]["retention_kl"])
    assert metrics["filter/accepted"] == filter_record["summary"]["accepted"]
    assert {"distill/seconds", "filter/seconds", "train/seconds", "eval/seconds", "export/seconds"} <= set(metrics)
    assert params["train.lr"] == "0.001" and params["model.path"] == "builtin:tiny-llama"

    # W&B: the killed run's file and the rerun's, read record by record
    wb = _wandb_run(out / "tracking", ids["wandb"])
    assert wb["files"] == 2
    train_rows = [h for h in wb["history"] if "train/loss" in h]
    assert [(h["_step"], h["train/loss"]) for h in train_rows] == losses
    assert all("train/grad_norm" in h and "train/lr" in h for h in train_rows)
    # the throughput is measured, not in train_log.jsonl: rows sent again from the log (those W&B's buffer
    # lost in the kill) have none; the rerun's own steps have it
    assert all(h["train/tokens_per_s"] > 0 for h in train_rows if h["_step"] > 2)
    assert wb["config"]["train"]["lr"] == 0.001
    assert wb["summary"]["eval/tuned/retention_kl"] == pytest.approx(eval_json["tuned"]["retention_kl"])
    assert wb["summary"]["filter/accepted"] == filter_record["summary"]["accepted"]

    # TensorBoard: the steps the killed run logged after its checkpoint are purged, then logged again
    scalars = _tensorboard_scalars(out / "tracking" / "tensorboard" / ids["tensorboard"])
    assert [(s, pytest.approx(v, rel=1e-6)) for s, v in scalars["train/loss"]] == losses
    assert scalars["eval/tuned/retention_kl"][0][1] == pytest.approx(eval_json["tuned"]["retention_kl"], rel=1e-6)


@pytest.mark.slow
def test_compare_reports_each_arm_as_a_run_and_the_table_to_the_output_folders_run(tmp_path, mlflow_server):
    from mlflow import MlflowClient

    config, out = _config(tmp_path, report_to=["mlflow"], mlflow_tracking_uri=mlflow_server,
                          project="sdft-compare"), tmp_path / "cmp"
    done = subprocess.run([sys.executable, "-m", "sdft", "compare", str(config), f"output_dir={out}",
                           "compare.arms=[vanilla,sdft]"], env={**os.environ, "HF_HUB_OFFLINE": "1"},
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    client = MlflowClient(tracking_uri=mlflow_server)
    root = json.loads((out / "tracking" / "runs.json").read_text())["mlflow"]
    vanilla = json.loads((out / "vanilla" / "tracking" / "runs.json").read_text())["mlflow"]
    assert client.get_run(vanilla).data.tags["mlflow.parentRunId"] == root
    assert client.get_run(vanilla).info.run_name == "cmp/vanilla"
    report = json.loads((out / "compare" / "report.json").read_text())
    table = json.loads(Path(client.download_artifacts(root, "compare/report.json", str(tmp_path))).read_text())
    rows = [dict(zip(table["columns"], row)) for row in table["data"]]
    assert [r["model"] for r in rows] == list(report["models"])  # seed, vanilla, sdft
    assert [r["task_accuracy"] for r in rows] == [report["models"][m]["task_accuracy"] for m in report["models"]]
    assert len(client.get_metric_history(vanilla, "train/loss")) == 4
    assert len(client.get_metric_history(root, "train/loss")) == 4  # the sdft arm is the output folder's run
    assert client.get_run(root).data.metrics["compare/vanilla/task_accuracy"] == report["models"]["vanilla"]["task_accuracy"]


def test_an_unreachable_mlflow_server_stops_the_command_before_any_stage(tmp_path, capsys):
    pytest.importorskip("mlflow")
    out = tmp_path / "run"
    config = _config(tmp_path, report_to=["mlflow"], mlflow_tracking_uri=f"http://127.0.0.1:{_free_port()}")
    assert main(["run", str(config), f"output_dir={out}"]) == 2
    err = capsys.readouterr().err
    assert "tracking.mlflow_tracking_uri" in err and "cannot be reached" in err
    assert not (out / "distill").exists()


def test_a_tracker_that_is_not_installed_is_named_before_the_output_folder_is_touched(tmp_path, capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    out = tmp_path / "run"
    assert main(["run", str(_config(tmp_path, report_to=["tensorboard", "wandb"])), f"output_dir={out}"]) == 2
    err = capsys.readouterr().err
    assert "tracking.report_to has wandb" in err and "pip install wandb" in err
    assert not out.exists()


@pytest.mark.parametrize("report_to", [["neptune"], ["wandb", "wandb"]])
def test_unknown_or_repeated_trackers_are_refused(report_to):
    with pytest.raises(ConfigError, match="tracking.report_to"):
        load_config(str(EXAMPLES / "tiny.yaml"), [f"tracking.report_to={json.dumps(report_to)}"])


def test_trackers_are_silent_on_other_ranks(tmp_path, monkeypatch):
    from sdft.config import RunConfig
    from sdft.layout import RunLayout
    from sdft.tracking import open_trackers

    monkeypatch.setenv("RANK", "1")
    trackers = open_trackers(RunConfig(output_dir=str(tmp_path)), RunLayout(tmp_path))
    assert list(trackers) == []
    trackers.log_metrics({"train/loss": 1.0}, 1)
    assert not (tmp_path / "tracking").exists()
