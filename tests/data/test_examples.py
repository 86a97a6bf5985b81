import csv
import json

import pytest

from sdft.config.schema import DataConfig
from sdft.data import content_id, load_examples
from sdft.errors import DataError

ALPACA = [{"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"},
          {"instruction": "Say hi.", "input": "", "output": "Hi!"}]


def _write(path, rows, kind):
    if kind == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif kind == "json":
        path.write_text(json.dumps(rows))
    elif kind == "csv":
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    elif kind == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    elif kind == "datasets":
        import datasets

        datasets.Dataset.from_list(rows).save_to_disk(str(path))
    return path


@pytest.mark.parametrize("kind", ["jsonl", "json", "csv", "parquet", "datasets"])
def test_every_file_kind_gives_the_same_examples(tmp_path, kind):
    path = _write(tmp_path / (f"d.{kind}" if kind != "datasets" else "d_saved"), ALPACA, kind)
    exs, report = load_examples(path, DataConfig())
    assert report.loaded == 2 and report.skipped == 0
    # The paper's preprocessing: a non-empty input is appended to the instruction after a newline.
    assert exs[0].instruction == "Add the numbers.\n2 and 3" and exs[0].response == "5"
    assert exs[1].instruction == "Say hi."
    assert exs[0].id == content_id("Add the numbers.\n2 and 3", "5")


def test_formats_and_configurable_field_names(tmp_path):
    pr = _write(tmp_path / "pr.jsonl", [{"q": "Hi?", "a": "Hello.", "uid": 7}], "jsonl")
    exs, _ = load_examples(pr, DataConfig(prompt_field="q", response_field="a", id_field="uid"))
    assert (exs[0].id, exs[0].instruction, exs[0].response) == ("7", "Hi?", "Hello.")
    msgs = _write(tmp_path / "m.jsonl", [{"messages": [{"role": "system", "content": "Be brief."},
                                                       {"role": "user", "content": "Hi?"},
                                                       {"role": "assistant", "content": "Hello."}]}], "jsonl")
    exs, _ = load_examples(msgs, DataConfig())
    assert (exs[0].system, exs[0].instruction, exs[0].response) == ("Be brief.", "Hi?", "Hello.")


def test_ids_are_stable_whatever_the_order(tmp_path):
    a, _ = load_examples(_write(tmp_path / "a.jsonl", ALPACA, "jsonl"), DataConfig())
    b, _ = load_examples(_write(tmp_path / "b.jsonl", ALPACA[::-1], "jsonl"), DataConfig())
    assert {e.id: e.instruction for e in a} == {e.id: e.instruction for e in b}


def test_identical_records_get_distinct_ids_and_explicit_duplicates_are_refused(tmp_path):
    exs, _ = load_examples(_write(tmp_path / "d.jsonl", [ALPACA[1], ALPACA[1]], "jsonl"), DataConfig())
    assert exs[0].id != exs[1].id and exs[1].id.startswith(exs[0].id)
    rows = [{"id": "x", **ALPACA[0]}, {"id": "x", **ALPACA[1]}]
    with pytest.raises(DataError, match=r"d2\.jsonl:2: duplicate id 'x' \(first at .*d2\.jsonl:1\)"):
        load_examples(_write(tmp_path / "d2.jsonl", rows, "jsonl"), DataConfig())


def test_malformed_line_is_named_or_skipped(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(ALPACA[0]) + "\n{not json\n" + json.dumps(ALPACA[1]) + "\n")
    with pytest.raises(DataError, match=r"bad\.jsonl:2: malformed JSON.*data\.on_error=skip"):
        load_examples(path, DataConfig())
    exs, report = load_examples(path, DataConfig(on_error="skip"))
    assert len(exs) == 2 and report.skipped == 1 and "bad.jsonl:2" in report.first_errors[0]


def test_missing_field_names_file_line_and_field(tmp_path):
    path = _write(tmp_path / "m.jsonl", [ALPACA[0], {"instruction": "x", "input": ""}], "jsonl")
    with pytest.raises(DataError, match=r"m\.jsonl:2: missing field 'output'"):
        load_examples(path, DataConfig())
    csv_path = _write(tmp_path / "m.csv", [{"instruction": "a", "output": "b"}, {"instruction": "", "output": "c"}], "csv")
    with pytest.raises(DataError, match=r"m\.csv:3: empty instruction"):
        load_examples(csv_path, DataConfig())


def test_unknown_layout_and_empty_and_missing_files(tmp_path):
    with pytest.raises(DataError, match="cannot tell the record layout.*data.format"):
        load_examples(_write(tmp_path / "u.jsonl", [{"text": "x"}], "jsonl"), DataConfig())
    (tmp_path / "e.jsonl").write_text("\n")
    with pytest.raises(DataError, match=r"e\.jsonl: no usable examples"):
        load_examples(tmp_path / "e.jsonl", DataConfig())
    with pytest.raises(DataError, match="data file not found"):
        load_examples(tmp_path / "nope.jsonl", DataConfig())
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(DataError, match="unsupported file type"):
        load_examples(tmp_path / "x.txt", DataConfig())


