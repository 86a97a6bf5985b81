"""The lm_eval evaluator scores the model in memory on a local task, exactly as a direct computation does."""

import json

import pytest
import torch

from sdft.config.schema import RunConfig
from sdft.errors import EvalError
from sdft.eval.evaluators import EvalContext
from sdft.eval.evaluators.lm_eval_tasks import LmEvalEvaluator
from sdft.layout import EvalFiles
from sdft.models.loading import load_model

pytest.importorskip("lm_eval")

DOCS = [{"question": "2 + 2 =", "choices": ["3", "4", "5"]},
        {"question": "The sky is", "choices": ["blue", "green", "loud"]},
        {"question": "Fire is", "choices": ["cold", "hot", "wet"]},
        {"question": "Ice is", "choices": ["cold", "hot"]},
        {"question": "One, two,", "choices": ["three", "five", "ten"]}]


def _task_folder(tmp_path, labels):
    data = tmp_path / "docs.jsonl"
    data.write_text("".join(json.dumps({**d, "label": y}) + "\n" for d, y in zip(DOCS, labels)))
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "tiny_mc.yaml").write_text(f"""task: tiny_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: label
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
""")
    return tasks


@torch.no_grad()
def _direct_choices(model, tok) -> list[int]:
    """Per doc, the argmax over choices of log p(" " + choice | question), summed over the choice's tokens."""
    out = []
    for d in DOCS:
        ctx = tok(d["question"], add_special_tokens=False)["input_ids"]
        scores = []
        for choice in d["choices"]:
            cont = tok(d["question"] + " " + choice, add_special_tokens=False)["input_ids"][len(ctx):]
            ids = torch.tensor([ctx + cont])
            logp = torch.log_softmax(model(ids).logits[0, :-1].double(), -1)
            scores.append(sum(float(logp[len(ctx) - 1 + i, t]) for i, t in enumerate(cont)))
        out.append(max(range(len(scores)), key=scores.__getitem__))
    return out


def test_local_task_matches_direct_scoring(tmp_path, tiny_model_dir, tiny_tok):
    model = load_model(str(tiny_model_dir), "float32", torch.device("cpu"))
    # Label 3 docs with the model's own preferred choice and 2 with another one: lm-eval must find
    # exactly the same preferences to report 3/5.
    preferred = _direct_choices(model, tiny_tok)
    labels = [c if i % 2 == 0 else (c + 1) % len(DOCS[i]["choices"]) for i, c in enumerate(preferred)]
    cfg = RunConfig()
    cfg.eval.lm_eval_tasks = ["tiny_mc"]
    cfg.eval.lm_eval_include_path = str(_task_folder(tmp_path, labels))
    cfg.eval.batch_size = 2
    ctx = EvalContext(cfg, tiny_tok, torch.device("cpu"), EvalFiles(tmp_path / "eval"))
    ev = LmEvalEvaluator()
    ev.prepare(ctx)
    metrics = ev.run(model, "tiny", ctx, seed=42)
    assert set(metrics) == {"lm_eval.tiny_mc.acc"}
    assert metrics["lm_eval.tiny_mc.acc"] == pytest.approx(3 / 5)
    assert ev.describe("lm_eval.tiny_mc.acc").higher_is_better is True
    assert (tmp_path / "eval" / "outputs" / "lm_eval_tiny.jsonl").exists()


def test_unknown_task_is_refused_before_any_work(tmp_path, tiny_tok):
    cfg = RunConfig()
    cfg.eval.lm_eval_tasks = ["no_such_task_xyz"]
    ev = LmEvalEvaluator()
    with pytest.raises(EvalError, match=r"no task \['no_such_task_xyz'\].*lm_eval_include_path"):
        ev.prepare(EvalContext(cfg, tiny_tok, torch.device("cpu"), EvalFiles(tmp_path)))


def test_directions_survive_a_report_rebuilt_from_cached_results():
    """A fresh evaluator (no run in this process, as when every result comes from the cache) takes
    each metric's direction from lm-eval's registry: perplexity falls, accuracy rises."""
    ev = LmEvalEvaluator()
    assert ev.describe("lm_eval.wikitext.word_perplexity").higher_is_better is False
    assert ev.describe("lm_eval.arc_easy.acc_norm").higher_is_better is True
    assert ev.describe("lm_eval.mine.my_own_score").higher_is_better is None  # unknown: no verdict
    assert ev.describe("task_accuracy") is None
