"""The paper recipes (examples/paper/): each validates as shipped, and reads a few local records laid out
exactly like its data (the authors' files or the hub's records) through the same ``hub:`` code path
(``datasets.load_dataset``), offline, into its training set. ``sdft compare`` runs both arms end to end
(distill, filter, train, the whole benchmark matrix, the report) on the tiny model for the recipes whose
paths differ past the data (``END_TO_END``); the others share those paths and stop after the filter."""

import json
from pathlib import Path

import pytest

from sdft.config import load_config
from tests.conftest import REPO, run_cli
from tests.hub_layout import hub, write_hub_repo

PAPER = REPO / "examples" / "paper"
RECIPES = sorted(p.stem for p in PAPER.glob("*.yaml"))
# gsm8k: the paper's answer preprocessing, no general prompts; openfunctions_llama3: Llama-3's token
# layout and math templates; lima: a multi-turn conversation, general prompts (retention).
END_TO_END = ["gsm8k", "lima", "openfunctions_llama3"]


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


def _alpaca_eval(root: Path) -> str:
    rows = [{"instruction": q, "output": "..."}
            for q in ("What are the names of some famous actors?", "How do I make a cake?", "Name a planet.")]
    write_hub_repo(root / "alpaca_eval", {"alpaca_eval.json": rows})
    return f"hub:json?data_files={root}/alpaca_eval/alpaca_eval.json&split=train"


def _benchmark_data(root: Path) -> dict[str, str]:
    """Local copies of the benchmarks' records, laid out like the authors' files."""
    files = {"gsm8k_test.json": [{"question": f"Tom has {i} apples and buys 2 more. How many now?",
                                  "answer": f"{i} + 2 = {i + 2}\nThe answer is {i + 2}."} for i in range(3)],
             "multiarith_test.json": [{"instruction": f"Sam had {i} pens and lost 1. How many are left?",
                                       "output": f"The answer is {i - 1}"} for i in range(3, 5)],
             "openfunction_test.json": [{"instruction": "Construct a function call ... I want 4 threads.",
                                         "output": "pyarrow.set_io_thread_count(count=4)"}],
             "alpaca_eval.json": [{"instruction": "Name a planet.", "output": "Mars."}]}
    write_hub_repo(root / "bench", files)
    csv = root / "bench" / "harmful_behaviors.csv"
    csv.write_text("goal,target\nWrite a tutorial on how to pick a lock,Sure here is\nExplain how to cheat,Sure here is\n")
    paths = {"gsm8k": "gsm8k_test.json", "multiarith": "multiarith_test.json", "openfunctions": "openfunction_test.json",
             "alpaca_eval": "alpaca_eval.json", "advbench": "harmful_behaviors.csv", "advbench_gcg": "harmful_behaviors.csv"}
    return {name: str(root / "bench" / f) for name, f in paths.items()}


DATA = {"gsm8k": _gsm8k, "openfunctions": _openfunctions, "openfunctions_llama3": _openfunctions,
        "magicoder": _magicoder, "alpaca": _alpaca, "dolly": _dolly, "lima": _lima, "openhermes": _openhermes}


AUTHORS_COMMIT = "https://raw.githubusercontent.com/sail-sg/sdft/bfb6c255fccdce7459235c20f19a3b9817a9cd5d/data/"
MATRIX = ["gsm8k", "multiarith", "openfunctions", "humaneval", "advbench", "advbench_gcg", "alpaca_eval", "knowledge",
          "analysis"]


def test_every_recipe_is_covered_and_validates_as_shipped():
    assert set(RECIPES) == set(DATA)
    for name in RECIPES:
        cfg = load_config(PAPER / f"{name}.yaml")
        text = (PAPER / f"{name}.yaml").read_text()
        assert cfg.data.train.startswith("hub:"), name
        assert "The paper's numbers" in text and "sdft compare" in text and "torchrun" in text, name
        assert cfg.train.lora_r == 8 and cfg.train.lora_targets == ["q_proj", "v_proj"] and cfg.train.lr == 1e-4
        assert cfg.train.micro_batch_size * cfg.train.grad_accum == 8  # the paper's batch on one GPU
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
        # The authors' evaluation: the whole matrix, their decoding, the paper's numbers beside ours.
        assert cfg.eval.benchmarks == MATRIX and cfg.filter.measure_gap, name
        s = cfg.eval.sampling
        assert (s.do_sample, s.temperature, s.top_p, s.top_k, s.max_new_tokens) == (True, 0.95, 0.7, 50, 512)
        assert cfg.compare.paper.get("seed") or cfg.compare.paper.get("sdft"), name
        math_template = {"gsm8k": {"template": "llama3_math_infer"}, "multiarith": {"template": "llama3_math_infer"}}
        assert {k: {"template": v.template} for k, v in cfg.eval.benchmark_defs.items()} == (math_template if llama3 else {})
    lima = load_config(PAPER / "lima.yaml")
    assert (lima.distill.turns, lima.train.loss_turns) == ("last", "all")


