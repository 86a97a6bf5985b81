"""The three trackers of ``tracking.report_to``: TensorBoard, Weights & Biases and MLflow.

Each is opened on rank 0 for one run folder (``trackers.open_trackers``) and imports its library only
then. When training goes on after a kill, each says which training steps its run holds
(``resume_train``): MLflow asks its server, W&B reads its earlier offline files (or the online run's
step), TensorBoard purges its training events and takes every row again from ``train_log.jsonl``.
"""

from __future__ import annotations

import logging
import os
import secrets
import time
import urllib.error
import urllib.request
from pathlib import Path

import yaml

from sdft.config.schema import TrackingConfig
from sdft.errors import ConfigError
from sdft.layout import RunLayout
from sdft.tracking.wandb_files import history, run_files

log = logging.getLogger(__name__)


class TensorBoardTracker:
    """Event files in ``<run folder>/tracking/tensorboard/<run id>`` (``tensorboard --logdir <output_dir>``
    shows every arm of a compare)."""

    name = "tensorboard"

    def __init__(self, cfg: TrackingConfig, layout: RunLayout, run_name: str, run_id: str | None, resumed: bool,
                 parent=None, group: str = ""):
        from torch.utils.tensorboard import SummaryWriter

        self.run_id = run_id or secrets.token_hex(4)
        self.where = str(layout.tensorboard / self.run_id)
        self.writer = SummaryWriter(log_dir=self.where)

    def log_config(self, config: dict) -> None:
        self.writer.add_text("config", "```\n" + yaml.safe_dump(config, sort_keys=False) + "```", 0)

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, step or 0)
        self.writer.flush()

    def log_table(self, key: str, columns: list[str], rows: list[list]) -> None:
        lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
        self.writer.add_text(key, "\n".join(lines), 0)

    def resume_train(self, step: int) -> int:
        # What SummaryWriter(purge_step=1) writes: TensorBoard hides the earlier training events (steps >= 1;
        # the summaries sit at step 0), and every row is sent again from the log.
        from tensorboard.compat.proto.event_pb2 import Event, SessionLog

        writer = self.writer._get_file_writer()
        writer.add_event(Event(step=1, file_version="brain.Event:2"))
        writer.add_event(Event(step=1, session_log=SessionLog(status=SessionLog.START)))
        return 0

    def close(self, failed: bool = False) -> None:
        self.writer.close()


class WandbTracker:
    """A W&B run in ``tracking.project``, grouped by the output folder's run name; its local files in
    ``<run folder>/tracking/wandb``."""

    name = "wandb"

    def __init__(self, cfg: TrackingConfig, layout: RunLayout, run_name: str, run_id: str | None, resumed: bool,
                 parent=None, group: str = ""):
        import wandb

        self.wandb = wandb
        self.run_id = run_id or secrets.token_hex(4)
        layout.tracking_dir.mkdir(parents=True, exist_ok=True)
        try:
            self.run = wandb.init(project=cfg.project, entity=cfg.wandb_entity or None, name=run_name, id=self.run_id,
                                  group=group or None, resume="allow", dir=str(layout.tracking_dir),
                                  mode=cfg.wandb_mode, reinit="create_new",
                                  settings=wandb.Settings(console="off", silent=True))
        except Exception as e:  # wandb raises its own kinds (no API key, no network, a bad entity)
            raise ConfigError(f"tracking.report_to has wandb, but the W&B run could not start "
                              f"(tracking.wandb_mode={cfg.wandb_mode}): {e}. Log in (wandb login, or WANDB_API_KEY), "
                              "or set tracking.wandb_mode=offline to write the run locally") from None
        self.resumed, self.mode = resumed, cfg.wandb_mode
        self.wandb_dir = layout.tracking_dir / "wandb"
        self.current = Path(self.run.dir).parent
        self.where = f"{cfg.wandb_mode} {self.run.dir if cfg.wandb_mode == 'offline' else self.run.url}"

    def log_config(self, config: dict) -> None:
        self.run.config.update(config, allow_val_change=True)

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        if step is None:
            self.run.summary.update(metrics)
        else:
            self.run.log(metrics, step=step)

    def log_table(self, key: str, columns: list[str], rows: list[list]) -> None:
        self.run.log({key: self.wandb.Table(columns=columns, data=rows)})

    def resume_train(self, step: int) -> int:
        if not self.resumed:
            return 0
        if self.mode == "online":  # the server's next step
            return max(self.run.step - 1, 0)
        # Offline, each start writes a file of its own (wandb sync joins them): the earlier files hold what
        # the run has; W&B buffers its writes, so a killed process may have left them short.
        earlier = [f for f in run_files(self.wandb_dir, self.run_id) if f.parent != self.current]
        return max((row["_step"] for f in earlier for row in history(f) if "train/loss" in row),
                   default=0)

    def close(self, failed: bool = False) -> None:
        self.run.finish(exit_code=1 if failed else 0)


