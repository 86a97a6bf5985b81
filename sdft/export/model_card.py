"""The model card of an exported model (``export/model/README.md``), in the Hugging Face hub's format: YAML
front matter (base model, library, tags, data sets) and what a reader needs to trust the model: the
method, the training settings, what the filter kept, and the evaluation against the seed."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import yaml

from sdft.config.schema import RunConfig
from sdft.config.sources import is_hub, parse_hub
from sdft.layout import RunLayout
from sdft.models.builtin import SMOLLM2

# Where a built-in model comes from, for the card's base_model.
BUILTIN_BASES = {SMOLLM2: "HuggingFaceTB/SmolLM2-135M-Instruct"}
_PACKAGED = ("json", "csv", "parquet", "text", "arrow")


def _hub_names(*sources: str) -> list[str]:
    """The hub data set repositories among ``sources`` (local files and packaged builders have none)."""
    names = []
    for source in sources:
        if source and is_hub(source):
            name = parse_hub(source).name
            if name not in _PACKAGED and "/" in name and not name.startswith(("/", ".")):
                names.append(name)
    return list(dict.fromkeys(names))


def _is_repo_id(name: str) -> bool:
    """A hub model id (``owner/name``), not a local folder: only those belong in the card's base_model."""
    return name.count("/") == 1 and not name.startswith((".", "/", "~", "builtin:")) and not Path(name).exists()


def _read(path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def _method(cfg: RunConfig) -> str:
    if cfg.train.objective == "on_policy":
        o = cfg.train.on_policy
        return (f"On-policy self-distillation (Shenfeld et al., 2026): at every step the model samples its own "
                f"answers and the same model, shown the reference answer, teaches it token by token "
                f"({o.divergence}, teacher: {o.teacher}).")
    return ("SDFT, Self-Distillation Fine-Tuning (Yang et al., ACL 2024): the seed model rewrote each reference "
            f"answer in its own words (template `{cfg.distill.template}`), a rewrite was kept when it passed the "
            f"gates {cfg.filter.gates} and the original answer kept otherwise, then the model was fine-tuned on "
            "the result.")


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _eval_table(report: dict | None) -> list[str]:
    if report is None:
        return ["Not evaluated: run `sdft eval` before `sdft export` to put the evaluation here."]
    seed, tuned = report["seed"], report["tuned"]
    metrics = [m for m in tuned if m in report.get("delta", {}) and _number(seed.get(m)) and _number(tuned[m])]
    lines = ["| metric | seed | this model | difference |", "|---|---|---|---|"]
    for m in metrics:
        lines.append(f"| {m} | {seed[m]:.4g} | {tuned[m]:.4g} | {tuned[m] - seed[m]:+.4g} |")
    return lines if metrics else ["No scored metric in `eval/eval.json`."]


def model_card(cfg: RunConfig, layout: RunLayout, dtype: str) -> str:
    """The card's text: front matter and body, from the run's config and its records."""
    t = cfg.train
    base = BUILTIN_BASES.get(cfg.model.path, cfg.model.path)
    tags = ["sdft", "self-distillation", t.method, "on-policy" if t.objective == "on_policy" else "sft"]
    front = {"library_name": "transformers", "tags": tags}
    if _is_repo_id(base):
        front["base_model"] = base
    datasets = _hub_names(cfg.data.train)
    if datasets:
        front["datasets"] = datasets
    summary = _read(layout.final_summary) or {}
    stats = _read(layout.filter_stats) if t.objective == "sft" else None
    settings = {"method": t.method, "objective": t.objective, "template": t.template, "prompt_layout": cfg.prompt.layout,
                "lr": t.lr, "lr_scheduler": t.lr_scheduler, "epochs": t.epochs, "steps": summary.get("steps"),
                "global batch": t.micro_batch_size * t.grad_accum * (summary.get("world_size") or 1),
                "cutoff_len": t.cutoff_len, "precision": t.precision, "seed": t.seed, "saved dtype": dtype}
    if t.method in ("lora", "qlora"):
        settings.update(lora_r=t.lora_r, lora_alpha=t.lora_alpha, lora_dropout=t.lora_dropout,
                        lora_targets=t.lora_targets)
    if t.method == "qlora":
        settings["quantization"] = asdict(cfg.quantization)
    lines = ["---", yaml.safe_dump(front, sort_keys=False).strip(), "---", "",
             f"# {base.rsplit('/', 1)[-1]}, fine-tuned with sdft", "", _method(cfg), "",
             f"Base model: `{base}`. Training data: `{cfg.data.train}`"
             + (f" ({summary['examples']} examples)." if summary.get("examples") else "."), "", "## Training", "",
             "| setting | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in settings.items() if v is not None]
    if summary.get("final_loss") is not None:
        lines += ["", f"Training loss {summary['first_loss']:.4f} at the first step, {summary['final_loss']:.4f} at the last."]
    if stats is not None:
        lines += ["", "## What the filter kept", "",
                  f"{stats['accepted']} of {stats['total']} rewrites ({100 * stats['accepted_rate']:.1f}%) passed the "
                  f"gates; the other {stats['fallback']} examples kept their original answers. Reasons: "
                  + ", ".join(f"{k} {v}" for k, v in stats["reasons"].items()) + "."]
        if "gap" in stats:
            lines.append(f"The seed's mean NLL of the training answers: {stats['gap']['original_nll']:.4f} for the "
                         f"original ones, {stats['gap']['filtered_nll']:.4f} after the filter.")
    lines += ["", "## Evaluation (seed vs this model)", "", *_eval_table(_read(layout.eval.eval_json)), "",
              "## Use", "", "```python", "from transformers import AutoModelForCausalLM, AutoTokenizer",
              "", 'model = AutoModelForCausalLM.from_pretrained("<this folder>")',
              'tokenizer = AutoTokenizer.from_pretrained("<this folder>")', "```", ""]
    return "\n".join(lines)
