"""The forgetting report of ``sdft compare``: ``report.json``, ``report.md`` and PNG plots.

Every metric is shown for the seed and each arm (vanilla, sdft, on_policy, those compared) with its spread: the standard deviation over
``eval.seeds`` when sampling, else the standard error the evaluator measured (retention: over
prompts), else, for a proportion (accuracy, refusal rate, pass@1), the binomial standard error
sqrt(p (1 - p) / n). Each arm is judged against the baseline (vanilla, when compared): a difference is
called "within noise" when it is
smaller than twice the combined spread, or, for yes/no outcomes on the same items (task answers,
refusals, HumanEval problems), when the exact McNemar test on the paired outcomes gives p >= 0.05;
so that a few lucky examples are not read as a finding.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from sdft.eval import Evaluator, Metric, describe
from sdft.layout import EvalFiles
from sdft.utils.io import atomic_write_json, atomic_write_text

BASELINE = "vanilla"


def arms_of(results: dict[str, dict]) -> list[str]:
    """The trained arms of ``results`` (every model but the seed), in order."""
    return [name for name in results if name != "seed"]


def baseline_of(arms: list[str]) -> str:
    """The arm the others are judged against: vanilla fine-tuning when compared, else the first arm."""
    return BASELINE if BASELINE in arms else arms[0]


def spread(result: dict, metric: str, info: Metric) -> float | None:
    """The metric's spread for one model: std over seeds, else the binomial standard error, else None."""
    if metric in result["std"]:
        return result["std"][metric]
    if info.se and info.se in result["metrics"]:
        return result["metrics"][info.se]
    n = result["metrics"].get(info.count_of) if info.count_of else None
    if n:
        p = result["metrics"][metric]
        return math.sqrt(max(p * (1 - p), 0.0) / n)
    return None


def mcnemar_p(first: list[bool], second: list[bool]) -> float:
    """Exact two-sided McNemar p-value for paired yes/no outcomes of two arms on the same items."""
    only_second = sum(s and not f for f, s in zip(first, second))
    only_first = sum(f and not s for f, s in zip(first, second))
    n = only_second + only_first
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(only_second, only_first) + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def verdict(results: dict[str, dict], metric: str, info: Metric, paired: dict | None = None,
            pair: tuple[str, str] = ("vanilla", "sdft")) -> str:
    """Which of the two arms of ``pair`` (baseline, challenger) did better on ``metric``, or "within noise".

    With ``paired`` outcomes (``{arm: [bool per item]}``, the same items in the same order) the exact
    McNemar test decides (p < 0.05); otherwise the difference must exceed twice the combined spread.
    """
    base, arm = pair
    a, b = (results[name]["metrics"].get(metric) for name in pair)
    if a is None or b is None or info.higher_is_better is None:
        return ""
    if a == b:
        return "equal"
    winner = arm if (b > a) == info.higher_is_better else base
    if paired and all(name in paired for name in pair) and len(paired[base]) == len(paired[arm]):
        p = mcnemar_p(paired[base], paired[arm])
        if p >= 0.05:
            return f"within noise (McNemar p={p:.2g})"
        return f"{winner} better (McNemar p={p:.2g})"
    sa, sb = (spread(results[name], metric, info) for name in pair)
    noise = 2 * math.hypot(sa or 0.0, sb or 0.0)
    if abs(b - a) <= noise:
        return "within noise"
    return f"{winner} better"


ANALYSIS = ("analysis.bleu4", "analysis.rougel", "analysis.similarity", "analysis.param_shift", "analysis.param_shift_rel")


def paper_table(results: dict[str, dict], evaluators: list[Evaluator], paper: dict[str, dict[str, float]]) -> dict:
    """The paper-shaped table: a row per model, a column per benchmark (``Evaluator.columns``), each cell
    ``{ours, paper, diff}`` in percent (``paper`` and ``diff`` where the paper reports the number; a
    benchmark that produced no number, e.g. AlpacaEval without an annotator, is ``ours: None``)."""
    columns = [c for ev in evaluators for c in ev.columns()]
    table = {}
    for model, result in results.items():
        row = {}
        for label, metric in columns:
            value = result["metrics"].get(metric)
            ours = None if value is None else 100.0 * value
            theirs = paper.get(model, {}).get(label)
            row[label] = {"ours": ours, "paper": theirs,
                          "diff": None if ours is None or theirs is None else ours - theirs}
        table[model] = row
    return {"columns": [label for label, _ in columns], "rows": table}


