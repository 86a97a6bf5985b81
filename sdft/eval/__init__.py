"""Step 4: evaluation. The stage (``evaluate``), the engine that runs evaluators on a list of models
with caching (``engine``, also used by ``sdft compare``), the evaluators (``evaluators/``) and the
sandbox for generated code (``sandbox/``)."""
