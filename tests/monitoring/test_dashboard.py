"""The Grafana dashboard: generated from monitoring/panels.py, well formed, every query parsed by
promtool, and only known metric names used."""

from __future__ import annotations

import itertools
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from monitoring.grafana import DASHBOARD_FILE, DATASOURCE, build_dashboard, dashboard_text
from monitoring.panels import MIN_RATIO_JOBS, NO_TRAFFIC, PANELS, RATE_INTERVAL, Query
from worker.push import DURATION_BUCKETS, QUEUE_WAIT_BUCKETS

ROOT = Path(__file__).resolve().parents[2]
PROVISIONING = ROOT / "compose" / "grafana" / "provisioning"

# DESIGN.md's metric table, plus what the Pushgateway and the queue exporter add.
HISTOGRAMS = {
    "tts_inference_duration_seconds",
    "tts_task_duration_seconds",
    "tts_queue_wait_seconds",
    "tts_storage_seconds",
    "tts_engine_batch_size",
}
KNOWN_METRICS = {f"{h}{suffix}" for h in HISTOGRAMS for suffix in ("_bucket", "_sum", "_count")} | {
    "tts_errors_total",
    "tts_tasks_total",
    "tts_task_retries_total",
    "tts_audio_seconds_total",
    "tts_characters_total",
    "tts_worker_info",
    "tts_engine_load_seconds",
    "tts_engine_speech_tokens_total",
    "tts_queue_depth",
    "tts_queue_unacked",
    "tts_queue_up",
    "push_time_seconds",
    "push_failure_time_seconds",
}


@pytest.fixture(scope="module")
def dashboard() -> dict[str, object]:
    return json.loads(DASHBOARD_FILE.read_text(encoding="utf-8"))  # type: ignore[no-any-return]


def test_committed_json_is_generated_from_panels() -> None:
    assert DASHBOARD_FILE.read_text(encoding="utf-8") == dashboard_text(), (
        "run: python -m monitoring.grafana"
    )


def test_dashboard_structure(dashboard: dict[str, object]) -> None:
    assert dashboard == build_dashboard()
    assert dashboard["uid"] and dashboard["title"]
    panels = dashboard["panels"]
    assert isinstance(panels, list) and len(panels) == len(PANELS)
    ids = [p["id"] for p in panels]
    assert len(set(ids)) == len(ids)
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        assert panel["type"] == "timeseries"
        assert panel["datasource"] == DATASOURCE
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24
        # No two panels overlap on Grafana's grid.
        mine = {
            (x, y)
            for x in range(pos["x"], pos["x"] + pos["w"])
            for y in range(pos["y"], pos["y"] + pos["h"])
        }
        assert not cells & mine, panel["title"]
        cells |= mine
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert ref_ids and len(set(ref_ids)) == len(ref_ids)
        for target in panel["targets"]:
            assert target["expr"].strip()
            assert target["datasource"] == DATASOURCE


def test_datasource_uid_matches_provisioning() -> None:
    text = (PROVISIONING / "datasources" / "prometheus.yml").read_text(encoding="utf-8")
    assert re.search(rf"^\s*uid: {DATASOURCE['uid']}\s*$", text, re.M)
    assert re.search(r"^\s*type: prometheus\s*$", text, re.M)
    providers = (PROVISIONING / "dashboards" / "tts.yml").read_text(encoding="utf-8")
    assert re.search(r"^\s*path: /\S+", providers, re.M)


def test_required_panels_are_present() -> None:
    exprs = {p.title: " ".join(q.expr for q in p.queries) for p in PANELS}
    joined = "\n".join(exprs.values())
    assert "rate(tts_tasks_total" in joined
    assert "rate(tts_audio_seconds_total" in joined
    latency = exprs["Inference latency"]
    for q in ("0.5", "0.9", "0.99"):
        assert f"histogram_quantile({q}, sum by (le" in latency
    assert "rate(tts_inference_duration_seconds_bucket" in latency
    assert "sum by (reason) (rate(tts_errors_total" in exprs["Error ratio by reason"]
    assert 'status=~"succeeded|cached"' in exprs["Success ratio"]
    assert "tts_inference_duration_seconds_sum" in exprs["Real-time factor"]
    assert "tts_queue_wait_seconds_bucket" in exprs["Queue wait"]
    assert "tts_queue_depth" in exprs["Queue depth"]
    assert (
        'max by (worker) (time() - push_time_seconds{job="tts_worker"})'
        in exprs["Worker freshness"]
    )
    assert "rate(tts_engine_batch_size_sum" in exprs["Engine batch size"]
    assert "rate(tts_engine_speech_tokens_total" in exprs["Speech tokens per second"]


def test_only_known_metrics_are_queried() -> None:
    for panel in PANELS:
        for query in panel.queries:
            # Label values ("tts_worker") are not metric names: drop quoted strings first.
            bare = re.sub(r'"[^"]*"', '""', query.expr)
            names = set(re.findall(r"\b((?:tts|push)_\w+)", bare))
            assert names, query.expr
            assert names <= KNOWN_METRICS, f"{panel.title}: unknown {names - KNOWN_METRICS}"