def build_report(results: dict[str, dict], evaluators: list[Evaluator], settings: dict, arms: dict,
                 paired: dict[str, dict[str, list[bool]]] | None = None, paper: dict | None = None) -> dict:
    """The ``report.json`` content. ``paired``: ``{metric: {arm: [bool per item]}}`` for paired tests;
    ``paper``: the paper's numbers for the paper table (``compare.paper``)."""
    paired = paired or {}
    metrics = list(dict.fromkeys(m for r in results.values() for m in r["metrics"]))
    info = {m: describe(evaluators, m) for m in metrics}
    scored = [m for m in metrics if info[m].higher_is_better is not None]
    seed = results["seed"]["metrics"]
    arms_run = arms_of(results)
    base = baseline_of(arms_run)
    return {
        "models": {name: r["metrics"] for name, r in results.items()},
        "spread": {name: {m: spread(r, m, info[m]) for m in scored if spread(r, m, info[m]) is not None}
                   for name, r in results.items()},
        "delta_vs_seed": {arm: {m: results[arm]["metrics"][m] - seed[m] for m in scored
                                if m in seed and m in results[arm]["metrics"]} for arm in arms_run},
        "baseline": base,
        "verdict": {arm: {m: verdict(results, m, info[m], paired.get(m), (base, arm)) for m in scored}
                    for arm in arms_run if arm != base},
        "metrics": {m: {"label": info[m].label, "higher_is_better": info[m].higher_is_better, "se": info[m].se}
                    for m in metrics},
        "per_seed": {name: r["per_seed"] for name, r in results.items()},
        "paper_table": paper_table(results, evaluators, paper or {}),
        "settings": settings,
        "arms": arms,
    }


def _fmt(value: float | None, sd: float | None = None) -> str:
    if value is None:
        return "-"
    text = f"{value:.4g}" if not float(value).is_integer() else f"{int(value)}"
    return f"{text} ± {sd:.2g}" if sd else text


def render_markdown(report: dict) -> str:
    """``report.md``: the table, the arms' training facts and the settings."""
    models = list(report["models"])
    arms, base = list(report["delta_vs_seed"]), report["baseline"]
    challengers = list(report["verdict"])
    lines = [f"# Forgetting report: {', '.join(arms)}", "",
             "Each arm is fine-tuned from the seed with the same config, seed and data order: the vanilla arm "
             "on the original answers, the sdft arm on the distilled ones, the on_policy arm by on-policy "
             "self-distillation on the task data. ± is the spread: the standard "
             "deviation over sampling seeds, else the standard error the evaluator measured (retention: over "
             "prompts), else, for a proportion, its binomial standard error. Each verdict judges an arm against "
             f"{base}; \"within noise\": for yes/no "
             "outcomes on the same items, the exact McNemar test on the paired outcomes gives p >= 0.05; "
             "otherwise the arms differ by less than twice their combined spread.", "",
             "| metric | better | " + " | ".join(models) + " | " + " | ".join(f"{a} − seed" for a in arms)
             + "".join(f" | {a} vs {base}" for a in challengers) + " |",
             "|---|---|" + "---|" * (len(models) + len(arms) + len(challengers))]
    for m, info in report["metrics"].items():
        if info["higher_is_better"] is None:
            continue
        cells = [_fmt(report["models"][n].get(m), report["spread"][n].get(m)) for n in models]
        deltas = [_fmt(report["delta_vs_seed"][arm].get(m)) for arm in arms]
        arrow = "↑" if info["higher_is_better"] else "↓"
        lines.append(f"| {info['label']} | {arrow} | " + " | ".join(cells) + " | " + " | ".join(deltas)
                     + "".join(f" | {report['verdict'][a].get(m, '')}" for a in challengers) + " |")
    shown_as_spread = {i.get("se") for i in report["metrics"].values()}
    counts = [m for m, i in report["metrics"].items() if i["higher_is_better"] is None and m not in shown_as_spread]
    if counts:
        lines += ["", "Counts: " + ", ".join(f"{report['metrics'][m]['label']} {_fmt(report['models']['seed'].get(m))}"
                                            for m in counts)]
    lines += _paper_table_lines(report)
    lines += ["", "## Arms", ""]
    for arm, facts in report["arms"].items():
        lines.append(f"- **{arm}**: " + "; ".join(f"{k}: {v}" for k, v in facts.items()))
    lines += ["", "## Settings", "", "```json", json.dumps(report["settings"], indent=2, ensure_ascii=False), "```", ""]
    return "\n".join(lines)


