"""bench/models.py's measurement on a tiny run: structure and sanity, no timing assertions."""

from __future__ import annotations

import math


def test_models_benchmark_measures_accuracy_size_latency(tmp_path):
    from bench.models import EQUAL_SIZE_TOLERANCE, figures, measure, plot

    m = measure(
        epochs=2,
        baselines={"gru": 8},
        batch=16,
        repeats=1,
        min_repeat_seconds=0.001,
        workdir=str(tmp_path),
    )
    assert set(m["models"]) == {"fastgrnn", "gru", "gru_equal", "lstm_equal", "fastgrnn_distilled"}
    assert m["data"] == {"train": 1212, "val": 135, "test": 450, "steps": 8, "features": 8}
    for name, r in m["models"].items():
        for key in ("test_accuracy", "int8_test_accuracy", "final_val_accuracy"):
            assert 0.0 <= r[key] <= 1.0, (name, key)
        assert r["test_accuracy"] > 0.2, name  # two epochs already beat chance (0.1) on digits
        assert 0 < r["int8_bytes"] < r["float_bytes"], name
        assert sum(r["int8_breakdown"].values()) == r["int8_bytes"], name
        assert 0.0 <= r["int8_max_probability_diff"] <= 1.0
    fg = m["models"]["fastgrnn"]
    assert fg["config"]["u_rank"] == 12 and fg["int8_breakdown"]["indices"] > 0  # sparse: bitmaps paid
    for cell in ("gru", "lstm"):  # shrunk to FastGRNN's INT8 budget
        eq = m["models"][f"{cell}_equal"]
        assert abs(eq["int8_bytes"] - fg["int8_bytes"]) <= EQUAL_SIZE_TOLERANCE * fg["int8_bytes"], cell
        assert eq["config"]["hidden_size"] == m["equal_size"][cell]["hidden_size"]
    assert m["models"]["fastgrnn_distilled"]["distill"]["teacher"]
    lat = m["latency_us_per_sample"]
    assert set(lat) == {"digits_batch1", "digits_batch16", "router_batch1", "router_batch16"}
    assert {"lean", "torch_fastgrnn", "torch_gru"} <= set(lat["digits_batch1"]) and "torch_gru" in lat[
        "router_batch1"
    ]
    assert all(math.isfinite(v) and v > 0 for row in lat.values() for v in row.values())
    figs = figures(m)
    assert any("distilled" in f["figure"] for f in figs) and all(f["value"] > 0 for f in figs)

    png = plot(m["models"], str(tmp_path / "plot.png"))
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
