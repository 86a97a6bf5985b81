"""Models: built-in ones, loading, 4-bit, the models of a run, and batched generation."""
