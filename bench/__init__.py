"""Benchmarks: scripts that compare tunestack against a baseline in the same run (not tests)."""
