"""bench/training.py's measurement on a tiny run: both paths train, the figures are well formed.

No timing assertions (the benchmark reports ratios; tests only check it measures something sane).
"""

from __future__ import annotations

import math


def test_training_benchmark_measures_both_paths(ray_cluster, tmp_path):
    from bench.training import measure

    m = measure(rows=4_000, epochs=3, workdir=str(tmp_path))
    assert m["epochs"] == 3 and m["train_rows"] + m["val_rows"] <= 4_000
    assert m["torch_threads"] >= 1
    for path in ("ray", "plain"):
        assert len(m[path]["per_epoch"]) == 3
        assert [e["epoch"] for e in m[path]["per_epoch"]] == [0, 1, 2]
        for key in ("train_samples_per_s", "epoch_samples_per_s"):
            assert math.isfinite(m[path][key]) and m[path][key] > 0, (path, key)
        # both paths really trained: the router learns the synthetic rule well above chance
        assert m[path]["per_epoch"][-1]["val_accuracy"] > 0.7, path
    assert len(m["ray"]["epoch_periods_s"]) == 2 and all(p > 0 for p in m["ray"]["epoch_periods_s"])
    assert m["ratio_train"] > 0 and m["ratio_epoch"] > 0
    assert math.isclose(m["ratio_train"], m["ray"]["train_samples_per_s"] / m["plain"]["train_samples_per_s"])
    # the ray_cluster fixture's Ray is left running for the other tests
    assert ray_cluster.is_initialized()
