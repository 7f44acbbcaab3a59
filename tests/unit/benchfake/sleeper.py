"""A benchmark that never finishes in time: the runner stops it at its timeout."""

import time


def run(quick: bool = False, out_dir: str = "bench/results") -> dict:
    time.sleep(120)
    raise AssertionError("the runner should have stopped this benchmark")
