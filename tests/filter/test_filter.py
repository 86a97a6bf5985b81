import pytest

from sdft.data.examples import Example
from sdft.errors import StageError
from sdft.filter.filter import filter_rewrites
from tests.conftest import trained_spans
from tests.numerics import assert_scalar_close

EXS = [Example(id=f"e{i}", instruction=f"q{i}", response=f"The answer is {i}.") for i in range(5)]


def test_rewrites_join_by_id_not_position():
    rewrites = {"e3": {"id": "e3", "rewrite": "It is 3."}, "e0": {"id": "e0", "rewrite": "Zero: 0"},
                "e1": {"id": "e1", "rewrite": "It is 7."},
                "e2": {"id": "e2", "rewrite": None, "skipped": "prompt_too_long (9 > distill.cutoff_len=8)"},
                "e4": {"id": "e4", "rewrite": "The reference answer says 4."}}
    rows, stats = filter_rewrites(EXS, dict(reversed(list(rewrites.items()))), ["ban_list", "math"])
    assert [r["id"] for r in rows] == [e.id for e in EXS]  # one row per example, in data order
    by = {r["id"]: r for r in rows}
    assert by["e3"]["response"] == "It is 3." and by["e3"]["kept"] and by["e3"]["original"] == "The answer is 3."
    assert by["e0"]["response"] == "Zero: 0"
    assert by["e1"]["response"] == "The answer is 1." and by["e1"]["reason"] == "rejected:math"
    assert by["e2"]["reason"] == "prompt_too_long" and by["e2"]["response"] == "The answer is 2."
    assert by["e4"]["reason"] == "rejected:ban_list"
    assert stats["total"] == 5 and stats["accepted"] == 2 and stats["fallback"] == 3
    assert stats["reasons"] == {"accepted": 2, "rejected:math": 1, "prompt_too_long": 1, "rejected:ban_list": 1}


def test_missing_rewrites_fall_back_and_foreign_ids_are_refused():
    rows, stats = filter_rewrites(EXS, {}, ["ban_list"])
    assert stats["reasons"] == {"no_rewrite": 5} and [r["response"] for r in rows] == [e.response for e in EXS]
    with pytest.raises(StageError, match="ids not in the training data"):
        filter_rewrites(EXS, {"zz": {"id": "zz", "rewrite": "x"}}, ["ban_list"])


def test_rewrites_are_stripped_before_gating():
    rows, _ = filter_rewrites(EXS[:1], {"e0": {"id": "e0", "rewrite": "  0 \n"}}, ["math"])
    assert rows[0]["response"] == "0"


CONV = Example(id="c", instruction="q2", response="The answer is 2.", system="S",
               history=[["q0", "The answer is 0."], ["q1", "The answer is 1."]])


def test_each_turn_of_a_conversation_is_gated_on_its_own_and_trained_as_kept(tiny_tok):
    """Turn 0 fails the math gate, turn 1 passes, the last turn fails: only turn 1 takes its rewrite, and
    training puts the loss on exactly the kept answers (every turn, or the last)."""
    from sdft.data.tokenize import tokenize_rows

    rewrites = {"c#turn0": {"id": "c", "turn": 0, "rewrite": "It is 5."},
                "c#turn1": {"id": "c", "turn": 1, "rewrite": " One and zero make 1. "},
                "c#turn2": {"id": "c", "turn": 2, "rewrite": "Your response: 2"},
                "e0": {"id": "e0", "rewrite": "0"}}
    rows, stats = filter_rewrites([CONV, EXS[0]], rewrites, ["ban_list", "math"])
    row = rows[0]
    assert row["history"] == [["q0", "The answer is 0."], ["q1", "One and zero make 1."]]
    assert (row["instruction"], row["response"], row["reason"]) == ("q2", "The answer is 2.", "rejected:ban_list")
    assert [(t["turn"], t["kept"], t["reason"]) for t in row["turns"]] == \
        [(0, False, "rejected:math"), (1, True, "accepted"), (2, False, "rejected:ban_list")]
    assert rows[1]["response"] == "0" and "history" not in rows[1] and "turns" not in rows[1]
    assert stats["total"] == 4 and stats["accepted"] == 2 and stats["examples"] == 2

    for loss_turns, trained in [("all", ["The answer is 0.", "One and zero make 1.", "The answer is 2."]),
                                ("last", ["The answer is 2."])]:
        data = tokenize_rows(rows[:1], tiny_tok, "chat", loss_turns=loss_turns)
        ids, labels = data.input_ids[0], data.labels[0]
        assert trained_spans(tiny_tok, ids, labels) == [s + "<|im_end|>\n" for s in trained]
        assert tiny_tok.decode(ids).count("<|im_start|>user\n") == 3


def test_only_the_last_turn_is_rewritten_with_distill_turns_last():
    rows, stats = filter_rewrites([CONV], {"c#turn2": {"id": "c", "turn": 2, "rewrite": "2"}}, ["math"], turns="last")
    assert rows[0]["history"] == CONV.history and rows[0]["response"] == "2"
    assert [t["turn"] for t in rows[0]["turns"]] == [2] and stats["total"] == 1
    with pytest.raises(StageError, match="distill.turns changed"):
        filter_rewrites([CONV], {"c#turn0": {"id": "c", "turn": 0, "rewrite": "0"}}, ["math"], turns="last")


def test_the_gap_is_the_seeds_nll_of_the_answers_before_and_after(tiny_config):
    """filter.measure_gap: the seed's mean NLL of the original training answers and of those after the
    filter, as retention scoring computes it on the rows training will see."""
    import json

    import torch

    from sdft.config import load_config
    from sdft.context import RunContext
    from sdft.data.scoring import retention_metrics
    from sdft.data.tokenize import tokenize_rows
    from sdft.models.loading import load_model
    from sdft.pipeline import Pipeline

    path, out = tiny_config(filter={"gates": ["ban_list", "math"], "measure_gap": True})
    ctx = RunContext(load_config(path))
    Pipeline(ctx).run(["distill", "filter"])
    stats = json.loads((out / "filter" / "stats.json").read_text())
    rows = [json.loads(x) for x in (out / "filter" / "train.jsonl").read_text().splitlines()]
    seed = load_model(ctx.cfg.model.path, "float32", torch.device("cpu"))
    originals = [{**r, "response": r["original"]} for r in rows]
    for name, data in (("original", originals), ("filtered", rows)):
        tokens = tokenize_rows(data, ctx.tok, "math", 512)
        want = retention_metrics(seed, seed, tokens, ctx.tok.pad_token_id)
        assert_scalar_close(stats["gap"][f"{name}_nll"], want["nll"], sides=2)  # batches may be padded otherwise
        assert stats["gap"][f"{name}_tokens"] == want["tokens"]
    kept = sum(r["kept"] for r in rows)
    assert (stats["gap"]["original_nll"] == stats["gap"]["filtered_nll"]) == (kept == 0)