class MlflowTracker:
    """An MLflow run in the experiment ``tracking.project``; an arm of a compare is a child run of the
    output folder's run, in the same store."""

    name = "mlflow"

    def __init__(self, cfg: TrackingConfig, layout: RunLayout, run_name: str, run_id: str | None, resumed: bool,
                 parent: MlflowTracker | None = None, group: str = ""):
        logging.getLogger("alembic").setLevel(logging.WARNING)  # the SQLite store's schema upgrades
        from mlflow import MlflowClient

        local = f"sqlite:///{layout.mlflow_store.resolve()}"
        self.uri = cfg.mlflow_tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or (parent.uri if parent else local)
        self.where = self.uri
        option = "tracking.mlflow_tracking_uri" if cfg.mlflow_tracking_uri else "the MLflow tracking URI"
        if self.uri.startswith(("http://", "https://")):
            _check_reachable(self.uri, option)
        if self.uri == local:
            layout.tracking_dir.mkdir(parents=True, exist_ok=True)
        self.client = MlflowClient(tracking_uri=self.uri)
        self.new, self.summary_keys = not resumed, set()
        try:
            if resumed and not self._exists(run_id):
                log.warning("tracking: MLflow run %s of %s is not in %s; starting a new run", run_id,
                            layout.tracking_runs, self.uri)
                resumed, self.new = False, True
            if resumed:
                self.run_id = run_id
                self.summary_keys = set(self.client.get_run(run_id).data.metrics)
            else:
                experiment = self.client.get_experiment_by_name(cfg.project)
                experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(
                    cfg.project, artifact_location=layout.mlflow_artifacts.resolve().as_uri() if self.uri == local else None)
                tags = {"mlflow.parentRunId": parent.run_id} if parent else {}
                self.run_id = self.client.create_run(experiment_id, run_name=run_name, tags=tags).info.run_id
            self.client.update_run(self.run_id, status="RUNNING")
        except Exception as e:  # MlflowException and the HTTP client's errors
            raise ConfigError(f"tracking.report_to has mlflow, but {option} {self.uri} refused the run: {e}") from None

    def _exists(self, run_id: str) -> bool:
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_run(run_id)
            return True
        except MlflowException as e:
            if e.error_code == "RESOURCE_DOES_NOT_EXIST":
                return False
            raise

    def log_config(self, config: dict) -> None:
        from mlflow.entities import Param

        if self.new:  # MLflow refuses a parameter's second value; the config of each command is the artifact
            params = [Param(k, str(v)[:6000]) for k, v in _dotted(config)]
            for i in range(0, len(params), 100):
                self.client.log_batch(self.run_id, params=params[i:i + 100])
        self.client.log_dict(self.run_id, config, "config.yaml")

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        if step is None:  # a summary: once (a skipped stage's numbers come again on a rerun)
            metrics = {k: v for k, v in metrics.items() if k not in self.summary_keys}
            self.summary_keys |= set(metrics)
        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step or 0) for k, v in metrics.items()])

    def log_table(self, key: str, columns: list[str], rows: list[list]) -> None:
        self.client.log_table(self.run_id, {c: [row[i] for row in rows] for i, c in enumerate(columns)},
                              f"{key}.json")

    def resume_train(self, step: int) -> int:
        if self.new:
            return 0
        return max((m.step for m in self.client.get_metric_history(self.run_id, "train/loss")), default=0)

    def close(self, failed: bool = False) -> None:
        self.client.set_terminated(self.run_id, "FAILED" if failed else "FINISHED")


BACKENDS = {"tensorboard": TensorBoardTracker, "wandb": WandbTracker, "mlflow": MlflowTracker}


def _check_reachable(uri: str, option: str) -> None:
    """A server that does not answer is named at once (MLflow's own client retries for minutes)."""
    try:
        urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=10).close()
    except (urllib.error.URLError, OSError) as e:
        raise ConfigError(f"tracking.report_to has mlflow, but {option} {uri} cannot be reached: {e}") from None


def _dotted(tree: dict, prefix: str = ""):
    for k, v in tree.items():
        if isinstance(v, dict) and v:
            yield from _dotted(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def _cell(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)