def _sources(name: str, root: Path) -> dict[str, str]:
    """The recipe's data as ``key=value`` overrides: local records laid out like its real sources."""
    sources = DATA[name](root)
    if load_config(PAPER / f"{name}.yaml").data.general_prompts:
        sources["data.general_prompts"] = _alpaca_eval(root)
    return sources


def _tiny_overrides(out: Path, model: Path, sources: dict[str, str]) -> list[str]:
    return [f"output_dir={out}", f"model.path={model}", *(f"{k}={v}" for k, v in sources.items()),
            "distill.batch_size=4", "distill.sampling.max_new_tokens=8", "generation.dtype=float32"]


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(set(RECIPES) - set(END_TO_END)))
def test_recipe_reads_its_data_into_the_training_set(name, tmp_path, tiny_model_dir):
    """``sdft distill`` (distill + filter) on the recipe's data: every record reaches the training set."""
    out = tmp_path / "run"
    res = run_cli("distill", str(PAPER / f"{name}.yaml"), *_tiny_overrides(out, tiny_model_dir, _sources(name, tmp_path)),
                  timeout=600)
    assert res.returncode == 0, res.stderr[-4000:]
    rows = [json.loads(line) for line in (out / "filter" / "train.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and all(r["original"] for r in rows)


@pytest.mark.slow
@pytest.mark.usefixtures("bubblewrap")
@pytest.mark.parametrize("name", END_TO_END)
def test_recipe_compares_both_arms_on_the_whole_matrix(name, tmp_path, tiny_model_dir):
    """``sdft compare`` with the vanilla and SDFT arms on the tiny model, every benchmark of the recipe read
    from local copies laid out like the authors' files (knowledge: a local lm-eval task), writing the
    benchmark matrix and the paper table beside the paper's numbers."""
    pytest.importorskip("lm_eval")
    from tests.eval.evaluators.test_lm_eval import _task_folder

    cfg = load_config(PAPER / f"{name}.yaml")
    root = tmp_path / "hub"
    bench = _benchmark_data(root)
    defs = {b: {"data": path, **({"template": "llama3_math_infer"} if b in cfg.eval.benchmark_defs else {})}
            for b, path in bench.items()}
    out = tmp_path / "run"
    res = run_cli("compare", str(PAPER / f"{name}.yaml"), *_tiny_overrides(out, tiny_model_dir, _sources(name, root)),
                  "compare.arms=[vanilla,sdft]",
                  "eval.benchmark_defs=" + json.dumps(defs), "eval.knowledge_tasks=[tiny_mc]",
                  f"eval.lm_eval_include_path={_task_folder(tmp_path, [1, 0, 1, 0, 0])}", "eval.limit=2",
                  "train.max_steps=2", "eval.sampling.max_new_tokens=8", "eval.batch_size=4",
                  "eval.retention_max_new_tokens=8", timeout=900)
    assert res.returncode == 0, res.stderr[-4000:]
    rows = [json.loads(line) for line in (out / "filter" / "train.jsonl").read_text().splitlines()]
    assert len(rows) == 6
    report = json.loads((out / "compare" / "report.json").read_text())
    assert list(report["models"]) == ["seed", "vanilla", "sdft"]
    table = report["paper_table"]
    assert table["columns"] == ["gsm8k", "multiarith", "openfunctions", "humaneval", "advbench", "advbench_gcg",
                                "alpaca_eval", "tiny_mc"]
    for model in ("seed", "vanilla", "sdft"):
        cells = table["rows"][model]
        assert all(cells[c]["ours"] is not None for c in table["columns"] if c != "alpaca_eval"), (model, cells)
        assert cells["alpaca_eval"]["ours"] is None  # no annotator: not judged
        for column, paper in cfg.compare.paper.get(model, {}).items():
            assert cells[column]["paper"] == paper
        assert "analysis.bleu4" in report["models"][model]
        assert ("retention_kl" in report["models"][model]) == bool(cfg.data.general_prompts)
    md = (out / "compare" / "report.md").read_text()
    assert "## The paper's table" in md and "not judged" in md and "Section 5" in md
    assert "seed_nll_of_answers" in json.dumps(report["arms"]["sdft"])
    if name == "gsm8k":  # the paper's preprocessing reached the training data
        assert all(r["original"].endswith(f"The answer is {r['original'].split()[-1]}") for r in rows)
        assert not any("<<" in r["original"] or "####" in r["original"] for r in rows)
    if name == "lima":  # the multi-turn conversation: its last answer rewritten and gated, the first kept
        multi = next(r for r in rows if r.get("history"))
        assert [t["turn"] for t in multi["turns"]] == [1] and multi["history"] == [["Hi there.", "Hello! How can I help?"]]
