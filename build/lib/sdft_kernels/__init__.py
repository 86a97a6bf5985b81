"""sdft's kernels on the training hot path (installed under the import name ``sdft_kernels``).

The folder is ``kernels/`` in the repository but never the import name ``kernels``: transformers and
bitsandbytes import a PyPI package of that name (the hub-kernels loader) when one is importable.

- ``fused_linear_ce``: cross-entropy of ``hidden @ weight.T`` without materialising the logits.
"""

from sdft_kernels.fused_linear_ce import fused_linear_cross_entropy

__all__ = ["fused_linear_cross_entropy"]
