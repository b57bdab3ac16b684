"""The plumbing benchmark's harness: its figures from task events, the ratios, the table, and
one tiny end-to-end run through real worker nodes (its output's structure, not its timings)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from benchmarks.plumbing_bench import (
    SCENARIOS,
    format_table,
    main,
    percentile,
    ratios,
    run_figures,
    summarize,
)


def event(kind: str, at: float, runtime: float = 0.0) -> dict[str, Any]:
    return {"type": kind, "timestamp": at, "runtime": runtime}


def test_a_run_is_timed_from_the_first_start_to_the_last_success() -> None:
    events = [
        event("task-received", 0.5),
        event("task-started", 1.0),
        event("task-started", 1.1),
        event("task-succeeded", 1.5, 0.5),
        event("task-succeeded", 3.0, 1.9),
        event("task-failed", 3.5),
    ]
    figures = run_figures(events)
    assert figures["jobs"] == 3 and figures["failed"] == 1
    assert figures["seconds"] == 2.0 and figures["tasks_per_second"] == 1.0
    assert figures["runtimes"] == [0.5, 1.9]
    assert run_figures([])["tasks_per_second"] is None


def test_a_scenario_is_its_median_rate_and_percentiles_over_every_task() -> None:
    runs = [
        {
            "tasks_per_second": r,
            "runtimes": [0.001 * i for i in range(1, 101)],
            "failed": 0,
            "cpu_ms_per_task": {"worker": r / 100, "s3": 1.0},
        }
        for r in (100.0, 300.0, 200.0)
    ]
    summary = summarize(runs)
    assert summary["cpu_ms_per_task"] == {"worker": 2.0, "s3": 1.0}
    assert summary["tasks_per_second"] == 200.0
    assert summary["tasks_per_second_runs"] == [100.0, 300.0, 200.0]
    assert summary["tasks"] == 300 and summary["failed"] == 0
    assert summary["p50_ms"] == pytest.approx(50.5)
    assert summary["p99_ms"] == pytest.approx(99.01, abs=0.01)
    assert percentile([], 50) is None


def scenarios(pipeline: float | None) -> dict[str, dict[str, Any]]:
    rates = {"noop": 400.0, "s3": 100.0, "pipeline": pipeline}
    return {
        name: {
            "tasks_per_second": rates[name],
            "tasks_per_second_runs": [rates[name]] if rates[name] else [],
            "p50_ms": 1.0,
            "p99_ms": None,
            "failed": 0,
        }
        for name in SCENARIOS
    }


def test_ratios_and_the_table() -> None:
    figures = scenarios(85.0)
    figures["pipeline"]["tasks_per_second_runs"] = [80.0, 90.0, 85.0]
    figures["s3"]["tasks_per_second_runs"] = [100.0, 100.0, 50.0]
    r = ratios(figures)
    assert r["pipeline_vs_s3"] == 0.85 and r["pipeline_vs_noop"] == 0.212
    assert r["s3_vs_noop"] == 0.25
    assert r["pipeline_vs_s3_per_round"] == [0.8, 0.9, 1.7]
    assert r["pipeline_vs_s3_median_of_rounds"] == 0.9
    assert ratios(scenarios(None))["pipeline_vs_s3"] is None
    report = {
        "machine": {"cpus": 2, "cpu_model": "CPU", "cpu_flags": ["avx2"], "python": "3.11"},
        "plan": {"jobs": 10, "rounds": 1, "concurrency": 2, "object_bytes": 100, "push": True},
        "scenarios": figures,
        "ratios": r,
    }
    lines = format_table(report).splitlines()
    assert "cpu flags: avx2" in lines
    assert len(lines) == 4 + len(SCENARIOS) + 1
    assert "(c)/(b): 0.9 median of rounds (0.8, 0.9, 1.7), 0.85 of medians" in lines[-1]
    assert "(goal >= 0.8: met)" in lines[-1]
    # No p99 and no CPU figures for (c): dashes, not zeros.
    assert lines[-2].startswith("(c) full pipeline") and lines[-2].split()[7:11] == ["-"] * 4


@pytest.mark.integration
def test_a_tiny_run_through_real_nodes_reports_every_scenario(tmp_path: Path) -> None:
    out = tmp_path / "plumbing.json"
    code = main(["--jobs", "8", "--rounds", "1", "--out", str(out)])
    report = json.loads(out.read_text(encoding="utf-8"))
    assert code == 0, report
    assert report["machine"]["cpus"] >= 1 and "cpu_flags" in report["machine"]
    assert report["plan"]["jobs"] == 8 and report["plan"]["object_bytes"] > 1000
    for name in SCENARIOS:
        figures = report["scenarios"][name]
        assert figures["tasks"] == 8 and figures["failed"] == 0, (name, figures)
        assert figures["tasks_per_second"] > 0
        assert figures["p99_ms"] >= figures["p50_ms"] > 0
        # Empty only if every one of the 8 jobs ran before the node was seen ready.
        cpu = figures["cpu_ms_per_task"]
        assert set(cpu) in ({"worker", "s3", "redis"}, set()), cpu
        assert all(value >= 0 for value in cpu.values())
    r = report["ratios"]
    assert r["pipeline_vs_s3"] > 0 and r["pipeline_vs_noop"] > 0 and r["s3_vs_noop"] > 0
    assert len(r["pipeline_vs_s3_per_round"]) == 1 and r["pipeline_vs_s3_median_of_rounds"] > 0
