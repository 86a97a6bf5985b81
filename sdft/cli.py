"""The ``sdft`` command line: parse -> load the config -> run the command.

    sdft run     CONFIG.yaml [key=value ...]   distill -> filter -> train -> eval -> export,
                                               skipping stages already complete with this config
    sdft distill CONFIG.yaml [key=value ...]   rewrite the answers, then filter them
    sdft filter  CONFIG.yaml [key=value ...]   (re)apply the gates to existing rewrites
    sdft train   CONFIG.yaml [key=value ...]   fine-tune on the filtered data (resumes after a kill)
    sdft eval    CONFIG.yaml [key=value ...]   seed vs tuned with eval.evaluators -> eval.json
    sdft compare CONFIG.yaml [key=value ...]   vanilla FT vs SDFT from one config -> compare/report.md
    sdft export  CONFIG.yaml [key=value ...]   merged safetensors model in <output_dir>/export/model
    sdft config  CONFIG.yaml [key=value ...]   print the resolved config and exit
    sdft plan    CONFIG.yaml [key=value ...] --gpus N --gpu NAME|MEMORY   memory per rank by ZeRO setting

Overrides use dotted keys: ``sdft run examples/tiny.yaml train.lr=2e-4 output_dir=runs/x``.

Errors: an ``SdftError`` (bad config, data or stage state; the message says what to fix) prints one
line and exits with its code (2: config, 1: the rest); ``SDFT_DEBUG=1`` adds the traceback. Any
other exception (out of memory, a library bug) prints its traceback and a hint, and exits 1.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from pathlib import Path

import yaml

# Which stages each command runs, in order (names of ``sdft.pipeline.SDFT_STAGES``; a table without
# some of them, like on-policy's, runs the rest); compare and config run no stage table of their own.
COMMANDS = {
    "run": ("distill", "filter", "train", "eval", "export"),
    "distill": ("distill", "filter"),
    "filter": ("filter",),
    "train": ("train",),
    "eval": ("eval",),
    "export": ("export",),
    "compare": (),
    "config": (),
    "plan": (),
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sdft", description="Self-Distillation Fine-Tuning (Yang et al., ACL 2024).",
                                epilog="Options: docs/config-reference.md; commands: docs/commands.md.")
    sub = p.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        s = sub.add_parser(name, help=f"{name} (see docs/commands.md)")
        s.add_argument("config", help="YAML config file")
        s.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.lr=2e-4")
        if name == "plan":
            s.add_argument("--gpus", type=int, default=1, help="GPUs per node (default 1)")
            s.add_argument("--nodes", type=int, default=1, help="nodes (default 1)")
            s.add_argument("--gpu", default="H100", help="a card's name (docs/plan.md) or its memory, e.g. 48GiB")
            s.add_argument("--examples", type=int, help="training examples, for the time estimate when data.train "
                           "is not a local file (with --avg-tokens)")
            s.add_argument("--avg-tokens", type=int, help="mean tokens of an example (prompt + response)")
            s.add_argument("--write-ds-config", metavar="PATH", help="write the recommended setting's DeepSpeed config")
        elif name != "config":
            s.add_argument("--force", action="store_true",
                           help="redo the stage(s) from scratch, deleting their previous output")
    return p


def main(argv: list[str] | None = None) -> int:
    from sdft.tracking.lazy import defer

    defer("mlflow")  # before anything imports DeepSpeed, whose autotuner imports MLflow (sdft.tracking.lazy)
    args = build_parser().parse_args(argv)
    from sdft.errors import SdftError
    from sdft.run_record import setup_logging

    setup_logging()
    from sdft.utils import stop

    try:
        with stop.for_command():
            return run_command(args)
    except SdftError as e:
        if os.environ.get("SDFT_DEBUG"):
            traceback.print_exc()
        if e.kind == "stopped":
            stop.leave_marker()
            print(f"sdft: stopped: {e}", file=sys.stderr)
        else:
            print(f"sdft: {e.kind} error: {e}", file=sys.stderr)
        return e.exit_code
    except Exception:
        traceback.print_exc()
        print("sdft: unexpected error (the traceback above): not a config or data problem sdft knows how to "
              "explain. Out of memory, a broken install or a bug are the usual causes; the run's config and "
              "package versions are in <output_dir>/run_info/.", file=sys.stderr)
        return 1


def run_command(args: argparse.Namespace) -> int:
    """Load the config, refuse what cannot work, record the run, then run the command's stages."""
    from sdft.config import config_to_dict, load_config

    cfg = load_config(args.config, args.overrides)
    resolved = config_to_dict(cfg)
    if args.command == "config":
        print(yaml.safe_dump(resolved, sort_keys=False), end="")
        return 0
    if args.command == "plan":
        return run_plan(cfg, args)

    from sdft.compare.compare import check_compare, run_compare
    from sdft.context import RunContext
    from sdft.distributed import runtime
    from sdft.models.loading import pick_device
    from sdft.models.quantized import preflight
    from sdft.pipeline import Pipeline
    from sdft.run_folder import hold
    from sdft.run_record import write_run_record
    from sdft.tracking import check_trackers

    device = pick_device(cfg.device)
    preflight(cfg, device)
    check_trackers(cfg)
    ctx = RunContext(cfg)
    pipeline = Pipeline(ctx)
    # Every input the command reads is checked before anything is written, the output folder included.
    if args.command == "compare":
        check_compare(ctx, args.force)
        stages = ("distill", "train", "eval")
    else:
        stages = pipeline.command_stages(COMMANDS[args.command], args.command)
        pipeline.check_inputs(stages, args.force)
    if device.type == "cuda":
        check_gpu_memory(cfg, stages, device)
    hold(ctx.layout, args.command)  # one run per output folder; clears what a killed run left
    write_run_record(ctx.layout, args.command, resolved)
    ctx.open_tracking(new_runs=args.force)  # a tracker that cannot be reached stops here, before any stage
    try:
        if args.command == "compare":
            run_compare(ctx, force=args.force)
        else:
            pipeline.run(stages, force=args.force)
    except BaseException:
        ctx.close_tracking(failed=True)
        raise
    ctx.close_tracking()
    runtime.teardown()
    return 0