def _paper_table_lines(report: dict) -> list[str]:
    """The paper table in Markdown (percent; "ours (paper, difference)"), and section 5's analysis."""
    table = report.get("paper_table", {})
    if not table.get("columns"):
        return []
    lines = ["", "## The paper's table", "",
             "Percent. A cell reads ours (the paper's number, ours − the paper's) where the paper reports one.", "",
             "| model | " + " | ".join(table["columns"]) + " |", "|---|" + "---|" * len(table["columns"])]
    for model, row in table["rows"].items():
        cells = []
        for col in table["columns"]:
            c = row[col]
            ours = "not judged" if c["ours"] is None and col == "alpaca_eval" else _fmt_pct(c["ours"])
            cells.append(ours if c["paper"] is None else f"{ours} ({_fmt_pct(c['paper'])}, {_fmt_pct(c['diff'], sign=True)})")
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    present = [m for m in ANALYSIS if any(m in v for v in report["models"].values())]
    if present:
        lines += ["", "Section 5 (answers on the analysis benchmark compared with the seed's; weights' change):", "",
                  "| model | " + " | ".join(report["metrics"][m]["label"] for m in present) + " |",
                  "|---|" + "---|" * len(present)]
        for model, metrics in report["models"].items():
            lines.append(f"| {model} | " + " | ".join(_fmt(metrics.get(m)) for m in present) + " |")
    return lines


def _fmt_pct(value: float | None, sign: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+.2f}" if sign else f"{value:.2f}"


def plot(report: dict, evaluators: list[Evaluator], files: EvalFiles) -> list[Path]:
    """One PNG per evaluator: a bar per model for each of its scored metrics, with spread as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(report["models"])
    written = []
    for ev in evaluators:
        metrics = [m for m, i in report["metrics"].items()
                   if i["higher_is_better"] is not None and ev.describe(m) is not None]
        if not metrics:
            continue
        fig, axes = plt.subplots(1, len(metrics), figsize=(3.6 * len(metrics), 3.4), squeeze=False)
        for ax, m in zip(axes[0], metrics):
            values = [report["models"][n].get(m, float("nan")) for n in models]
            errors = [report["spread"][n].get(m, 0.0) for n in models]
            ax.bar(models, values, yerr=errors, capsize=4,
                   color=["#888888", "#d08c3f", "#3f7fd0", "#4fa35a"][:len(models)])
            info = report["metrics"][m]
            ax.set_title(f"{info['label']} ({'higher' if info['higher_is_better'] else 'lower'} is better)",
                         fontsize=9)
        fig.tight_layout()
        path = files.plot(ev.name)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def write_report(files: EvalFiles, results: dict[str, dict], evaluators: list[Evaluator], settings: dict,
                 arms: dict, paired: dict | None = None, paper: dict | None = None) -> dict:
    """Write report.json, report.md and plots/*.png into ``files``; returns the report."""
    report = build_report(results, evaluators, settings, arms, paired, paper)
    report["plots"] = [str(p.relative_to(files.root)) for p in plot(report, evaluators, files)]
    atomic_write_json(files.report_json, report)
    atomic_write_text(files.report_md, render_markdown(report))
    return report
