from sdft.utils.io import append_jsonl, atomic_write_text, read_jsonl, repair_jsonl_tail


def test_repair_drops_unterminated_and_unparsable_tails(tmp_path):
    p = tmp_path / "x.jsonl"
    append_jsonl(p, [{"a": 1}, {"a": 2}])
    with open(p, "a") as f:
        f.write('{"a": 3')
    assert repair_jsonl_tail(p) == len('{"a": 3')
    assert read_jsonl(p) == [{"a": 1}, {"a": 2}]
    with open(p, "a") as f:
        f.write('{"a": \n')
    assert repair_jsonl_tail(p) > 0 and read_jsonl(p) == [{"a": 1}, {"a": 2}]
    assert repair_jsonl_tail(p) == 0


def test_atomic_write_leaves_no_temporary(tmp_path):
    atomic_write_text(tmp_path / "f.txt", "one")
    atomic_write_text(tmp_path / "f.txt", "two")
    assert (tmp_path / "f.txt").read_text() == "two" and [p.name for p in tmp_path.iterdir()] == ["f.txt"]
