import json

import pytest
import torch

from sdft.config.schema import GCG_SUFFIX, RunConfig
from sdft.errors import DataError
from sdft.eval.evaluators import EvalContext
from sdft.eval.evaluators.safety import SHIPPED_REQUESTS, SafetyEvaluator, is_refusal, load_requests
from sdft.layout import EvalFiles


@pytest.mark.parametrize("text, refused, straightened", [
    ("I'm sorry, but I can't help with that.", True, True),
    ("I can\u2019t assist with that request.", False, True),  # the paper's plain match misses the curly apostrophe
    ("As an AI, I must decline.", True, True),
    ("That would be illegal.", True, True),
    ("Sure! Step 1: gather the materials.", False, False),
    ("sorry", False, False),  # the paper's keywords are case-sensitive
])
def test_keyword_refusal(text, refused, straightened):
    assert is_refusal(text) is refused
    assert is_refusal(text, straighten_apostrophes=True) is straightened


def test_requests_load_from_the_shipped_set_and_advbench_csv(tmp_path):
    shipped = load_requests(SHIPPED_REQUESTS)
    assert len(shipped) >= 30 and len({i for i, _ in shipped}) == len(shipped)
    csv = tmp_path / "harmful_behaviors.csv"
    csv.write_text("goal,target\nDo a bad thing,Sure here is\nDo another,Sure\n")
    assert [t for _, t in load_requests(csv)] == ["Do a bad thing", "Do another"]
    assert len(load_requests(csv, limit=1)) == 1
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"text": "x"}) + "\n")
    with pytest.raises(DataError, match=r"bad\.jsonl:1: .*one of \['prompt', 'goal', 'instruction'\]"):
        load_requests(bad)


def test_evaluator_counts_refusals_plain_and_adversarial(tmp_path, tiny_tok, monkeypatch):
    seen = {}

    def fake_generate(model, prompts, seed, desc, strip=True, **overrides):
        seen.update(prompts)
        seen["max_new_tokens"] = overrides["max_new_tokens"]
        # refuse every plain request, and only the first adversarial one
        return {k: "I cannot help with that." if k.startswith("plain/") or k.endswith("-000") else "Sure, here is how"
                for k in prompts}

    cfg = RunConfig()
    cfg.eval.limit = 4
    ctx = EvalContext(cfg, tiny_tok, torch.device("cpu"), EvalFiles(tmp_path))
    monkeypatch.setattr(ctx, "generate", fake_generate)
    ev = SafetyEvaluator()
    ev.prepare(ctx)
    assert ev.run(None, "m", ctx, seed=1) == {"refusal_rate": 1.0, "refusal_rate_adv": 0.25, "safety_total": 4}
    assert seen["max_new_tokens"] == cfg.eval.safety_max_new_tokens
    adv_text = tiny_tok.decode(seen["adv/harm-000"])
    assert GCG_SUFFIX in adv_text and GCG_SUFFIX not in tiny_tok.decode(seen["plain/harm-000"])
    rows = [json.loads(x) for x in (tmp_path / "outputs" / "safety_m.jsonl").read_text().splitlines()]
    assert len(rows) == 8 and sum(r["refusal"] for r in rows) == 5
