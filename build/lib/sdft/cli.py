"""The ``sdft`` command line.

    sdft run     CONFIG.yaml [key=value ...]   distill -> filter -> train -> eval -> export,
                                               skipping stages already complete with this config
    sdft distill CONFIG.yaml [key=value ...]   rewrite the answers, then filter them
    sdft filter  CONFIG.yaml [key=value ...]   (re)apply the gates to existing rewrites
    sdft train   CONFIG.yaml [key=value ...]   fine-tune on the filtered data (resumes after a kill)
    sdft eval    CONFIG.yaml [key=value ...]   seed vs tuned with eval.evaluators -> eval.json
    sdft compare CONFIG.yaml [key=value ...]   vanilla FT vs SDFT from one config -> compare/report.md
    sdft export  CONFIG.yaml [key=value ...]   merged safetensors model in <output_dir>/export/model
    sdft config  CONFIG.yaml [key=value ...]   print the resolved config and exit

Overrides use dotted keys: ``sdft run examples/tiny.yaml train.lr=2e-4 output_dir=runs/x``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

import yaml

COMMANDS = {
    "run": ["distill", "filter", "train", "eval", "export"],
    "distill": ["distill", "filter"],
    "filter": ["filter"],
    "train": ["train"],
    "eval": ["eval"],
    "export": ["export"],
    "compare": [],  # sdft.compare runs both arms' stages itself
    "config": [],
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sdft", description="Self-Distillation Fine-Tuning (Yang et al., ACL 2024).",
                                epilog="Options are documented in README.md (Config reference).")
    sub = p.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        s = sub.add_parser(name, help=f"{name} (see README)")
        s.add_argument("config", help="YAML config file")
        s.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.lr=2e-4")
        if name != "config":
            s.add_argument("--force", action="store_true",
                           help="redo the stage(s) from scratch, deleting their previous output")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from sdft.config import ConfigError, config_to_dict, load_config
    from sdft.utils.runinfo import setup_logging, write_run_record

    setup_logging()
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as e:
        print(f"sdft: config error: {e}", file=sys.stderr)
        return 2
    resolved = config_to_dict(cfg)
    if args.command == "config":
        print(yaml.safe_dump(resolved, sort_keys=False), end="")
        return 0

    from pathlib import Path

    from sdft.data.records import DataError
    from sdft.pipeline import StageError, Stages
    from sdft.templates.prompts import TemplateError

    from sdft.models.loading import pick_device
    from sdft.models.quantized import preflight

    try:
        preflight(cfg, pick_device(cfg.device))
    except (ConfigError, RuntimeError) as e:
        print(f"sdft: config error: {e}", file=sys.stderr)
        return 2
    write_run_record(Path(cfg.output_dir), args.command, resolved)
    stages = Stages(cfg, force=args.force)
    from sdft.distributed import runtime

    try:
        if args.command == "compare":
            from sdft.compare import compare

            compare(cfg, force=args.force)
        for stage in COMMANDS[args.command]:
            stages.run(stage)
            stages.force = False  # --force clears the first stage and all after it; the rest then run fresh
        runtime.teardown()
    except (DataError, StageError, TemplateError, ConfigError, FileNotFoundError, RuntimeError, ValueError) as e:
        # User-facing failures (bad data, mismatched outputs, missing stages) print one clear line;
        # SDFT_DEBUG=1 shows the traceback.
        if os.environ.get("SDFT_DEBUG"):
            raise
        logging.getLogger("sdft").error("%s: %s", type(e).__name__, e)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
