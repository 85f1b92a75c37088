"""Helpers that tests run inside real servers."""
