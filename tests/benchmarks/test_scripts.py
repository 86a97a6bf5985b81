"""The benchmark scripts run end to end on tiny shapes (their figures are not checked: benchmarks
prove speed, tests prove that the scripts still work and compare the same work in both arms)."""

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow  # each starts a benchmark script in its own process


def _run(script, *args):
    res = subprocess.run([sys.executable, str(REPO / "benchmarks" / script), *args], capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return [json.loads(x) for x in res.stdout.splitlines() if x.startswith('{"')], res.stdout


def test_packing_benchmark_compares_the_same_tokens():
    rows, out = _run("packing.py", "--shape", "tiny", "--seq", "1024", "--tokens", "4096", "--steps", "1")
    by = {(r["dist"], r["arm"]): r for r in rows}
    for dist in ("math", "longtail"):
        assert by[dist, "packed"]["real_tokens"] == by[dist, "padded"]["real_tokens"] > 0
        assert by[dist, "packed"]["slot_efficiency"] > 0.8
    assert by["longtail", "packed"]["slot_efficiency"] > by["longtail", "padded"]["slot_efficiency"]
    assert "longtail: packed / padded: useful tokens/s" in out


def test_train_step_benchmark_runs_both_workloads():
    rows, out = _run("train_step.py", "--shape", "tiny", "--dtype", "float32", "--seq", "128", "--rows", "2",
                     "--steps", "1")
    assert rows[0]["card"] == "cpu" and rows[0]["params"] > 0
    assert [(r["workload"], r["arm"]) for r in rows[1:]] == [("dense", "hf"), ("dense", "sdft"), ("sft", "hf"),
                                                            ("sft", "sdft")]
    assert all(r["tokens_per_s"] > 0 for r in rows[1:])
    assert "sft: sdft / hf: tokens/s" in out


def test_loss_head_benchmark_agrees_with_torch():
    rows, _ = _run("loss_head.py", "--n", "256", "--h", "64", "--v", "1000", "--ignored", "0.5", "--repeat", "1",
                   "--impls", "torch,sdft")
    sdft = next(r for r in rows if r["impl"] == "sdft")
    assert sdft["loss_rel_err"] < 1e-5 and sdft["grad_rel_err"] < 1e-5


def test_generation_benchmark_compares_the_same_tokens():
    rows, out = _run("generation.py", "--shape", "tiny", "--dtype", "float32", "--prompts", "6", "--prompt", "8",
                     "--new", "5", "--batch", "4", "--arms", "hf,continuous")
    arms = {r["arm"]: r for r in rows if "arm" in r}
    assert set(arms) == {"hf-dynamic", "continuous"}
    assert arms["hf-dynamic"]["new_tokens"] == arms["continuous"]["new_tokens"] > 0  # greedy: the very same work
    assert "continuous / hf-dynamic: new tokens/s" in out


def test_generation_benchmark_long_tailed_lengths_end_rows_alike_in_both_arms():
    """The length schedule ends a random model's rows at the same steps under ``generate`` and the engine,
    at lengths that follow the distribution (the quickstart's rewrites: mean 56.9 of at most 128)."""
    rows, out = _run("generation.py", "--shape", "tiny", "--dtype", "float32", "--prompts", "24", "--prompt", "8",
                     "--new", "64", "--batch", "8", "--lengths", "heavy", "--repeat", "2", "--timeline")
    tokens = {(r["round"], r["arm"]): r["new_tokens"] for r in rows if "arm" in r}
    assert set(tokens) == {(1, "hf-dynamic"), (1, "continuous"), (2, "hf-dynamic"), (2, "continuous")}
    assert len(set(tokens.values())) == 1 and 24 < tokens[1, "continuous"] < 24 * 64 / 2
    timeline = next(r for r in rows if r.get("arm") == "continuous")["timeline"]
    decoded = sum(part.get("tokens", 0) for part in timeline.values())
    assert decoded + 24 == tokens[1, "continuous"]  # every prompt's first token comes from its prefill
    assert "continuous / hf-dynamic: new tokens/s" in out and "(median of 2 rounds: " in out
    rows, _ = _run("generation.py", "--shape", "tiny", "--dtype", "float32", "--prompts", "400", "--prompt", "8",
                   "--new", "128", "--batch", "32", "--lengths", "math", "--arms", "continuous")
    assert abs(rows[-1]["new_tokens"] / 400 - 56.9) < 6


def test_divergence_head_benchmark_agrees_with_torch():
    rows, _ = _run("divergence_head.py", "--n", "256", "--h", "64", "--v", "1000", "--repeat", "1",
                   "--impls", "torch,sdft")
    assert [(r["divergence"], r["impl"]) for r in rows] == [("forward_kl", "torch"), ("forward_kl", "sdft"),
                                                           ("jsd", "torch"), ("jsd", "sdft")]
    assert all(r["loss_rel_err"] < 1e-5 for r in rows)


def test_onpolicy_step_benchmark_runs_both_arms(tiny_model_dir):
    """sdft and TRL's trainer at the same settings on the tiny model (TRL is a benchmark dependency:
    skipped without it)."""
    import pytest

    pytest.importorskip("trl")
    rows, out = _run("onpolicy_step.py", "--model", str(tiny_model_dir), "--prompts", "2", "--new-tokens", "6",
                     "--steps", "1")
    result = rows[-1]
    assert set(result) == {"trl", "sdft"}
    assert all(r["s_per_step"] > 0 and 0 < r["mean_answer_tokens"] <= 6 for r in result.values())
    assert "sdft vs trl:" in out


def test_plan_accuracy_benchmark_measures_a_step_and_prints_the_h100_anchor():
    _, out = _run("plan_accuracy.py", "--cases", "mid-full-bfloat16-plain")
    row = next(line for line in out.splitlines() if line.startswith("| mid-full-bfloat16-plain"))
    predicted, measured, ratio = (float(x) for x in row.strip("| ").split(" | ")[-3:])
    assert predicted > 0 and measured > 0 and ratio == pytest.approx(predicted / measured, abs=1e-3)
    assert "within +-15%: " in out and out.count("H100 train step") == 2


@pytest.mark.parametrize("case, ranks", [pytest.param("zero2-2rank", 2, marks=pytest.mark.distributed),
                                         ("zero0-1rank", 1)])
def test_plan_zero_benchmark_measures_each_rank_of_a_step(case, ranks):
    """A DeepSpeed case on two ranks, and sdft's plain PyTorch step on one."""
    _, out = _run("plan_zero.py", "--cases", case)
    row = next(line for line in out.splitlines() if line.startswith(f"| {case}"))
    cells = row.strip("| ").split(" | ")
    plan_held, plan_peak = float(cells[1]), float(cells[4])
    measured_held, measured_peak = ([float(x) for x in cells[i].split(" / ")] for i in (2, 5))
    assert len(measured_held) == len(measured_peak) == ranks  # one figure per rank
    assert all(0 < s < p for s, p in zip(measured_held, measured_peak)) and 0 < plan_held < plan_peak
    assert float(cells[6]) == pytest.approx(plan_peak / max(measured_peak), abs=2e-3)
    assert "within +-15%: " in out


def test_plan_table_plans_every_model_method_and_cluster():
    _, out = _run("plan_table.py")
    rows = [line for line in out.splitlines() if line.startswith("| Llama")]
    assert len(rows) == 3 * 2 * 3 and all(" h |" in r for r in rows)


def test_pipeline_summary_passes_a_finished_run_and_names_what_a_broken_one_lacks(tiny_config):
    """run_gpu.sh's pipeline section ends with this verdict: it must fail a run that did not finish a
    stage of its own table, or that was meant for the GPU and ran without one."""
    from sdft.cli import main

    path, out = tiny_config(n_train=4, n_test=2, train={"max_steps": 1, "save_every": 0})
    assert main(["run", str(path)]) == 0
    res = subprocess.run([sys.executable, str(REPO / "benchmarks" / "pipeline_summary.py"), str(out)],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr[-3000:]
    assert f"run {out.name} | gpus none" in res.stdout and "objective sft" in res.stdout and "steps 1" in res.stdout
    (out / "eval" / "COMPLETE.json").unlink()
    res = subprocess.run([sys.executable, str(REPO / "benchmarks" / "pipeline_summary.py"), "--device", "cuda",
                          str(out)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 1
    assert "FAILED: eval did not finish" in res.stdout and "FAILED: ran without a GPU" in res.stdout
