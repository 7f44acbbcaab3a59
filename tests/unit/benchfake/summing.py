"""A small real benchmark in the suite's format: NumPy's sum against a Python loop over the same numbers.

    python -m tests.unit.benchfake.summing [--quick] [--out-dir D]

TUNESTACK_FAKE_BENCH_GOAL (default 1.0) is the speed-up the goal asks for, so a test can make
the goal unreachable and see a FAIL row.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np


def _rate(fn, n: int, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return n / best


def run(quick: bool = False, out_dir: str = "bench/results") -> dict:
    t0 = time.perf_counter()
    n = 20_000 if quick else 200_000
    values = np.random.default_rng(0).random(n)
    as_list = values.tolist()
    numpy_rate = _rate(lambda: values.sum(), n)
    loop_rate = _rate(lambda: sum(as_list), n)
    goal = float(os.environ.get("TUNESTACK_FAKE_BENCH_GOAL", "1.0"))
    ratio = numpy_rate / loop_rate

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(out_dir, exist_ok=True)
    plot = os.path.join(out_dir, "summing.png")
    fig, ax = plt.subplots(figsize=(4, 3))
    ax.bar(["numpy", "python loop"], [numpy_rate, loop_rate])
    ax.set_ylabel("values/s")
    fig.savefig(plot)
    plt.close(fig)

    result = {
        "name": "summing",
        "title": "Summing: NumPy vs a Python loop",
        "quick": quick,
        "figures": [
            {
                "figure": "numpy sum",
                "value": numpy_rate,
                "unit": "values/s",
                "baseline": "python loop",
                "baseline_value": loop_rate,
                "ratio": ratio,
                "goal": f">= {goal:g}x",
                "pass": ratio >= goal,
            },
            {
                "figure": "values summed",
                "value": float(n),
                "unit": "values",
                "baseline": None,
                "baseline_value": None,
                "ratio": None,
                "goal": None,
                "pass": None,
            },
        ],
        "plots": [plot],
        "method": f"best of 3 passes over {n} float64 values, both in this process.",
        "details": {"n": n},
        "seconds": time.perf_counter() - t0,
    }
    with open(os.path.join(out_dir, "summing.json"), "w") as f:
        json.dump(result, f, indent=2)
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.unit.benchfake.summing")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out-dir", default="bench/results")
    args = p.parse_args(argv)
    r = run(args.quick, args.out_dir)
    for fig in r["figures"]:
        print(fig["figure"], fig["value"], fig["unit"], fig["ratio"], fig["pass"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
