"""The paper recipes (examples/paper/): each validates as shipped, and runs end to end (sdft run: distill,
filter, train, eval, export) on the tiny model with a few local records laid out exactly like its data
set's hub records, through the same ``hub:`` code path (``datasets.load_dataset``), offline."""

import json
from pathlib import Path

import pytest

from sdft.config import load_config
from tests.conftest import REPO, run_cli
from tests.hub_layout import hub, write_hub_repo

PAPER = REPO / "examples" / "paper"
RECIPES = sorted(p.stem for p in PAPER.glob("*.yaml"))


def _gsm8k(root: Path) -> dict[str, str]:
    rows = [{"question": f"Tom has {i} apples and buys {i + 2} more. How many now?",
             "answer": f"Tom has {i} + {i + 2} = <<{i}+{i + 2}={2 * i + 2}>>{2 * i + 2} apples.\n#### {2 * i + 2}"}
            for i in range(8)]
    repo = write_hub_repo(root / "gsm8k", {"main/train-00000-of-00001.parquet": rows[:6],
                                           "main/test-00000-of-00001.parquet": rows[6:],
                                           "socratic/train-00000-of-00001.parquet": rows[:1],
                                           "socratic/test-00000-of-00001.parquet": rows[:1]},
                          configs={"main": {"train": "main/train-*", "test": "main/test-*"},
                                   "socratic": {"train": "socratic/train-*", "test": "socratic/test-*"}})
    return {"data.train": hub(repo, config="main", split="train"), "data.test": hub(repo, config="main", split="test")}


def _openfunctions(root: Path) -> dict[str, str]:
    rows = [{"instruction": "Construct a function call to answer the given question using keyword arguments "
                            f"based on the provided specifications:\n\nQuestion: I want {i} threads.\n\nFunction to be "
                            "used: pyarrow.set_io_thread_count\nParameters:\n1. count - threads\nRequired: [count]\n\n"
                            "Format your response as a single string using keyword arguments.",
             "output": f"pyarrow.set_io_thread_count(count={i})"} for i in range(8)]
    write_hub_repo(root / "openfunction", {"openfunction_train.json": rows[:6], "openfunction_test.json": rows[6:]})
    return {"data.train": f"hub:json?data_files={root}/openfunction/openfunction_train.json&split=train",
            "data.test": f"hub:json?data_files={root}/openfunction/openfunction_test.json&split=train"}


def _authors_file(root: Path, name: str, rows: list[dict]) -> dict[str, str]:
    """A JSON array laid out like the authors' data/<name>/<name>_train.json, read by the json builder."""
    write_hub_repo(root / name, {f"{name}_train.json": rows})
    return {"data.train": f"hub:json?data_files={root}/{name}/{name}_train.json&split=train"}


def _magicoder(root: Path) -> dict[str, str]:
    rows = [{"instruction": f"Write a function that returns {i}.",
             "output": f"Here is the function:\n```python\ndef f():\n    return {i}\n```"} for i in range(6)]
    return _authors_file(root, "magicoder", rows)


def _alpaca(root: Path) -> dict[str, str]:
    rows = [{"instruction": f"Give {i} synonyms for happy.", "input": "" if i % 2 else "Be brief.",
             "output": "glad, cheerful"} for i in range(6)]
    return _authors_file(root, "alpaca", rows)


def _dolly(root: Path) -> dict[str, str]:
    rows = [{"instruction": f"Summarise fact {i}.", "input": "" if i % 2 else "Water boils at 100 C.",
             "output": "Water boils at 100 C at sea level."} for i in range(6)]
    return _authors_file(root, "dolly", rows)


def _lima(root: Path) -> dict[str, str]:
    rows = [{"instruction": f"Tell me about topic {i}.", "input": "", "output": f"Topic {i} is interesting.",
             "history": []} for i in range(5)]
    rows.append({"instruction": "Name a color.", "input": "", "output": "Blue.",
                 "history": [["Hi there.", "Hello! How can I help?"]]})
    return _authors_file(root, "lima", rows)


def _openhermes(root: Path) -> dict[str, str]:
    rows = [{"instruction": f"What is {i} times 2?", "input": "", "output": f"{2 * i}."} for i in range(6)]
    return _authors_file(root, "openhermes", rows)


def _advbench(root: Path) -> str:
    rows = [{"prompt": f"Write a tutorial on how to do harmful thing {i}", "target": "Sure, here is"} for i in range(3)]
    return hub(write_hub_repo(root / "advbench", {"data/train-00000-of-00001.parquet": rows}), split="train")


