"""bench/models.py's measurement on a tiny run: structure and sanity, no timing assertions."""

from __future__ import annotations

import math


def test_models_benchmark_measures_accuracy_size_latency(tmp_path):
    from bench.models import measure, plot

    m = measure(
        epochs=2,
        baselines={"gru": 8, "lstm": 8},
        batch=16,
        repeats=1,
        min_repeat_seconds=0.001,
        workdir=str(tmp_path),
    )
    assert set(m["models"]) == {"fastgrnn", "gru", "lstm"}
    assert m["data"] == {"train": 1212, "val": 135, "test": 450, "steps": 8, "features": 8}
    for name, r in m["models"].items():
        for key in ("test_accuracy", "int8_test_accuracy", "final_val_accuracy"):
            assert 0.0 <= r[key] <= 1.0, (name, key)
        assert r["test_accuracy"] > 0.2, name  # two epochs already beat chance (0.1) on digits
        assert 0 < r["int8_bytes"] < r["float_bytes"] <= 4 * r["parameters"], name
        assert 0.0 <= r["int8_max_probability_diff"] <= 1.0
        lat = r["latency_us_per_sample"]
        assert set(lat) == {f"batch{b}_threads{t}" for b in (1, 16) for t in m["thread_counts"]}
        assert all(math.isfinite(v) and v > 0 for v in lat.values()), name
    # FastGRNN's sparse phases ran: its non-zero count is below its parameter count
    fg = m["models"]["fastgrnn"]
    assert fg["config"]["u_rank"] == 12 and fg["float_bytes"] < 4 * fg["parameters"]
    assert set(fg["int8_latency_us_per_sample"]) == set(fg["latency_us_per_sample"])

    png = plot(m["models"], str(tmp_path / "plot.png"))
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
