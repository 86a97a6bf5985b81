"""Crash-safe file writing (``io``) and fault injection for crash tests (``faults``)."""
