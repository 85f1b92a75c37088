"""Orchestrators that turn a written tag into a rolling deploy (only Nomad today)."""
