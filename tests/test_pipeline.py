"""The stage table and its runner: records, skipping, refusing another config's output, --force."""

import json

import pytest

from sdft.config import load_config
from sdft.context import RunContext
from sdft.errors import StageError
from sdft.pipeline import SDFT_STAGES, VANILLA_STAGES, Pipeline
from tests.conftest import snapshot


def test_the_table_reads_as_the_recipe():
    assert [s.name for s in SDFT_STAGES] == ["distill", "filter", "train", "eval", "export"]
    assert [s.upstream for s in SDFT_STAGES] == [None, "distill", "filter", "train", "train"]
    assert [s.all_ranks for s in SDFT_STAGES] == [True, False, True, False, False]
    for s in SDFT_STAGES:  # each stage's body lives in its own package
        assert s.run.__module__.split(".")[1] == s.name, (s.name, s.run.__module__)
    assert [s.name for s in VANILLA_STAGES] == ["filter", "train", "eval", "export"]
    assert VANILLA_STAGES[0].upstream is None and VANILLA_STAGES[0].run.__name__ == "keep_originals"


def test_records_skip_refuse_and_force(tiny_config):
    path, out = tiny_config(n_train=6, train={"max_steps": 1, "save_every": 0})
    ctx = RunContext(load_config(path))
    pipeline = Pipeline(ctx)
    pipeline.run(["distill", "filter", "train"])
    record = pipeline.record("filter")
    assert record["inputs"]["filter"] == {"gates": ["ban_list", "math"]}
    assert record["inputs"]["upstream"] == pipeline.record("distill")["inputs"]  # the chain of what it depends on
    assert record["summary"]["total"] == 6 and record["world_size"] == 1

    before = snapshot(out)
    Pipeline(ctx).run(["distill", "filter", "train"])
    assert snapshot(out) == before  # complete with this config: nothing rewritten

    other = RunContext(load_config(path, ["filter.gates=[ban_list]", "eval.checker=math"]))
    with pytest.raises(StageError, match=r"filter was completed with a different config \(differs in: filter\.gates\)"):
        Pipeline(other).run(["filter"])
    with pytest.raises(StageError, match="stage filter has not completed"):
        Pipeline(RunContext(load_config(path, [f"output_dir={out.parent / 'empty'}"]))).run(["train"])

    # --force redoes the first stage and deletes what was built on it; the new record has the new config.
    Pipeline(other).run(["filter"], force=True)
    assert not (out / "train").exists()
    assert json.loads((out / "filter" / "COMPLETE.json").read_text())["inputs"]["filter"]["gates"] == ["ban_list"]
    assert snapshot(out / "distill") == {k.removeprefix("distill/"): v for k, v in before.items()
                                         if k.startswith("distill/")}


def test_the_vanilla_arm_keeps_every_original_answer(tiny_config):
    path, out = tiny_config(n_train=5)
    ctx = RunContext(load_config(path))
    arm = ctx.for_arm(ctx.layout.vanilla)
    Pipeline(arm, VANILLA_STAGES).run(["filter"])
    rows = [json.loads(x) for x in (out / "vanilla" / "filter" / "train.jsonl").read_text().splitlines()]
    assert len(rows) == 5 and all(r["response"] == r["original"] and r["reason"] == "no_rewrite" for r in rows)
    assert json.loads((out / "vanilla" / "filter" / "COMPLETE.json").read_text())["inputs"]["vanilla"] is True
    assert not (out / "distill").exists()


def test_a_record_older_than_a_new_setting_stays_valid_while_that_setting_is_at_its_default(tiny_config):
    """A record written before sdft grew a setting lacks its key: complete while the setting keeps its
    default, refused (naming it) once it is changed."""
    path, out = tiny_config(n_train=4)
    ctx = RunContext(load_config(path))
    Pipeline(ctx).run(["distill"])
    record_path = out / "distill" / "COMPLETE.json"
    record = json.loads(record_path.read_text())
    del record["inputs"]["distill"]["turns"], record["inputs"]["data"]["preprocess"]  # as an older sdft wrote it
    record_path.write_text(json.dumps(record))
    assert Pipeline(ctx).is_complete("distill")
    with pytest.raises(StageError, match=r"differs in: distill\.turns\)"):
        Pipeline(RunContext(load_config(path, ["distill.turns=last"]))).is_complete("distill")
    with pytest.raises(StageError, match=r"differs in: distill\.cutoff_len\)"):  # a key it has still counts
        Pipeline(RunContext(load_config(path, ["distill.cutoff_len=999"]))).is_complete("distill")
