"""Multi-turn conversations through the whole recipe on the tiny model: one rewrite per assistant turn,
each gated on its own, the loss on assistant turns; bad conversations refused before any work."""

import json
import shutil

import pytest

from tests.conftest import run_cli, write_jsonl


def _conversation(i: int, turns: int) -> dict:
    msgs = [{"role": "system", "content": "You add numbers."}] if i % 2 else []
    for k in range(turns):
        a = i + k
        msgs += [{"role": "user", "content": f"What is {a} plus 1?"},
                 {"role": "assistant", "content": f"{a} + 1 = {a + 1}.\nThe answer is {a + 1}."}]
    return {"id": f"conv{i}", "messages": msgs}


@pytest.fixture
def conversations(tiny_config, tmp_path):
    def make(**sections):
        path, out = tiny_config(**sections)
        write_jsonl(tmp_path / "train.jsonl", [_conversation(i, 1 + i % 3) for i in range(6)])
        return path, out

    return make


@pytest.mark.slow
def test_every_assistant_turn_is_rewritten_gated_and_trained(conversations):
    path, out = conversations(distill={"template": "chat"}, train={"template": "chat", "max_steps": 2})
    for command in ("distill", "filter", "train"):
        res = run_cli(command, str(path), "train.loss_turns=all")
        assert res.returncode == 0, res.stderr[-3000:]
    records = [json.loads(line) for line in (out / "distill" / "rewrites.jsonl").read_text().splitlines()]
    # A one-turn conversation is a single-turn example (no turn field); the others have one record per turn.
    assert [(r["id"], r.get("turn")) for r in records] == \
        [(f"conv{i}", None if i % 3 == 0 else k) for i in range(6) for k in range(1 + i % 3)]
    rows = {r["id"]: r for r in map(json.loads, (out / "filter" / "train.jsonl").read_text().splitlines())}
    assert len(rows) == 6 and [len(rows[f"conv{i}"].get("turns", [0])) for i in range(6)] == [1 + i % 3 for i in range(6)]
    for row in rows.values():
        for k, (_user, answer) in enumerate(row.get("history", [])):
            verdict = row["turns"][k]
            assert answer == (verdict["rewrite"] if verdict["kept"] else verdict["original"])
    stats = json.loads((out / "filter" / "stats.json").read_text())
    assert stats["total"] == 12 and stats["examples"] == 6
    assert (out / "train" / "final").exists()


@pytest.mark.slow
def test_only_the_last_turn_is_rewritten_with_turns_last(conversations):
    path, out = conversations(distill={"template": "chat", "turns": "last"})
    res = run_cli("distill", str(path))
    assert res.returncode == 0, res.stderr[-3000:]
    records = [json.loads(line) for line in (out / "distill" / "rewrites.jsonl").read_text().splitlines()]
    assert [(r["id"], r.get("turn")) for r in records] == [(f"conv{i}", i % 3 or None) for i in range(6)]


def test_bad_conversations_stop_before_any_work_with_exit_2(conversations, tmp_path, tiny_model_dir):
    path, out = conversations(distill={"template": "chat"}, train={"template": "chat"})
    bad = _conversation(9, 2)
    bad["messages"][-2]["role"] = "assistant"  # two assistant turns in a row
    write_jsonl(tmp_path / "bad.jsonl", [_conversation(0, 1), bad])
    res = run_cli("run", str(path), f"data.train={tmp_path / 'bad.jsonl'}")
    assert res.returncode == 2, res.stderr[-2000:]
    assert "bad.jsonl:2: conversation 'conv9': turns 3 and 4 are both assistant turns" in res.stderr
    assert not out.exists()

    # A model whose chat template has no system role: the conversation is named, before any work.
    strict = tmp_path / "strict-model"
    shutil.copytree(tiny_model_dir, strict)
    config = json.loads((strict / "tokenizer_config.json").read_text())
    config["chat_template"] = ("{% for m in messages %}{% if m['role'] == 'system' %}"
                               "{{ raise_exception('System role not supported') }}{% endif %}"
                               "<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                               "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    (strict / "tokenizer_config.json").write_text(json.dumps(config))
    (strict / "chat_template.jinja").unlink(missing_ok=True)
    res = run_cli("run", str(path), f"model.path={strict}")
    assert res.returncode == 2, res.stderr[-2000:]
    assert "train.jsonl:2: conversation 'conv1': the tokenizer's chat template rejects this conversation: " \
           "System role not supported" in res.stderr
    assert not out.exists()


@pytest.mark.slow
def test_sigkill_mid_distill_of_conversations_resumes_without_losing_or_repeating_a_turn(conversations, tmp_path):
    """Sampled rewrites (the paper's settings), 3 slots: a kill after the second append, then a resume,
    gives every turn's record once, and the same texts as an unbroken run (each turn's sample is keyed
    by its own id and turn)."""
    sampled = {"do_sample": True, "max_new_tokens": 8}
    path, out = conversations(distill={"template": "chat", "batch_size": 3, "sampling": sampled})
    killed = run_cli("distill", str(path), env={"SDFT_KILL_AT": "distill_batch:2"})
    assert killed.returncode == -9, killed.stderr[-2000:]
    resumed = run_cli("distill", str(path))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "answers already done" in resumed.stderr
    lines = (out / "distill" / "rewrites.jsonl").read_text().splitlines()
    keys = [(r["id"], r.get("turn")) for r in map(json.loads, lines)]
    assert len(keys) == len(set(keys)) == 12
    unbroken = run_cli("distill", str(path), f"output_dir={tmp_path / 'unbroken'}")
    assert unbroken.returncode == 0, unbroken.stderr[-2000:]
    assert (tmp_path / "unbroken" / "distill" / "rewrites.jsonl").read_text().splitlines() == lines
