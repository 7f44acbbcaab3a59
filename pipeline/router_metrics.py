"""How a router is judged: the cost-quality curve, its area, and a calibrated threshold.

A router scores each request with P(the lightweight model suffices) and sends the requests whose
score clears a threshold to the lightweight model. Label 1 means the lightweight model's answer
was good enough, 0 that only the powerful one was; the powerful model is taken to answer every
request well. Sweeping the threshold from high to low routes a growing `share` of the requests
lightweight (the cost saved), and for each share:

- `error_among_routed`: of the requests sent lightweight, the fraction whose label is 0 (answered
  worse than the powerful model would have);
- `quality`: the fraction of ALL requests answered well = 1 − (wrongly routed) / N; always-powerful
  has quality 1, always-lightweight the share of 1-labels;
- `pgr` (performance gap recovered, as in RouteLLM): (quality − q_lightweight) / (1 − q_lightweight),
  1 at share 0 and 0 at share 1.

`apgr` is the area under the pgr-vs-share curve: 0.5 for a router that routes at random, 1 for one
that knows every label, and the oracle's (routing by the true probability) is the best any router
can expect on data whose labels are drawn at random. `calibrate` picks the lowest threshold whose
error among routed requests stays within a target (`route.max_lightweight_error`): the most
traffic the lightweight model can take at that quality.

Pure NumPy (and matplotlib for the plot): used by synth (the oracle), training and tuning (the
calibration stored in the model version) and `tunestack evaluate`.
"""

from __future__ import annotations

import math

import numpy as np

CURVE_POINTS = 101  # shares 0, 0.01, …, 1
CALIBRATION_FILE = "calibration.json"  # in a checkpoint folder, so it travels with the version


def _ranked(scores, labels) -> tuple[np.ndarray, np.ndarray]:
    """Scores sorted high to low, and the running count of 0-labels (wrongly routed) among them."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels).ravel()
    if len(s) != len(y) or len(s) == 0:
        raise ValueError(f"scores and labels must be non-empty and of one length ({len(s)} vs {len(y)})")
    order = np.argsort(-s, kind="stable")
    return s[order], np.cumsum(y[order] == 0)


def cost_quality_curve(scores, labels, points: int = CURVE_POINTS) -> dict:
    """The curve at `points` evenly spaced shares, and its area (apgr)."""
    s, wrong = _ranked(scores, labels)
    n = len(s)
    q_light = 1.0 - wrong[-1] / n
    share = np.linspace(0.0, 1.0, points)
    k = np.rint(share * n).astype(np.int64)
    wrong_k = np.where(k > 0, wrong[np.maximum(k - 1, 0)], 0)
    quality = 1.0 - wrong_k / n
    err = np.where(k > 0, wrong_k / np.maximum(k, 1), 0.0)
    gap = 1.0 - q_light
    pgr = (quality - q_light) / gap if gap > 0 else np.ones_like(quality)
    return {
        "rows": int(n),
        "share": share.round(6).tolist(),
        "error_among_routed": err.round(6).tolist(),
        "quality": quality.round(6).tolist(),
        "pgr": pgr.round(6).tolist(),
        "quality_always_lightweight": round(float(q_light), 6),
        "apgr": round(float(np.trapezoid(pgr, share)), 6),
    }


def at_threshold(scores, labels, threshold: float) -> dict:
    """What routing `score >= threshold` lightweight does: its share and the error among them."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels).ravel()
    routed = s >= threshold
    k = int(routed.sum())
    wrong = int((y[routed] == 0).sum())
    return {
        "threshold": float(threshold),
        "share_lightweight": k / len(s) if len(s) else 0.0,
        "routed": k,
        "error_among_lightweight": wrong / k if k else 0.0,
        "quality": 1.0 - wrong / len(s) if len(s) else 1.0,
    }


def calibrate(scores, labels, max_error: float) -> dict:
    """The lowest threshold (most traffic lightweight) whose error among the requests it routes
    lightweight is at most `max_error`, with what it does on these rows."""
    if not 0.0 <= max_error < 1.0:
        raise ValueError(f"max_lightweight_error must be in [0, 1), got {max_error}")
    s, wrong = _ranked(scores, labels)
    k = np.arange(1, len(s) + 1)
    # a threshold keeps whole ties: only the last position of each run of equal scores can be a cut
    last_of_tie = np.append(s[1:] != s[:-1], True)
    ok = np.flatnonzero(last_of_tie & (wrong / k <= max_error))
    # none: a threshold just above the highest score routes nothing
    threshold = float(s[ok[-1]]) if len(ok) else math.nextafter(float(s[0]), math.inf)
    return {"max_lightweight_error": max_error, **at_threshold(scores, labels, threshold)}


def key_points(curve: dict, shares=(0.1, 0.2, 0.3, 0.5)) -> list[dict]:
    """The curve at a few shares (for a printed summary)."""
    out = []
    for target in shares:
        i = int(np.argmin(np.abs(np.asarray(curve["share"]) - target)))
        out.append(
            {
                "share": curve["share"][i],
                "error_among_routed": curve["error_among_routed"][i],
                "quality": curve["quality"][i],
            }
        )
    return out


def router_report(scores, labels, max_error: float, threshold: float | None = None, oracle=None) -> dict:
    """Everything `tunestack evaluate` and the calibration say about a router on some rows:
    the curve, its apgr (beside the oracle's on the same rows when `oracle` probabilities are
    given), the calibration for `max_error` on these rows, and what `threshold` (the version's
    calibrated one) does here."""
    curve = cost_quality_curve(scores, labels)
    out = {
        "rows": curve["rows"],
        "apgr": curve["apgr"],
        "calibration": calibrate(scores, labels, max_error),
        "curve": curve,
        "key_points": key_points(curve),
    }
    if threshold is not None:
        out["at_threshold"] = at_threshold(scores, labels, threshold)
    if oracle is not None:
        o = cost_quality_curve(oracle, labels)
        out["oracle"] = {"apgr": o["apgr"], "curve": o, "calibration": calibrate(oracle, labels, max_error)}
        out["apgr_vs_oracle"] = round(curve["apgr"] / o["apgr"], 4) if o["apgr"] > 0 else math.nan
    return out


def plot_report(report: dict, path: str, title: str = "router") -> str:
    """Write the cost-quality curves (router, oracle when known, random) as a PNG at `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    c = report["curve"]
    left.plot(c["share"], c["pgr"], label=f"{title} (APGR {c['apgr']:.3f})")
    right.plot(c["share"][1:], c["error_among_routed"][1:], label=title)
    if "oracle" in report:
        o = report["oracle"]["curve"]
        left.plot(o["share"], o["pgr"], "--", label=f"oracle (APGR {o['apgr']:.3f})")
        right.plot(o["share"][1:], o["error_among_routed"][1:], "--", label="oracle")
    left.plot([0, 1], [1, 0], ":", color="grey", label="random (APGR 0.5)")
    cal = report.get("at_threshold") or report["calibration"]
    right.axhline(report["calibration"]["max_lightweight_error"], color="grey", lw=0.8, ls=":")
    right.plot([cal["share_lightweight"]], [cal["error_among_lightweight"]], "o", label="threshold")
    left.set(xlabel="share routed lightweight", ylabel="performance gap recovered", ylim=(0, 1.02))
    right.set(xlabel="share routed lightweight", ylabel="error among routed lightweight")
    left.legend(fontsize=8)
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
