"""What every stage is handed: the config, the run's folder, and what is loaded once per command.

A stage is a function ``stage(ctx: RunContext) -> summary``. The device (joining the process group
on first use), the tokenizer and the training examples are loaded lazily, so a command whose stages
are all complete loads nothing, and a command running several stages loads each once.
"""

from __future__ import annotations

from pathlib import Path

import torch

from sdft.config import config_to_dict
from sdft.config.schema import RunConfig
from sdft.data.examples import Example, LoadReport, load_examples, read_examples
from sdft.data.tokenize import check_renders
from sdft.distributed import runtime
from sdft.errors import ConfigError
from sdft.layout import RunLayout
from sdft.models.loading import load_tokenizer, pick_device
from sdft.tracking import Trackers, open_trackers


class RunContext:
    """One run folder and its config. ``layout`` gives every path under ``cfg.output_dir``."""

    def __init__(self, cfg: RunConfig, layout: RunLayout | None = None, _loaded: dict | None = None):
        self.cfg = cfg
        self.layout = layout or RunLayout(Path(cfg.output_dir))
        self._loaded = {} if _loaded is None else _loaded

    def for_arm(self, layout: RunLayout, cfg: RunConfig | None = None) -> RunContext:
        """The same (or ``cfg``'s) config in another run folder (an arm of ``sdft compare``), sharing what
        is loaded: the device, the tokenizer and the training examples."""
        return RunContext(cfg or self.cfg, layout, self._loaded)

    def _once(self, name: str, load):
        if name not in self._loaded:
            self._loaded[name] = load()
        return self._loaded[name]

    @property
    def device(self) -> torch.device:
        """This rank's device; joins the process group on first use when launched on several ranks."""
        def join() -> torch.device:
            device = pick_device(self.cfg.device)
            runtime.init(device, self.cfg.collective_timeout_s)
            return runtime.local_device(device)

        return self._once("device", join)

    @property
    def trackers(self) -> Trackers:
        """This run folder's trackers (``tracking.report_to``; no-ops on ranks other than 0), opened on
        first use: the output folder's by the command, an arm's of ``sdft compare`` as a run of its own
        beside it. ``open_tracking`` sets whether they start new runs; ``close_tracking`` ends them."""
        opened = self._loaded.setdefault("trackers", {})
        if self.layout.root not in opened:
            parent = next(iter(opened.values()), None)  # the output folder's, opened first
            arm = self.layout.root.name if parent else ""
            trackers = open_trackers(self.cfg, self.layout, self._loaded.get("new_tracker_runs", False), parent, arm)
            trackers.log_config(config_to_dict(self.cfg))
            opened[self.layout.root] = trackers
        return opened[self.layout.root]

    def open_tracking(self, new_runs: bool = False) -> None:
        """Open the output folder's trackers, new runs with ``new_runs`` (``--force``), and report the config."""
        self._loaded["new_tracker_runs"] = new_runs
        _ = self.trackers

    def close_tracking(self, failed: bool = False) -> None:
        """End every tracker run opened by this command (marked failed when the command failed)."""
        for trackers in self._loaded.pop("trackers", {}).values():
            trackers.close(failed)

    @property
    def tok(self):
        return self._once("tok", lambda: load_tokenizer(self.cfg.model.path))

    def train_examples(self) -> tuple[list[Example], LoadReport]:
        """The training examples and the load report, read once per command (distill and filter share them)."""
        if not self.cfg.data.train:
            raise ConfigError("data.train is not set: name the training data file")
        return self._once("examples", lambda: load_examples(self.cfg.data.train, self.cfg.data,
                                                            limit=self.cfg.data.limit))

    def read_examples(self, source: str, fields, *, limit: int = 0, response_required: bool = True) -> list[Example]:
        """A data set's examples (``data.test``, ``data.general_prompts``, a benchmark's records), read once
        per command: the checks before any work and the evaluators share them."""
        key = ("examples", source, repr(fields), limit, response_required)
        return self._once(key, lambda: read_examples(source, fields, limit=limit, response_required=response_required))

    def check_once(self, key: tuple, check) -> None:
        """Run ``check()`` unless this command ran it already under ``key`` (the checks of a stage or of the
        evaluation, which ``sdft compare``'s arms and a pipeline's run would otherwise repeat)."""
        self._once(("checked", *key), check)

    def check_train_data(self, templates: list[str]) -> None:
        """Read the training data and render one conversation of every shape (system turn or not, number
        of turns) with each of ``templates`` that is the chat route, so that a bad record, or a role the
        tokenizer's chat template rejects, stops the command before any work, naming the record."""
        check_renders(self.train_examples()[0], templates, lambda: self.tok,
                      every_turn=self.cfg.train.loss_turns == "all")
