import pytest

from sdft.data.examples import Example
from sdft.errors import StageError
from sdft.filter.filter import filter_rewrites

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
