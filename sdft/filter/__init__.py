"""Step 2: the fallback-to-original filter (``filter.py``); the gates themselves are ``sdft.gates``."""