def test_rate_interval_substitution() -> None:
    query = Query(f"rate(x[{RATE_INTERVAL}]) / rate(y[{RATE_INTERVAL}])")
    assert query.promql("2m") == "rate(x[2m]) / rate(y[2m])"
    for panel in PANELS:
        for expr in panel.promql("1m"):
            # Grafana variables other than $__rate_interval would not parse outside Grafana.
            assert "$" not in expr, expr


def test_every_panel_query_parses_with_promtool(tmp_path: Path) -> None:
    exe = shutil.which("promtool")
    if exe is None:
        pytest.fail("promtool not found: run scripts/install-system.sh (Debian package prometheus)")
    # Each query becomes a recording rule; promtool parses (and type-checks) its expression.
    lines = ["groups:", "  - name: dashboard_panels", "    rules:"]
    count = 0
    for i, panel in enumerate(PANELS):
        for j, expr in enumerate(panel.promql("1m")):
            lines.append(f"      - record: panel_{i}_{j}")
            lines.append(f"        expr: {json.dumps(expr)}")
            count += 1
    rule_file = tmp_path / "panels.yml"
    rule_file.write_text("\n".join(lines) + "\n", encoding="utf-8")
    proc = subprocess.run(
        [exe, "check", "rules", str(rule_file)], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {count} rules found" in proc.stdout


def test_docs_show_every_panel_query() -> None:
    docs = (ROOT / "docs" / "monitoring.md").read_text(encoding="utf-8")
    for panel in PANELS:
        assert f"**{panel.title}**" in docs, panel.title
        for query in panel.queries:
            assert query.expr in docs, f"{panel.title}: docs/monitoring.md lacks {query.expr}"


def test_monitoring_modules_import_light() -> None:
    # The CLI imports these; matplotlib (and numpy with it) loads only when a PNG is drawn.
    code = (
        "import monitoring.panels, monitoring.grafana, monitoring.prometheus_config, "
        "monitoring.render_png, sys; print(' '.join(sorted(sys.modules)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    assert not {"matplotlib", "numpy", "prometheus_client"} & set(out.split())


def test_worker_grouping_has_no_process_label() -> None:
    # One Pushgateway group per worker node, {job, worker}: nothing may group or filter by pid.
    files = [DASHBOARD_FILE, *(ROOT / "compose" / "prometheus").glob("*/*.yml")]
    texts = {str(f): f.read_text(encoding="utf-8") for f in files}
    texts["panels"] = "\n".join(q.expr + q.legend for p in PANELS for q in p.queries)
    for name, text in texts.items():
        assert not re.search(r"\bprocess\b\s*[=:)]|\{\{\s*process|\$labels\.process", text), name


def test_ratios_need_traffic_and_say_so(dashboard: dict[str, object]) -> None:
    guard = f"and on () sum(increase(tts_tasks_total[{RATE_INTERVAL}])) >= {MIN_RATIO_JOBS}"
    by_title = {p["title"]: p for p in dashboard["panels"]}  # type: ignore[attr-defined]
    for title in ("Success ratio", "Error ratio by reason"):
        [panel] = [p for p in PANELS if p.title == title]
        assert all(q.expr.endswith(guard) for q in panel.queries), title
        assert panel.no_value == NO_TRAFFIC
        assert by_title[title]["fieldConfig"]["defaults"]["noValue"] == NO_TRAFFIC


def test_a_ratio_at_100_percent_is_not_on_the_frame(dashboard: dict[str, object]) -> None:
    for panel in PANELS:
        if panel.unit == "percentunit" and panel.y_max is not None:
            # Drawn by Grafana and the PNG with the axis top above 100%.
            assert panel.y_max > 1, panel.title
    by_title = {p["title"]: p for p in dashboard["panels"]}  # type: ignore[attr-defined]
    assert by_title["Success ratio"]["fieldConfig"]["defaults"]["max"] > 1


def test_histogram_buckets_resolve_the_range_that_occurs() -> None:
    # A batch larger than the fleet waits for minutes: queue wait needs bounds between 60 and
    # 300 s, and from 10 s on no bucket wider than 1.5x (a quantile is interpolated inside one).
    for buckets in (QUEUE_WAIT_BUCKETS, DURATION_BUCKETS):
        assert list(buckets) == sorted(set(buckets))
        assert any(60 < b < 300 for b in buckets)
        pairs = list(itertools.pairwise(buckets))
        assert all(hi / lo <= 2 for lo, hi in pairs if lo >= 1), buckets
        assert all(hi / lo <= 1.5 for lo, hi in pairs if lo >= 10), buckets
    assert QUEUE_WAIT_BUCKETS[-1] >= 7200
    assert DURATION_BUCKETS[-1] >= 1800
