"""The CLI end to end on the tiny model: examples/tiny.yaml as a user runs it."""

import json

import pytest
import yaml

from tests.conftest import EXAMPLES, REPO, run_cli, snapshot


@pytest.mark.slow
def test_tiny_example_runs_every_stage_then_skips_them(tmp_path):
    out = tmp_path / "tiny"
    env = {"SDFT_CACHE": str(tmp_path / "cache")}
    first = run_cli("run", str(EXAMPLES / "tiny.yaml"), f"output_dir={out}", env=env)
    assert first.returncode == 0, first.stderr[-3000:]
    for stage in ("distill", "filter", "train", "eval", "export"):
        assert (out / stage / "COMPLETE.json").exists(), stage
    report = json.loads((out / "eval" / "eval.json").read_text())
    for model in ("seed", "tuned"):
        assert set(report[model]) >= {"task_accuracy", "task_total", "retention_kl", "retention_nll"}
        assert report[model]["task_total"] == 16
    assert report["seed"]["retention_kl"] == 0.0 and report["tuned"]["retention_kl"] > 0.0
    stats = json.loads((out / "filter" / "stats.json").read_text())
    assert stats["total"] == 32 and stats["accepted"] + stats["fallback"] == 32
    assert (out / "export" / "model" / "model.safetensors").exists()
    # Every command records its resolved config and the package versions.
    record = yaml.safe_load(next((out / "run_info").glob("*-run.yaml")).read_text())
    assert record["versions"]["torch"] and record["config"]["output_dir"] == str(out)
    assert yaml.safe_load((out / "config.yaml").read_text())["train"]["template"] == "math"

    before = snapshot(out)
    again = run_cli("run", str(EXAMPLES / "tiny.yaml"), f"output_dir={out}", env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert snapshot(out) == before  # every stage was skipped: no output file was rewritten

    changed = run_cli("run", str(EXAMPLES / "tiny.yaml"), f"output_dir={out}", "train.lr=5e-4", env=env)
    assert changed.returncode == 1
    assert "train was completed with a different config (differs in: train.lr)" in changed.stderr


def test_config_errors_exit_2_before_any_work(tmp_path):
    res = run_cli("run", str(EXAMPLES / "tiny.yaml"), f"output_dir={tmp_path / 'x'}", "train.lerning_rate=1")
    assert res.returncode == 2
    assert "unknown option train.lerning_rate" in res.stderr
    assert not (tmp_path / "x").exists()
    res = run_cli("run", str(EXAMPLES / "tiny.yaml"), "distill.template=nope")
    assert res.returncode == 2 and "distill.template" in res.stderr


def test_bad_data_is_reported_with_file_and_line(tmp_path, tiny_model_dir):
    data = tmp_path / "d.jsonl"
    data.write_text('{"instruction": "a", "output": "b"}\n{"instruction": "c"}\n')
    res = run_cli("distill", str(EXAMPLES / "tiny.yaml"), f"output_dir={tmp_path / 'o'}", f"data.train={data}",
                  "data.instruction_field=instruction", "data.output_field=output", f"model.path={tiny_model_dir}")
    assert res.returncode == 2
    assert f"{data}:2: missing field 'output'" in res.stderr
    assert not (tmp_path / "o").exists()  # found before the output folder was made


def test_stage_order_is_enforced(tmp_path, tiny_model_dir):
    res = run_cli("train", str(EXAMPLES / "tiny.yaml"), f"output_dir={tmp_path / 'o'}", f"model.path={tiny_model_dir}")
    assert res.returncode == 1 and "stage filter has not completed" in res.stderr


def test_on_policy_has_no_distill_stage_and_says_so(tmp_path, tiny_model_dir):
    out = tmp_path / "o"
    res = run_cli("distill", str(EXAMPLES / "tiny.yaml"), f"output_dir={out}", f"model.path={tiny_model_dir}",
                  "train.objective=on_policy")
    assert res.returncode == 2, res.stderr[-2000:]
    assert "train.objective=on_policy has no distill or filter stage (its stages: train, eval, export)" in res.stderr
    assert not out.exists()


def test_config_command_prints_the_resolved_config():
    res = run_cli("config", str(EXAMPLES / "quickstart.yaml"), "train.lr=1e-3")
    assert res.returncode == 0, res.stderr
    cfg = yaml.safe_load(res.stdout)
    assert cfg["train"]["lr"] == 1e-3 and cfg["model"]["path"] == "builtin:smollm2-135m-instruct"
    assert cfg["data"]["train"] == str(REPO / "examples" / "data" / "math_train.jsonl")


def test_known_errors_print_one_line_and_others_their_traceback(tmp_path, tiny_model_dir, monkeypatch, capsys):
    """An SdftError says what to fix in one line; anything else (say, out of memory) keeps its traceback."""
    from sdft import cli
    from sdft.errors import StageError
    from sdft.pipeline import Pipeline

    args = ["train", str(EXAMPLES / "tiny.yaml"), f"output_dir={tmp_path / 'o'}", f"model.path={tiny_model_dir}"]

    def stage_error(self, names, force=False):
        raise StageError("stage filter has not completed")

    monkeypatch.setattr(Pipeline, "run", stage_error)
    assert cli.main(args) == 1
    err = capsys.readouterr().err
    assert "sdft: stage error: stage filter has not completed" in err and "Traceback" not in err
    monkeypatch.setenv("SDFT_DEBUG", "1")
    assert cli.main(args) == 1 and "Traceback" in capsys.readouterr().err
    monkeypatch.delenv("SDFT_DEBUG")

    def out_of_memory(self, names, force=False):
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(Pipeline, "run", out_of_memory)
    assert cli.main(args) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "RuntimeError: CUDA out of memory" in err and "sdft: unexpected error" in err


def test_a_hub_data_set_that_cannot_be_read_stops_before_any_work(tmp_path, tiny_model_dir):
    from tests.hub_layout import hub, write_hub_repo

    out = tmp_path / "o"
    res = run_cli("run", str(EXAMPLES / "tiny.yaml"), f"output_dir={out}", f"model.path={tiny_model_dir}",
                  "data.train=hub:no-such-user/no-such-set?split=train", env={"HF_DATASETS_OFFLINE": "1"})
    assert res.returncode == 2, res.stderr[-2000:]
    assert "hub:no-such-user/no-such-set?split=train: cannot reach the data set 'no-such-user/no-such-set'" in res.stderr
    assert not out.exists()
    repo = write_hub_repo(tmp_path / "repo", {"train.jsonl": [{"question": "q", "answer": "1"}]})
    res = run_cli("run", str(EXAMPLES / "tiny.yaml"), f"output_dir={out}", f"model.path={tiny_model_dir}",
                  f"data.train={hub(repo, split='validation')}")
    assert res.returncode == 2 and 'Unknown split "validation". Should be one of [\'train\']' in res.stderr
    assert not out.exists()
    res = run_cli("run", str(EXAMPLES / "tiny.yaml"), f"data.test={hub(repo, split='train')}&splt=x")
    assert res.returncode == 2 and "data.test=" in res.stderr and "unknown key 'splt'" in res.stderr
