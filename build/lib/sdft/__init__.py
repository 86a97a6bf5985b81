"""sdft: Self-Distillation Fine-Tuning (Yang et al., ACL 2024) from a single CPU to a GPU cluster.

Pipeline: distill (the seed model rewrites each reference answer) -> filter (gates; fall back to the
original) -> train (SFT: LoRA or full) -> eval (task accuracy and retention) -> export.
"""

__version__ = "0.1.0"