CONVERSATION = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "a"},
                {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"},
                {"role": "assistant", "content": "d"}]


def test_multi_turn_messages_keep_their_history(tmp_path):
    rows = [{"id": "c1", "messages": CONVERSATION}, {"messages": CONVERSATION[1:3]}]
    exs, _ = load_examples(_write(tmp_path / "t.jsonl", rows, "jsonl"), DataConfig())
    assert (exs[0].id, exs[0].system, exs[0].history, exs[0].instruction, exs[0].response) == \
        ("c1", "Be brief.", [["a", "b"]], "c", "d")
    assert exs[0].turns() == [["a", "b"], ["c", "d"]]
    assert exs[1].history == [] and exs[1].id == content_id("a", "b")  # single-turn ids as they always were
    assert exs[1].to_dict() == {"id": exs[1].id, "instruction": "a", "response": "b", "system": ""}
    # A conversation's content id covers its earlier turns.
    again = load_examples(_write(tmp_path / "u.jsonl", [{"messages": CONVERSATION}], "jsonl"), DataConfig())[0]
    other = [dict(t) for t in CONVERSATION]
    other[2]["content"] = "B"
    changed = load_examples(_write(tmp_path / "v.jsonl", [{"messages": other}], "jsonl"), DataConfig())[0]
    assert again[0].id != changed[0].id


def test_sharegpt_layouts(tmp_path):
    sharegpt = [{"from": "system", "value": "S"}, {"from": "human", "value": "a"}, {"from": "gpt", "value": "b"},
                {"from": "human", "value": "c"}, {"from": "gpt", "value": "d", "weight": 1}]
    lima = ["a", "b", "c", "d"]
    exs, _ = load_examples(_write(tmp_path / "s.jsonl", [{"conversations": sharegpt}, {"conversations": lima}],
                                  "jsonl"), DataConfig())
    assert [(e.system, e.history, e.instruction, e.response) for e in exs] == \
        [("S", [["a", "b"]], "c", "d"), ("", [["a", "b"]], "c", "d")]


@pytest.mark.parametrize("turns,message", [
    (CONVERSATION[:3] + [{"role": "assistant", "content": "x"}], "turns 3 and 4 are both assistant turns"),
    (CONVERSATION[:3] + [{"role": "user", "content": "  "}, CONVERSATION[4]], r"turn 4 \(user\) has empty content"),
    (CONVERSATION[:2] + [{"role": "tool", "content": "x"}], "field 'messages': turn 3 has role 'tool'; expected system, user or assistant"),
    (CONVERSATION[:4], "the conversation ends with a user turn \\(turn 4\\)"),
    ([{"role": "assistant", "content": "x"}], "the conversation starts with an assistant turn"),
])
def test_bad_conversations_name_file_line_and_conversation(tmp_path, turns, message):
    path = _write(tmp_path / "t.jsonl", [{"messages": CONVERSATION}, {"id": "conv-7", "messages": turns}], "jsonl")
    with pytest.raises(DataError, match=rf"t\.jsonl:2: conversation 'conv-7': {message}"):
        load_examples(path, DataConfig())


def test_gsm8k_preprocessing_is_the_papers():
    from sdft.data.conversations import gsm8k_answer

    raw = "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nIn all she sold 48+24 = <<48+24=72>>72 clips.\n#### 72"
    assert gsm8k_answer(raw) == ("Natalia sold 48/2 = 24 clips in May.\nIn all she sold 48+24 = 72 clips.\n"
                                 "The answer is 72.")
    assert gsm8k_answer("x #### 1,000") == "x\nThe answer is 1,000." and gsm8k_answer("no marker") == "no marker"


def test_hub_data_sets_load_through_datasets_with_config_and_split(tmp_path):
    from tests.hub_layout import hub, write_hub_repo

    repo = write_hub_repo(tmp_path / "gsm8k", {
        "main/train-00000-of-00001.parquet": [{"question": "q1", "answer": "a <<1+1=2>>2 #### 2"},
                                              {"question": "q2", "answer": "b #### 3"}],
        "main/test-00000-of-00001.parquet": [{"question": "q3", "answer": "c #### 4"}]},
        configs={"main": {"train": "main/train-*", "test": "main/test-*"}})
    cfg = DataConfig(instruction_field="question", output_field="answer", preprocess="gsm8k")
    exs, _ = load_examples(hub(repo, config="main", split="train"), cfg)
    assert [(e.instruction, e.response) for e in exs] == [("q1", "a 2\nThe answer is 2."), ("q2", "b\nThe answer is 3.")]
    assert exs[1].location == f"{hub(repo, config='main', split='train')}[row 1]"
    with pytest.raises(DataError, match=r"Unknown split \"validation\". Should be one of \['train', 'test'\]"):
        load_examples(hub(repo, config="main", split="validation"), cfg)
    with pytest.raises(DataError, match="BuilderConfig 'nope' not found"):
        load_examples(hub(repo, config="nope", split="train"), cfg)
    with pytest.raises(DataError, match=r"has splits \['train', 'test'\]; name one"):
        load_examples(hub(repo, config="main"), cfg)