def check_gpu_memory(cfg, stages, device) -> None:
    """Refuse a command whose training step or generation engine is planned not to fit this GPU
    (``check_memory``; ``sdft.plan.check``)."""
    import torch

    from sdft.plan.check import check_fits

    per_node = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    nodes = max(1, int(os.environ.get("WORLD_SIZE", "1")) // per_node)
    check_fits(cfg, list(stages), torch.cuda.get_device_properties(device).total_memory, per_node, nodes)


def run_plan(cfg, args: argparse.Namespace) -> int:
    """``sdft plan``: the memory ``cfg`` needs per rank on ``--nodes`` x ``--gpus`` cards ``--gpu``, the
    cheapest setting that fits, and the time it takes."""
    from sdft.errors import ConfigError
    from sdft.plan.cards import card
    from sdft.plan.memory import ZeroSetting
    from sdft.plan.plan import load_model_config, plan, render
    from sdft.plan.recommend import write_ds_config
    from sdft.plan.timing import measure_workload, stated_workload

    if args.gpus < 1 or args.nodes < 1:
        raise ConfigError(f"--gpus {args.gpus} --nodes {args.nodes}: expected 1 or more of each")
    if (args.examples is None) != (args.avg_tokens is None) or (args.examples is not None and
                                                                 (args.examples < 1 or args.avg_tokens < 1)):
        raise ConfigError(f"--examples {args.examples} --avg-tokens {args.avg_tokens}: give both, each 1 or more")
    gpu = card(args.gpu)
    work = (stated_workload(args.examples, args.avg_tokens, cfg) if args.examples is not None
            else measure_workload(cfg))
    report = plan(cfg, load_model_config(cfg), gpu, args.gpus, args.nodes, work)
    print(render(report))
    chosen = report["recommendation"]
    if args.write_ds_config and chosen is not None:
        setting = ZeroSetting(chosen["stage"], chosen["offload_optimizer"], chosen["offload_params"])
        write_ds_config(setting, Path(args.write_ds_config))
        print(f"wrote {args.write_ds_config} ({setting.name}); use train.deepspeed={args.write_ds_config}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
