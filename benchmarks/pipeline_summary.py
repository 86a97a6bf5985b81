"""One row per finished `sdft run` folder: where it ran, what it trained, and whether every stage ended
well. benchmarks/run_gpu.sh's `pipeline` section prints it after its runs; exit 1 when a stage is
missing, a loss is not finite, or a run did not run on the device it was meant to.

    python benchmarks/pipeline_summary.py RUN_DIR [RUN_DIR ...] [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import yaml

from sdft.config import load_config
from sdft.pipeline import stages_for


def summarize(run: Path) -> tuple[dict, list[str]]:
    """The row of one run folder, and what is wrong with it (empty when nothing is)."""
    stages = [s.name for s in stages_for(load_config(run / "config.yaml"))]  # the run's own table
    problems = [f"{stage} did not finish" for stage in stages if not (run / stage / "COMPLETE.json").exists()]
    records = sorted((run / "run_info").glob("*-run.yaml"))
    versions = yaml.safe_load(records[-1].read_text())["versions"] if records else {}
    row = {"run": run.name, "gpus": versions.get("gpus", "none"), "torch": versions.get("torch", "?")}
    summary_file = run / "train" / "final" / "training_summary.json"
    if summary_file.exists():
        t = json.loads(summary_file.read_text())
        row.update(objective=t["objective"], zero=t["zero_stage"], ranks=t["world_size"], steps=t["steps"],
                   loss=f"{t['first_loss']:.4f} -> {t['final_loss']:.4f}")
        if not all(math.isfinite(t[k]) for k in ("first_loss", "final_loss")):
            problems.append(f"loss not finite: {row['loss']}")
    stats_file = run / "filter" / "stats.json"
    if stats_file.exists():
        f = json.loads(stats_file.read_text())
        row["rewrites kept"] = f"{f['accepted']}/{f['total']}"
    eval_file = run / "eval" / "eval.json"
    if eval_file.exists():
        e = json.loads(eval_file.read_text())
        row["task acc seed -> tuned"] = f"{e['seed']['task_accuracy']:.3f} -> {e['tuned']['task_accuracy']:.3f}"
        row["retention KL"] = f"{e['tuned']['retention_kl']:.2e}"
    return row, problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--device", choices=("cuda", "cpu"), help="fail a run whose record shows another")
    args = parser.parse_args(argv)
    failed = False
    for run in args.runs:
        row, problems = summarize(run)
        if args.device == "cuda" and row["gpus"] == "none":
            problems.append("ran without a GPU")
        print(" | ".join(f"{k} {v}" for k, v in row.items()))
        for problem in problems:
            print(f"  FAILED: {problem}")
        failed |= bool(problems)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
