"""The plan of the paper's recipe (and of full fine-tuning) for Llama-2-7B, Llama-3-8B and Llama-3-70B on
1, 8 and 64 H100s, as the markdown table of docs/plan.md. Reads only the shapes below (the models'
published config.json values); no weights, no GPU.

    python benchmarks/plan_table.py
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from sdft.config import load_config
from sdft.plan.cards import card
from sdft.plan.plan import load_model_config, plan
from sdft.plan.timing import stated_workload

REPO = Path(__file__).resolve().parents[1]
MODELS = {
    "Llama-2-7B": {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
                   "num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": 32000},
    "Llama-3-8B": {"hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
                   "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256},
    "Llama-3-70B": {"hidden_size": 8192, "intermediate_size": 28672, "num_hidden_layers": 80,
                    "num_attention_heads": 64, "num_key_value_heads": 8, "vocab_size": 128256},
}
GPUS = ((1, 1), (8, 1), (8, 8))  # (per node, nodes)
EXAMPLES, AVG_TOKENS = 7473, 250  # GSM8K's training set; a stated mean of prompt + answer tokens


def main() -> None:
    print(f"Recipe examples/paper/gsm8k.yaml (LoRA r 8 on q/v, global batch 8 on one GPU, 1024-token rows), "
          f"and the same with train.method=full; time for {EXAMPLES} examples of {AVG_TOKENS} tokens (stated).\n")
    print("| model | method | GPUs | recommended training setting | GiB per GPU | distill engine fits | "
          "distill + train time |")
    print("|---|---|---:|---|---:|---|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for name, dims in MODELS.items():
            folder = Path(tmp) / name
            folder.mkdir()
            (folder / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "model_type": "llama",
                                                            "torch_dtype": "bfloat16", **dims}))
            for method in ("lora", "full"):
                cfg = load_config(REPO / "examples" / "paper" / "gsm8k.yaml",
                                  [f"model.path={folder}", "model.dtype=bfloat16", f"train.method={method}"])
                for per_node, nodes in GPUS:
                    report = plan(cfg, load_model_config(cfg), card("H100"), per_node, nodes,
                                  stated_workload(EXAMPLES, AVG_TOKENS, cfg))
                    r = report["recommendation"]
                    setting = "does not fit" if r is None else (
                        f"{r['setting']}, micro {r['micro_batch']} x {r['grad_accum']}"
                        f"{', checkpointing' if r['checkpointing'] else ''}")
                    gib = "" if r is None else f"{r['needed_gib']:.1f}"
                    s = report["time"]["seconds"]
                    hours = (s["distill"] + s["train"]) / 3600
                    distill = report["generation"][0]
                    fits = "yes" if distill["fits"] else f"no ({distill['weights_gib']:.0f} GiB of weights)"
                    print(f"| {name} | {method} | {per_node * nodes} | {setting} | {gib} | {fits} | {hours:.2f} h |")


if __name__ == "__main__":
    main()
