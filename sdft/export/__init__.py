"""Step 5: a standalone transformers model (``export.run_export``)."""
