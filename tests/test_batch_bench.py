"""The batch benchmark's harness: its pure figures (percentiles, ratios, the JSON layout, the
table, texts by token count) and one end-to-end run with the fake engine through real worker
nodes. No timed assertion: the figures themselves are the benchmark's business."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from benchmarks.batch_bench import PLANS, main, rss_figures
from benchmarks.batch_report import (
    Config,
    add_ratios,
    counter_rate,
    format_table,
    histogram_mean,
    percentile,
    report_layout,
    short_job_figures,
    summarize_burst,
    write_plot,
)
from benchmarks.batch_texts import count_words, text_of_tokens, tokens_for


def test_percentile_interpolates_between_ranks() -> None:
    assert percentile([], 50) is None
    assert percentile([4.0], 99) == 4.0
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile([0.0, 10.0], 99) == pytest.approx(9.9)
    assert percentile(list(range(101)), 99) == pytest.approx(99.0)


def test_burst_summary_is_wall_over_audio() -> None:
    figures = summarize_burst([1.0, 2.0, 4.0], audio_seconds=20.0, wall_seconds=5.0, failed=1)
    assert figures["aggregate_rtf"] == 0.25
    assert figures["audio_seconds_per_second"] == 4.0
    assert figures["jobs"] == 4 and figures["failed"] == 1
    assert figures["p50_seconds"] == 2.0
    assert summarize_burst([], audio_seconds=0.0, wall_seconds=3.0)["aggregate_rtf"] is None


def test_short_job_ratio_is_busy_p99_over_alone_median() -> None:
    figures = short_job_figures([2.0, 4.0, 3.0], [6.0, 9.0])
    assert figures["short_alone_seconds"] == 3.0
    assert figures["short_busy_vs_alone"] == pytest.approx(figures["short_busy_p99_seconds"] / 3)
    assert short_job_figures([], [1.0])["short_busy_vs_alone"] is None


def test_counter_rate_and_histogram_mean_need_both_readings() -> None:
    assert counter_rate(100.0, 400.0, 10.0) == 30.0
    assert counter_rate(None, 400.0, 10.0) is None
    assert counter_rate(400.0, 400.0, 10.0) is None
    assert histogram_mean((10.0, 5.0), (50.0, 15.0)) == 4.0
    assert histogram_mean((10.0, 5.0), (10.0, 5.0)) is None
    assert histogram_mean(None, (1.0, 1.0)) is None


def results() -> dict[Config, dict[str, object]]:
    out: dict[Config, dict[str, object]] = {}
    for processes in (1, 2):
        for batch, rtf in ((1, 3.0), (4, 1.5)):
            out[Config("exact", processes, batch)] = {
                "jobs": 6,
                "aggregate_rtf": rtf,
                "audio_seconds_per_second": 1 / rtf,
                "p50_seconds": 4.0,
                "p99_seconds": 9.0,
                "peak_rss_mb": 3000.0,
            }
    out[Config("fast", 1, 1)] = {"error": "TimeoutError: 3 of 6 jobs not done"}
    return out


def test_json_layout_one_process_at_the_top_more_under_processes_n() -> None:
    figures = results()
    add_ratios(figures)
    layout = report_layout(figures)
    assert layout["exact"]["1"]["aggregate_rtf"] == 3.0
    assert layout["exact"]["4"]["speedup_vs_b1"] == 2.0
    assert {"p50_seconds", "p99_seconds", "peak_rss_mb"} <= layout["exact"]["4"].keys()
    assert layout["exact"]["processes_2"]["4"]["aggregate_rtf"] == 1.5
    assert "error" in layout["fast"]["1"]
    json.dumps(layout)  # plain JSON


def test_table_has_a_row_per_config_and_dashes_for_missing_figures() -> None:
    figures = results()
    add_ratios(figures)
    lines = format_table(figures).splitlines()
    assert len(lines) == 1 + len(figures)
    assert "agg RTF" in lines[0] and "peak RSS MB" in lines[0]
    assert "x2.00" in lines[2] and " - " in lines[2] + " "
    assert "error: TimeoutError" in lines[-1]


def test_plot_is_written(tmp_path: Path) -> None:
    path = tmp_path / "plot.png"
    write_plot(results(), path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_texts_have_the_token_count_and_never_repeat() -> None:
    rng = random.Random(0)
    texts = [text_of_tokens(12, rng=rng, count=count_words) for _ in range(50)]
    assert all(count_words(text) == 12 for text in texts)
    assert len(set(texts)) == len(texts)
    assert tokens_for(2.0) == 5 and tokens_for(30.0) == 75 and tokens_for(0.1) == 2
    # The longest job stays within the default 500-character limit.
    assert len(text_of_tokens(75, rng=rng, count=count_words)) < 500


def test_plans_cover_the_issue_grid_and_fill_every_slot() -> None:
    quick, full = PLANS["quick"], PLANS["full"]
    assert full.batch_sizes == (1, 2, 4, 8, 16)
    # Quick stops at 8 to stay under 15 minutes; 16 is in the full grid.
    assert quick.batch_sizes == (1, 2, 4, 8)
    assert quick.presets == full.presets == ("exact", "fast")
    assert quick.processes == (1,) and full.processes == (1, 2)
    assert min(full.lengths) == 2 and max(full.lengths) == 30
    assert len(full.burst_lengths(Config("exact", 2, 16))) == 32
    assert len(quick.burst_lengths(Config("exact", 1, 1))) == quick.min_jobs


@pytest.mark.integration
def test_smoke_run_with_the_fake_engine_writes_json_and_plot(tmp_path: Path) -> None:
    out = tmp_path / "batch.json"
    code = main(["--smoke", "--engine", "fake", "--batch-sizes", "1,2", "--out", str(out)])
    assert code == 0
    report = json.loads(out.read_text(encoding="utf-8"))
    assert report["machine"]["cores"] >= 1
    for batch in ("1", "2"):
        figures = report["presets"]["fake"][batch]
        assert figures["failed"] == 0 and figures["cached"] == 0, figures
        assert figures["aggregate_rtf"] > 0 and figures["p99_seconds"] >= figures["p50_seconds"]
        assert figures["peak_rss_mb"] > 0
        assert figures["short_alone_seconds"] > 0 and figures["short_busy_p99_seconds"] > 0
    assert out.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"


def test_rss_is_the_largest_process_and_each_node_apart() -> None:
    figures = rss_figures([[3000.0, 2800.0], [3100.0]])
    assert figures == {"peak_rss_mb": 3100.0, "peak_rss_mb_by_node": [3000.0, 3100.0]}
    assert rss_figures([])["peak_rss_mb"] is None


def test_nodes_import_this_checkout_first() -> None:
    from benchmarks.batch_nodes import checkout_pythonpath

    root = Path(checkout_pythonpath().split(":")[0])
    assert (root / "worker" / "app.py").is_file() and (root / "benchmarks").is_dir()