def test_an_unreachable_hub_data_set_is_named(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    import datasets.config

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    with pytest.raises(DataError, match=r"hub:no-such-user/no-such-set\?split=train: cannot reach the data set "
                                        r"'no-such-user/no-such-set' on the hub"):
        load_examples("hub:no-such-user/no-such-set?split=train", DataConfig())


def test_limit_and_prompts_without_responses(tmp_path):
    path = _write(tmp_path / "p.jsonl", [{"prompt": f"p{i}"} for i in range(5)], "jsonl")
    exs, _ = load_examples(path, DataConfig(), limit=3, response_required=False)
    assert [e.instruction for e in exs] == ["p0", "p1", "p2"] and exs[0].response == ""


def test_an_explicit_id_equal_to_another_records_hash_id_is_refused_naming_both(tmp_path):
    cfg = DataConfig()
    plain = {"instruction": "What is 2+2?", "output": "4"}
    hashed = content_id("What is 2+2?", "4")
    for rows, first, second in (([plain, {"id": hashed, "instruction": "Other", "output": "5"}], 1, 2),
                                ([{"id": hashed, "instruction": "Other", "output": "5"}, plain], 2, 1)):
        path = tmp_path / "d.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        # The message names the record with the explicit id and the one whose content hashes to it.
        with pytest.raises(DataError, match=rf"d\.jsonl:{second}: id '{hashed}' equals the content-hash id of "
                                            rf"the record at .*d\.jsonl:{first}"):
            load_examples(path, cfg)
    # The numbered repeat of an identical record cannot take an explicit id either.
    path.write_text("".join(json.dumps(r) + "\n" for r in [plain, plain, {"id": f"{hashed}-1", **plain}]))
    with pytest.raises(DataError, match=rf"d\.jsonl:3: id '{hashed}-1' equals the content-hash id"):
        load_examples(path, cfg)


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv"])
def test_a_file_that_is_not_utf8_is_named_with_its_line(tmp_path, suffix):
    cfg = DataConfig()
    path = tmp_path / f"latin1{suffix}"
    good = {"instruction": "Say hi", "output": "Hi"}
    bad = {"instruction": "Caf\xe9?", "output": "Yes"}
    if suffix == ".jsonl":
        text = json.dumps(good) + "\n" + json.dumps(bad, ensure_ascii=False) + "\n"
    elif suffix == ".json":
        text = "[\n" + json.dumps(good) + ",\n" + json.dumps(bad, ensure_ascii=False) + "\n]\n"
    else:
        text = "instruction,output\nSay hi,Hi\nCaf\xe9?,Yes\n"
    path.write_bytes(text.encode("latin-1"))
    line = 3 if suffix != ".jsonl" else 2
    with pytest.raises(DataError, match=rf"latin1\{suffix}:{line}: not UTF-8 text \(byte 0xe9\)"):
        load_examples(path, cfg)
    skip = DataConfig(on_error="skip")
    if suffix == ".jsonl":  # one bad line is one bad record
        examples, report = load_examples(path, skip)
        assert [e.instruction for e in examples] == ["Say hi"] and report.skipped == 1
    else:  # a whole-file format cannot be read past the bad byte
        with pytest.raises(DataError, match=rf"latin1\{suffix}:{line}: not UTF-8"):
            load_examples(path, skip)


def test_a_loading_script_repository_is_refused_with_the_json_form_to_use(tmp_path):
    from tests.hub_layout import hub, write_hub_repo

    repo = write_hub_repo(tmp_path / "lima", {"train.jsonl": [{"conversations": ["a", "b"]}]})
    (repo / "lima.py").write_text("import datasets\n")
    with pytest.raises(DataError, match=r"is a loading script, which datasets no longer runs; read its data files "
                                        r"instead: hub:json\?data_files=hf://datasets/"):
        load_examples(hub(repo, split="train"), DataConfig())
    exs, _ = load_examples(f"hub:json?data_files={repo}/train.jsonl&split=train", DataConfig())
    assert (exs[0].instruction, exs[0].response) == ("a", "b")


def test_an_alpaca_record_with_history_is_a_conversation(tmp_path):
    """The authors' LIMA file: alpaca fields plus ``history``, a list of [user, assistant] pairs."""
    rows = [{"instruction": "And a fruit?", "input": "", "output": "An apple.",
             "history": [["Hi.", "Hello!"], ["Name a color.", "Blue."]]},
            {"instruction": "Alone.", "input": "", "output": "Yes.", "history": []}]
    examples, _ = load_examples(_write(tmp_path / "lima.json", rows, "json"), DataConfig())
    assert examples[0].history == [["Hi.", "Hello!"], ["Name a color.", "Blue."]] and examples[1].history == []
    assert examples[0].turns()[-1] == ["And a fruit?", "An apple."]
    bad = _write(tmp_path / "bad.jsonl", [{"instruction": "q", "output": "a", "history": [["only one"]]}], "jsonl")
    with pytest.raises(DataError, match=r"bad\.jsonl:1: field 'history' must be a list of \[user, assistant\] pairs"):
        load_examples(bad, DataConfig())
