"""sdft's kernels on the training hot path (installed under the import name ``sdft_kernels``).

The package lives in ``kernels/sdft_kernels/`` and ``kernels/`` itself is not a package (it has no
``__init__.py``): transformers and bitsandbytes import the PyPI package ``kernels`` (the hub-kernels
loader) when one is importable, and a regular package ``kernels`` in the repository would shadow it
for everything started at the repository root. A plain folder never wins over an installed package.

- ``fused_linear_ce``: cross-entropy of ``hidden @ weight.T`` without materialising the logits.
- ``fused_linear_divergence``: a teacher-student divergence (forward / reverse KL, generalised JSD,
  optionally on the teacher's top-k tokens) of two such projections, without either model's logits.
"""

from sdft_kernels.fused_linear_ce import fused_linear_cross_entropy
from sdft_kernels.fused_linear_divergence import DIVERGENCES, fused_linear_divergence, token_divergence

__all__ = ["DIVERGENCES", "fused_linear_cross_entropy", "fused_linear_divergence", "token_divergence"]
