"""`tunestack bench`: the runner on small real benchmark modules (tests/unit/benchfake/), each run
in its own subprocess exactly as the real suite is."""

from __future__ import annotations

import json
import os

import pytest

from bench import runner
from bench.report import check_result, write_benchmarks_md
from pipeline.cli import build_parser

FAKE = "tests.unit.benchfake"
SUITE = [
    ("summing", f"{FAKE}.summing"),
    ("broken", f"{FAKE}.broken"),
    ("norun", f"{FAKE}.norun"),
    ("badresult", f"{FAKE}.badresult"),
    ("missing", f"{FAKE}.missing"),
]


@pytest.fixture
def suite(monkeypatch):
    monkeypatch.setattr(runner, "BENCHMARKS", SUITE)
    monkeypatch.delenv("TUNESTACK_FAKE_BENCH_GOAL", raising=False)


def _rows(out: str) -> dict[str, list[str]]:
    """Table lines by benchmark name (the table starts at its 'benchmark' header)."""
    lines = out.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("benchmark "))
    rows: dict[str, list[str]] = {}
    for ln in lines[start + 2 :]:
        if not ln.strip():
            break
        rows.setdefault(ln.split()[0], []).append(ln)
    return rows


def test_suite_reports_every_benchmark_and_errors_set_exit_status(suite, tmp_path, capsys):
    out_dir = tmp_path / "results"
    code = runner.main(["--quick", "--out-dir", str(out_dir)])
    out = capsys.readouterr().out
    assert code == 1  # `broken` raised and `badresult` broke the contract

    rows = _rows(out)
    assert [ln.split()[-1] for ln in rows["summing"]] == ["PASS", "-"]
    assert "RuntimeError: the measured service did not start" in rows["broken"][0]
    assert rows["broken"][0].endswith("ERROR")
    assert rows["badresult"][0].endswith("ERROR") and "contract" in rows["badresult"][0]
    assert rows["norun"][0].endswith("skipped") and "no run(" in rows["norun"][0]
    assert rows["missing"][0].endswith("skipped") and "does not exist" in rows["missing"][0]

    summary = json.loads((out_dir / "summary.json").read_text())
    status = {b["name"]: b["status"] for b in summary["benchmarks"]}
    assert status == {
        "summing": "ok",
        "broken": "error",
        "norun": "skipped",
        "badresult": "error",
        "missing": "skipped",
    }
    assert summary["quick"] is True and summary["seconds"] > 0
    m = summary["machine"]
    for key in (
        "cpus_logical",
        "memory_gib",
        "gpu",
        "python",
        "ray",
        "torch",
        "pyarrow",
        "numpy",
        "git_commit",
    ):
        assert m[key] not in (None, ""), key
    # the row in summary.json is what the benchmark returned and wrote itself
    summing = next(b for b in summary["benchmarks"] if b["name"] == "summing")["result"]
    assert summing == json.loads((out_dir / "summing.json").read_text())
    fig = summing["figures"][0]
    assert fig["ratio"] == pytest.approx(fig["value"] / fig["baseline_value"])
    assert "values/s" in rows["summing"][0] and f"{fig['ratio']:.2f}x" in rows["summing"][0]
    assert "did not start" in (out_dir / "broken.log").read_text()

    md = (out_dir / "SUMMARY.md").read_text()
    assert "| summing | numpy sum |" in md and "| broken |" in md and "ERROR" in md
    assert f"PyTorch {m['torch']}" in md and f"GPU: {m['gpu']}" in md and m["git_commit"] in md
    assert "![summing.png](summing.png)" in md and (out_dir / "summing.png").stat().st_size > 0


def test_missed_goal_is_fail_not_an_error(suite, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TUNESTACK_FAKE_BENCH_GOAL", "1e12")  # no sum is a trillion times faster
    code = runner.main(["--quick", "--only", "summing,missing", "--out-dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0
    rows = _rows(out)
    assert rows["summing"][0].endswith("FAIL") and ">= 1e+12x" in rows["summing"][0]
    assert set(rows) == {"summing", "missing"}
    assert "0 PASS, 1 FAIL" in out


def test_unknown_only_name_is_refused(suite, tmp_path, capsys):
    assert runner.main(["--only", "summing,nope", "--out-dir", str(tmp_path)]) == 2
    assert "unknown benchmark(s) ['nope']" in capsys.readouterr().err
    assert not (tmp_path / "summary.json").exists()


def test_a_benchmark_past_its_timeout_is_stopped(tmp_path):
    summary = runner.run_suite(
        [("sleeper", f"{FAKE}.sleeper")], out_dir=str(tmp_path), timeout_s=2, echo=lambda *a, **k: None
    )
    (row,) = summary["benchmarks"]
    assert row["status"] == "error" and "timed out after 2s" in row["error"]
    assert row["seconds"] < 30


def test_benchmarks_md_shows_goals_methods_and_copied_plots(suite, tmp_path):
    out_dir = tmp_path / "results"
    summary = runner.run_suite(
        runner.BENCHMARKS[:2], quick=True, out_dir=str(out_dir), echo=lambda *a, **k: None
    )
    repo = tmp_path / "repo"
    path = write_benchmarks_md(summary, str(repo))
    text = open(path).read()
    assert path == os.path.join(str(repo), "BENCHMARKS.md")
    assert "| benchmark | figure | value | baseline | ratio | goal | result |" in text
    assert "| >= 1x | PASS |" in text
    assert "**Method.** best of 3 passes over 20000 float64 values" in text
    assert "![summing.png](docs/bench/summing.png)" in text
    assert (repo / "docs" / "bench" / "summing.png").read_bytes() == (out_dir / "summing.png").read_bytes()
    assert "This is a quick run" in text


def test_check_result_names_what_is_wrong():
    good = {
        "name": "x",
        "title": "X",
        "seconds": 1.0,
        "quick": True,
        "plots": [],
        "method": "m",
        "figures": [
            {
                "figure": "f",
                "value": 1.0,
                "unit": "ms",
                "baseline": None,
                "baseline_value": None,
                "ratio": None,
                "goal": None,
                "pass": None,
            }
        ],
    }
    assert check_result(good) == []
    assert check_result([1]) == ["run() returned list, not a dict"]
    bad = {**good, "figures": [{**good["figures"][0], "pass": "yes"}]}
    assert check_result(bad) == ["figures[0].pass is not true/false/null"]
    assert check_result({k: v for k, v in good.items() if k != "method"}) == ["'method' missing or not str"]


def test_bench_is_a_tunestack_subcommand():
    args = build_parser().parse_args(["bench", "--quick", "--only", "streaming"])
    assert args.func is runner.cmd_bench and args.quick and args.only == "streaming"


def test_a_ratio_rounded_onto_its_goal_bound_shows_a_third_decimal():
    from bench.report import figure_row

    def ratio(value, goal):
        return figure_row("b", {"figure": "f", "value": 1.0, "ratio": value, "goal": goal})[4]

    assert ratio(0.9488, ">= 0.95x") == "0.949x"  # a FAIL must not read as the bound itself
    assert ratio(0.95, ">= 0.95x") == "0.95x"
    assert ratio(0.96 / 0.962, ">= 1.0x") == "0.998x"  # the bound written with one decimal
    assert ratio(0.9488, "<= 1.15x") == "0.95x"
    assert ratio(None, ">= 0.95x") == "-"
