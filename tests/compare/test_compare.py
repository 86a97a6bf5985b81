"""``sdft compare`` end to end on the tiny model: the three arms, every evaluator, the report, the rerun."""

import json

import pytest
from safetensors.torch import load_file

from tests.conftest import EXAMPLES, run_cli, snapshot


def _adapter(run_dir):
    return load_file(str(run_dir / "train" / "final" / "adapter_model.safetensors"))


@pytest.mark.slow
def test_compare_trains_three_arms_and_writes_the_report(tmp_path, bubblewrap):
    """examples/tiny.yaml as a user runs it (vanilla, sdft and on_policy arms), with the ban-list gate only
    so that rewrites are kept."""
    out = tmp_path / "cmp"
    args = ("compare", str(EXAMPLES / "tiny.yaml"), f"output_dir={out}", "filter.gates=[ban_list]", "eval.checker=math",
            "eval.limit=3", "eval.humaneval_max_new_tokens=16", "eval.evaluators=[task,retention,safety,humaneval]")
    env = {"SDFT_CACHE": str(tmp_path / "cache")}
    res = run_cli(*args, env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads((out / "compare" / "report.json").read_text())
    assert list(report["models"]) == ["seed", "vanilla", "sdft", "on_policy"]
    for metrics in report["models"].values():
        assert {"task_accuracy", "retention_kl", "refusal_rate", "refusal_rate_adv", "humaneval_pass1"} <= set(metrics)
        assert metrics["task_total"] == 3 and metrics["safety_total"] == 3 and metrics["humaneval_total"] == 3
    assert report["models"]["seed"]["retention_kl"] == 0.0
    assert all(report["models"][arm]["retention_kl"] > 0 for arm in ("vanilla", "sdft", "on_policy"))
    assert list(report["verdict"]) == ["sdft", "on_policy"] and report["baseline"] == "vanilla"
    for arm in ("sdft", "on_policy"):
        assert set(report["verdict"][arm]) >= {"task_accuracy", "retention_kl", "refusal_rate", "humaneval_pass1"}
    assert sorted(report["plots"]) == ["plots/humaneval.png", "plots/retention.png", "plots/safety.png",
                                       "plots/task.png"]
    md = (out / "compare" / "report.md").read_text()
    assert "| task accuracy | ↑ |" in md and "rewrites_kept: " in md
    # The vanilla arm trains on the original answers, the SDFT arm on the kept rewrites.
    vanilla_rows = [json.loads(x) for x in (out / "vanilla" / "filter" / "train.jsonl").read_text().splitlines()]
    assert all(r["response"] == r["original"] for r in vanilla_rows) and len(vanilla_rows) == 32
    sdft_stats = json.loads((out / "filter" / "stats.json").read_text())
    assert sdft_stats["accepted"] > 0
    assert any((_adapter(out)[k] != v).any() for k, v in _adapter(out / "vanilla").items())
    # The on-policy arm: no distill or filter stage, its objective in its train record and report facts.
    # (its tracker run, TensorBoard by default, is a run of its own: tracking/)
    assert sorted(p.name for p in (out / "on_policy").iterdir() if p.is_dir()) == ["tracking", "train"]
    record = json.loads((out / "on_policy" / "train" / "COMPLETE.json").read_text())
    assert record["inputs"]["train"]["objective"] == "on_policy" and record["summary"]["objective"] == "on_policy"
    assert "on_policy" not in json.loads((out / "train" / "COMPLETE.json").read_text())["inputs"]["train"]  # sft
    assert report["arms"]["on_policy"]["objective"] == "on_policy"
    assert any((_adapter(out / "on_policy")[k] != v).any() for k, v in _adapter(out / "vanilla").items())

    # A rerun skips both arms' stages and reuses every evaluator result: only the report is rewritten.
    before = snapshot(out)
    again = run_cli(*args, env=env, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    after = snapshot(out)
    report_files = {k for k in before if k.startswith(("compare/report", "compare/plots"))}
    assert {k: v for k, v in after.items() if k not in report_files} == {
        k: v for k, v in before.items() if k not in report_files}
    assert len([k for k in before if k.startswith("compare/results/")]) == 4
    assert json.loads((out / "compare" / "report.json").read_text())["models"] == report["models"]


@pytest.mark.slow
def test_arms_differ_only_by_their_data(tiny_config):
    """When every rewrite is rejected both arms see the same data: same seed and order give the same weights."""
    # Every prompt is over distill.cutoff_len, so every example keeps its original answer.
    cfg, out = tiny_config(n_train=8, n_test=2, distill={"cutoff_len": 4}, eval={"limit": 2, "evaluators": ["task"]},
                           compare={"arms": ["vanilla", "sdft"]})
    res = run_cli("compare", str(cfg), timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert json.loads((out / "filter" / "stats.json").read_text())["accepted"] == 0
    vanilla, sdft = _adapter(out / "vanilla"), _adapter(out)
    assert all((vanilla[k] == sdft[k]).all() for k in vanilla)
