"""pipeline.router_metrics: the cost-quality curve, its area (APGR) and the calibrated threshold, on
small arrays whose answers can be worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.router_metrics import at_threshold, calibrate, cost_quality_curve, router_report


def test_curve_of_a_perfect_a_random_and_a_backwards_router():
    rng = np.random.default_rng(0)
    y = (rng.random(20_000) < 0.5).astype(np.int8)
    perfect = cost_quality_curve(y.astype(float), y)
    # routing every 1-label first: nothing is wrong until the share passes the 1-labels' share
    assert perfect["apgr"] > 0.74 and perfect["error_among_routed"][40] == 0.0
    random = cost_quality_curve(rng.random(len(y)), y)
    assert random["apgr"] == pytest.approx(0.5, abs=0.01)  # the diagonal: no gap recovered for free
    backwards = cost_quality_curve(-y.astype(float), y)
    assert backwards["apgr"] < random["apgr"] < perfect["apgr"]
    for c in (perfect, random, backwards):
        assert c["pgr"][0] == 1.0 and c["pgr"][-1] == pytest.approx(0.0, abs=1e-9)
        assert c["quality"][-1] == pytest.approx(c["quality_always_lightweight"])


def test_calibration_routes_the_most_within_the_target_and_keeps_ties_whole():
    scores = np.array([0.99, 0.95, 0.95, 0.90, 0.80, 0.70, 0.60, 0.50])
    labels = np.array([1, 1, 0, 1, 1, 0, 1, 0])
    # top-k error: 0, 0, 1/3, 1/4, 1/5, 2/6, 2/7, 3/8
    c = calibrate(scores, labels, 0.25)
    assert c["threshold"] == 0.80 and c["routed"] == 5 and c["error_among_lightweight"] == pytest.approx(0.2)
    assert c["share_lightweight"] == pytest.approx(5 / 8)
    c = calibrate(scores, labels, 0.1)
    assert c["threshold"] == 0.99 and c["routed"] == 1  # cutting between the tied 0.95s is not a threshold
    none = calibrate(np.array([1.0, 1.0, 0.8]), np.array([1, 0, 1]), 0.02)  # the top tie is half wrong
    assert none["routed"] == 0 and none["share_lightweight"] == 0.0 and none["threshold"] > 1.0
    with pytest.raises(ValueError, match="max_lightweight_error"):
        calibrate(scores, labels, 1.5)


def test_report_compares_with_the_oracle_and_the_stored_threshold():
    rng = np.random.default_rng(1)
    p = rng.random(50_000)
    y = (rng.random(len(p)) < p).astype(np.int8)
    noisy = np.clip(p + rng.normal(0, 0.2, len(p)), 0, 1)
    r = router_report(noisy, y, 0.05, threshold=0.9, oracle=p)
    assert 0.5 < r["apgr"] < r["oracle"]["apgr"] and r["apgr_vs_oracle"] < 1.0
    assert r["at_threshold"] == at_threshold(noisy, y, 0.9)
    assert r["calibration"]["error_among_lightweight"] <= 0.05
    assert [k["share"] for k in r["key_points"]] == [0.1, 0.2, 0.3, 0.5]
