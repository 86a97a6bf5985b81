import json
import re

import pytest
import torch

from sdft.config import load_config
from sdft.data import load_examples
from sdft.distill.distill import distill, read_done
from sdft.errors import StageError
from sdft.layout import RunLayout
from sdft.models.loading import load_model
from tests.conftest import run_cli


def _setup(tiny_config, **over):
    path, out = tiny_config(**over)
    cfg = load_config(path)
    examples, _ = load_examples(cfg.data.train, cfg.data)
    return cfg, examples, RunLayout(out)


def test_one_record_per_example_and_generation_config_recorded(tiny_config, tiny_model_dir, tiny_tok):
    cfg, examples, layout = _setup(tiny_config)
    model = load_model(str(tiny_model_dir), "float32", torch.device("cpu"))
    summary = distill(cfg, examples, layout, model, tiny_tok)
    rows = [json.loads(line) for line in layout.rewrites.read_text().splitlines()]
    assert [r["id"] for r in rows] == [e.id for e in examples]  # data-set order
    assert all(isinstance(r["rewrite"], str) for r in rows)
    gen = json.loads(layout.generation_config.read_text())
    assert gen["temperature"] == 0.95 and gen["top_p"] == 0.7 and gen["template"] == "math"
    assert summary["generated"] == len(examples)


def test_overlong_prompts_are_cut_and_generated_or_skipped(tiny_config, tiny_model_dir, tiny_tok):
    """As the authors: a prompt over distill.cutoff_len is cut to it (its first tokens) and still
    generated, and counted; distill.overlength=skip records it without a rewrite instead."""
    cfg, examples, layout = _setup(tiny_config, distill={"cutoff_len": 290})
    model = load_model(str(tiny_model_dir), "float32", torch.device("cpu"))
    summary = distill(cfg, examples, layout, model, tiny_tok)
    done = read_done(layout)
    cut = [r for r in done.values() if r["prompt_tokens"] == 290]
    assert cut and summary["prompt_truncated"] == len(cut) < len(examples) and summary["prompt_too_long"] == 0
    assert all(r["rewrite"] is not None for r in done.values())
    cfg, examples, _ = _setup(tiny_config, distill={"cutoff_len": 290, "overlength": "skip"},
                              output_dir=str(layout.root.parent / "skip"))
    layout = RunLayout(cfg.output_dir)
    summary = distill(cfg, examples, layout, model, tiny_tok)
    skipped = [r for r in read_done(layout).values() if r["rewrite"] is None]
    assert len(skipped) == len(cut) and summary["prompt_too_long"] == len(skipped) and summary["prompt_truncated"] == 0
    assert all(r["skipped"].startswith("prompt_too_long") for r in skipped)


def test_resume_repairs_a_torn_tail_and_refuses_other_settings(tiny_config, tiny_model_dir, tiny_tok):
    cfg, examples, layout = _setup(tiny_config)
    model = load_model(str(tiny_model_dir), "float32", torch.device("cpu"))
    distill(cfg, examples, layout, model, tiny_tok)
    lines = layout.rewrites.read_text().splitlines(keepends=True)
    layout.rewrites.write_text("".join(lines[:4]) + lines[4][:10])  # a kill mid-line
    distill(cfg, examples, layout, model, tiny_tok)
    again = [json.loads(x)["id"] for x in layout.rewrites.read_text().splitlines()]
    assert again == [e.id for e in examples]
    cfg.distill.sampling.temperature = 0.5
    with pytest.raises(StageError, match="generated with other settings"):
        distill(cfg, examples, layout, model, tiny_tok)