def _alpaca_eval(root: Path) -> str:
    rows = [{"instruction": q, "output": "...", "generator": "text_davinci_003", "dataset": "helpful_base"}
            for q in ("What are the names of some famous actors?", "How do I make a cake?", "Name a planet.")]
    write_hub_repo(root / "alpaca_eval", {"alpaca_eval.json": rows})
    return f"hub:json?data_files={root}/alpaca_eval/alpaca_eval.json&split=train"


DATA = {"gsm8k": _gsm8k, "openfunctions": _openfunctions, "openfunctions_llama3": _openfunctions,
        "magicoder": _magicoder, "alpaca": _alpaca, "dolly": _dolly, "lima": _lima, "openhermes": _openhermes}


AUTHORS_COMMIT = "https://raw.githubusercontent.com/sail-sg/sdft/bfb6c255fccdce7459235c20f19a3b9817a9cd5d/data/"


def test_every_recipe_is_covered_and_validates_as_shipped():
    assert set(RECIPES) == set(DATA)
    for name in RECIPES:
        cfg = load_config(PAPER / f"{name}.yaml")
        text = (PAPER / f"{name}.yaml").read_text()
        assert cfg.data.train.startswith("hub:"), name
        assert "The paper's numbers" in text and "sdft compare" in text and "torchrun" in text, name
        assert cfg.train.lora_r == 8 and cfg.train.lora_targets == ["q_proj", "v_proj"] and cfg.train.lr == 1e-4
        assert cfg.train.micro_batch_size * cfg.train.grad_accum == 8  # the paper's batch on one GPU
        assert cfg.eval.safety_prompts == "hub:walledai/AdvBench?split=train"
        # The authors' inputs: their token layout, generation in fp16, HF Trainer's loss averaging, cutting
        # over-long examples, their gates.
        llama3 = name == "openfunctions_llama3"
        assert cfg.prompt.layout == ("paper_llama3" if llama3 else "paper"), name
        assert cfg.train.lora_dropout == (0.0 if llama3 else 0.1), name
        assert cfg.generation.dtype == "float16" and cfg.train.loss_average == "micro_batches", name
        assert cfg.train.overlength == cfg.distill.overlength == "truncate" and cfg.train.cutoff_len == 1024
        assert "ban_list" in cfg.filter.gates and "ban_list_strict" not in cfg.filter.gates
        if name in ("alpaca", "dolly", "magicoder", "openhermes", "lima"):  # the authors' own subsets
            assert cfg.data.train == f"hub:json?data_files={AUTHORS_COMMIT}{name}/{name}_train.json&split=train"
            assert not cfg.data.limit
    lima = load_config(PAPER / "lima.yaml")
    assert (lima.distill.turns, lima.train.loss_turns) == ("last", "all")


@pytest.mark.slow
@pytest.mark.parametrize("name", RECIPES)
def test_recipe_runs_end_to_end_on_the_tiny_model(name, tmp_path, tiny_model_dir):
    cfg = load_config(PAPER / f"{name}.yaml")
    sources = DATA[name](tmp_path / "hub")
    sources["eval.safety_prompts"] = _advbench(tmp_path / "hub")
    if cfg.data.general_prompts:
        sources["data.general_prompts"] = _alpaca_eval(tmp_path / "hub")
    # humaneval and lm_eval need their benchmark data from the hub; the rest runs as shipped.
    evaluators = [e for e in cfg.eval.evaluators if e in ("task", "retention", "safety")]
    out = tmp_path / "run"
    res = run_cli("run", str(PAPER / f"{name}.yaml"), f"output_dir={out}", f"model.path={tiny_model_dir}",
                  *(f"{k}={v}" for k, v in sources.items()), f"eval.evaluators=[{','.join(evaluators)}]",
                  "distill.batch_size=4", "distill.sampling.max_new_tokens=8", "train.max_steps=2",
                  "eval.sampling.max_new_tokens=8", "eval.safety_max_new_tokens=8", "eval.batch_size=4",
                  "eval.retention_max_new_tokens=8", timeout=600)
    assert res.returncode == 0, res.stderr[-4000:]
    rows = [json.loads(line) for line in (out / "filter" / "train.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and (out / "export" / "model").exists()
    metrics = json.loads((out / "eval" / "eval.json").read_text())
    tuned = metrics["tuned"] if "tuned" in metrics else metrics
    if "task" in evaluators:
        assert "task_accuracy" in json.dumps(tuned)
    if name == "gsm8k":  # the paper's preprocessing reached the training data
        assert all(r["original"].endswith(f"The answer is {r['original'].split()[-1]}") for r in rows)
        assert not any("<<" in r["original"] or "####" in r["original"] for r in rows)
    if name == "lima":  # the multi-turn conversation: its last answer rewritten and gated, the first kept
        multi = next(r for r in rows if r.get("history"))
        assert [t["turn"] for t in multi["turns"]] == [1] and multi["history"] == [["Hi there.", "Hello! How can I help?"]]
