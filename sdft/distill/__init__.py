"""Step 1: the seed model rewrites every reference answer (``distill.run_distill``)."""
