"""Benchmark modules that follow bench/report.py's contract, for the runner's test (not benchmarks)."""