@pytest.mark.slow
def test_sigkill_mid_distill_then_rerun_equals_an_unbroken_run(tiny_config, tmp_path):
    path, out = tiny_config(n_train=12)
    killed = run_cli("distill", str(path), env={"SDFT_KILL_AT": "distill_batch:2"})
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert not (out / "distill" / "rewrites.jsonl").exists()  # merged only when every rank is through
    partial = (out / "distill" / "rewrites.part-0.jsonl").read_text().splitlines()
    assert 0 < len(partial) < 12 and not (out / "distill" / "COMPLETE.json").exists()
    resumed = run_cli("distill", str(path))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    done = int(re.search(r"resuming, (\d+)/12 answers already done", resumed.stderr).group(1))
    assert 0 < done < 12 and done == len(partial)
    got = {json.loads(x)["id"]: json.loads(x) for x in (out / "distill" / "rewrites.jsonl").read_text().splitlines()}
    assert len(got) == 12 == len((out / "distill" / "rewrites.jsonl").read_text().splitlines())
    assert not list((out / "distill").glob("rewrites.part-*"))
    unbroken = run_cli("distill", str(path), f"output_dir={tmp_path / 'unbroken'}")
    assert unbroken.returncode == 0, unbroken.stderr[-2000:]
    ref = {json.loads(x)["id"]: json.loads(x) for x in (tmp_path / "unbroken" / "distill" / "rewrites.jsonl").read_text().splitlines()}
    assert got == ref  # same samples: batches are seeded by their place in the plan
    assert (out / "filter" / "train.jsonl").exists()


def test_a_kill_between_the_merge_and_the_removal_of_the_parts_recovers(tiny_config, tiny_model_dir, tiny_tok):
    """rewrites.jsonl written, the parts not yet removed: the next run takes the merged file, removes
    the leftover parts and finishes, with every id once."""
    cfg, examples, layout = _setup(tiny_config)
    model = load_model(str(tiny_model_dir), "float32", torch.device("cpu"))
    distill(cfg, examples, layout, model, tiny_tok)
    merged = layout.rewrites.read_text()
    lines = merged.splitlines(keepends=True)
    layout.rewrites_part(0).write_text("".join(lines[:6]))  # what the parts held before the kill
    layout.rewrites_part(1).write_text("".join(lines[6:]))
    summary = distill(cfg, examples, layout, model, tiny_tok)
    assert layout.rewrites.read_text() == merged and layout.rewrites_parts() == []
    assert summary["examples"] == len(examples)


def test_a_batch_torn_apart_by_a_kill_is_generated_again_whole(tiny_config, tiny_model_dir, tiny_tok):
    """generate's texts depend on their batch: a batch of which a kill left only some records is dropped
    and sampled again as a whole, so the resumed rewrites equal an unbroken run's."""
    cfg, examples, layout = _setup(tiny_config, generation={"engine": "hf"})
    model = load_model(str(tiny_model_dir), "float32", torch.device("cpu"))
    distill(cfg, examples, layout, model, tiny_tok)
    unbroken = layout.rewrites.read_text()
    records = [json.loads(x) for x in unbroken.splitlines()]
    first_batch = records[0]["batch"]
    assert sum(r["batch"] == first_batch for r in records) > 1
    layout.rewrites.unlink()
    layout.rewrites_part(0).write_text(json.dumps(next(r for r in records if r["batch"] == first_batch)) + "\n")
    distill(cfg, examples, layout, model, tiny_tok)
    assert layout.rewrites.read_text() == unbroken


@pytest.mark.slow
def test_sigterm_mid_distill_stops_after_a_whole_batch_and_the_rerun_equals_an_unbroken_run(tiny_config, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    from sdft.utils.stop import STOPPED_EXIT
    from tests.conftest import REPO

    path, out = tiny_config(n_train=40, distill={"batch_size": 2, "sampling": {"max_new_tokens": 24}})
    part = out / "distill" / "rewrites.part-0.jsonl"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.Popen([sys.executable, "-m", "sdft", "distill", str(path)], cwd=REPO, env=env,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while not part.exists() or not part.read_text():
        assert proc.poll() is None and time.time() < deadline, "distillation ended or stalled before its first batch"
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=240)[1]
    assert proc.returncode == STOPPED_EXIT, err[-3000:]
    written = len(part.read_text().splitlines())
    assert f"sdft: stopped: distill: stopped by SIGTERM after a whole batch, {written} rewrite(s)" in err
    assert 0 < written < 40
    resumed = run_cli("distill", str(path))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resuming, {written}/40 answers already done" in resumed.stderr
    unbroken = run_cli("distill", str(path), f"output_dir={tmp_path / 'unbroken'}")
    assert unbroken.returncode == 0, unbroken.stderr[-2000:]
    got, ref = ((d / "distill" / "rewrites.jsonl").read_text() for d in (out, tmp_path / "unbroken"))
    assert {json.loads(x)["id"]: json.loads(x) for x in got.splitlines()} == \
        {json.loads(x)["id"]: json.loads(x) for x in ref.splitlines()} and len(got.splitlines()) == 40
