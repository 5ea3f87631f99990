"""Serving: the interactive shell and one-shot recommendations."""
