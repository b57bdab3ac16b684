"""The metrics overhead benchmark's harness: the per-task metric calls match what a job
counts, a node folder is collected and pushed (to a local HTTP server here), the pusher counts
its own CPU, the figures and table have their shape; and one tiny end-to-end run on a real
stack. Never a timing: the figures are the benchmark's business."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest

from benchmarks.metrics_bench import PLANS, engine_figures, format_table, main, node_cpu
from benchmarks.metrics_micro import NodeFolder, collect_and_push, metric_calls, one_task
from worker.push import PUSH_CPU, BackgroundPusher, WorkerMetrics


class Gateway(BaseHTTPRequestHandler):
    bodies: ClassVar[list[bytes]] = []

    def do_PUT(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        type(self).bodies.append(self.rfile.read(length))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def gateway() -> Iterator[tuple[str, type[Gateway]]]:
    handler = type("Handler", (Gateway,), {"bodies": []})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", handler
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_one_task_counts_what_a_new_job_counts() -> None:
    metrics = WorkerMetrics(engine="fake")
    asked = []
    one_task(metrics, lambda: asked.append(1))
    value = metrics.registry.get_sample_value
    assert value("tts_tasks_total", {"status": "succeeded"}) == 1
    assert value("tts_storage_seconds_count", {"op": "lookup"}) == 2
    assert value("tts_storage_seconds_count", {"op": "upload"}) == 1
    assert value("tts_inference_duration_seconds_count", {"engine": "fake"}) == 1
    assert value("tts_queue_wait_seconds_count") == 1
    assert value("tts_task_duration_seconds_count") == 1
    assert (value("tts_characters_total", {"engine": "fake"}) or 0) > 0
    assert asked == [1]


def test_metric_calls_are_measured_in_files_and_in_memory() -> None:
    calls = metric_calls(iterations=50, repeats=2)
    assert calls["files"]["mode"] == "files" and calls["memory"]["mode"] == "memory"
    assert calls["files"]["median_us"] > 0 and calls["files"]["iterations"] == 100


def test_a_node_folder_is_collected_and_pushed(gateway: tuple[str, type[Gateway]]) -> None:
    url, handler = gateway
    with NodeFolder(2, tasks=5) as node:
        figures = collect_and_push(node.path, url=url, iterations=3, push_seconds=2.0)
    assert len(handler.bodies) == 3
    body = handler.bodies[-1].decode()
    # Both processes' jobs summed, their live gauges kept, and the pusher's own cost.
    assert 'tts_tasks_total{status="succeeded"} 12.0' in body
    assert "tts_worker_info{" in body
    assert f"{PUSH_CPU}_total " in body
    assert figures["files"] >= 4 and figures["body_bytes"] > 1000


def test_dead_processes_files_stay_counted(gateway: tuple[str, type[Gateway]]) -> None:
    url, handler = gateway
    with NodeFolder(1, dead=2, tasks=5) as node:
        figures = collect_and_push(node.path, url=url, iterations=1, push_seconds=2.0)
    # One live process's counter, histogram and gauge files; two dead ones' counters and
    # histograms, each a copy of the live one's.
    assert figures["files"] == 3 + 2 * 2
    assert 'tts_tasks_total{status="succeeded"} 18.0' in handler.bodies[-1].decode()
    assert set(figures) >= {"collect_ms", "push_ms", "push_wall_ms", "cpu_ms_per_second"}


def test_the_pusher_counts_its_cpu_only_when_asked(gateway: tuple[str, type[Gateway]]) -> None:
    url, handler = gateway
    plain = BackgroundPusher(WorkerMetrics(engine="fake").registry, url=url, grouping_key={})
    assert plain.push_now() and plain.cpu_seconds > 0
    assert PUSH_CPU.encode() not in handler.bodies[-1]
    metrics = WorkerMetrics(engine="fake")
    counted = BackgroundPusher(metrics.registry, url=url, grouping_key={}, report_cost=True)
    counted.push_now()
    counted.push_now()
    # Each push carries the CPU of the pushes before it.
    assert metrics.registry.get_sample_value(f"{PUSH_CPU}_total") == counted.cpu_seconds
    assert f"{PUSH_CPU}_total ".encode() in handler.bodies[-1]


def test_node_cpu_reads_this_process_group() -> None:
    import os

    parent, pool = node_cpu(os.getpgid(0))
    assert parent >= 0 and pool >= 0


def phases() -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    for round_ in (1, 2):
        for push, tps in ((True, 49.0), (False, 50.0)):
            out.append(
                {
                    "round": round_,
                    "push": push,
                    "tasks_per_second": tps,
                    "pool_cpu_ms_per_task": 20.0,
                    "parent_cpu_ms_per_task": 2.0 if push else 1.5,
                    "push_cpu_ms_per_task": 0.03 if push else None,
                }
            )
    return out


def test_figures_put_the_overhead_against_the_task_cpu() -> None:
    calls = {"files": {"median_us": 40.0}, "memory": {"median_us": 30.0}}
    push = {"cpu_ms_per_second": 1.96}
    figures = engine_figures(phases(), calls=calls, push=push)
    assert figures["task_cpu_ms"] == 20.0
    assert figures["push_ms_per_task"] == pytest.approx(0.04)
    # The larger push figure of the two (here the one from the collector's CPU per second).
    assert figures["overhead_percent"] == pytest.approx((0.04 + 0.04) / 20 * 100)
    measured_more = engine_figures(phases(), calls=calls, push={"cpu_ms_per_second": 0.98})
    assert measured_more["overhead_percent"] == pytest.approx((0.04 + 0.03) / 20 * 100)
    assert figures["throughput_ratio_on_off"] == 0.98
    assert figures["throughput_ratio_by_round"] == [0.98, 0.98]
    assert figures["measured_push_ms_per_task"] == 0.03
    assert figures["node_cpu_ratio_on_off"] == pytest.approx(22 / 21.5, abs=1e-3)
    json.dumps(figures)


def test_table_has_the_flags_line_and_a_column_per_engine() -> None:
    calls = {"files": {"median_us": 40.0}, "memory": {"median_us": 30.0}}
    push = {
        "processes": 3,
        "dead_processes": 0,
        "files": 9,
        "body_bytes": 8000,
        "collect_ms": 2.0,
        "push_ms": 3.0,
        "push_wall_ms": 4.0,
        "push_seconds": 2.0,
        "cpu_ms_per_second": 1.5,
    }
    engines = {e: engine_figures(phases(), calls=calls, push=push) for e in ("fake", "espeak")}
    report = {
        "machine": {"cpu": "X", "cores": 2, "flags": ["avx2"], "load_average": [1.0]},
        "metric_calls": calls,
        "collect_and_push": [push],
        "engines": engines,
    }
    lines = format_table(report).splitlines()
    assert lines[1] == "cpu flags: avx2"
    header = next(line for line in lines if line.split() == ["fake", "espeak"])
    assert header
    overhead = next(line for line in lines if line.startswith("overhead, % of task CPU"))
    assert all(float(cell) > 0 for cell in overhead.split()[-2:])  # one per engine
    assert "0.98 0.98" in next(line for line in lines if "by round" in line)


def test_plans_stay_small_where_they_must() -> None:
    quick = PLANS["quick"]
    assert quick.engines == ("fake", "espeak") and quick.rounds >= 2
    assert PLANS["smoke"].rounds == 1


@pytest.mark.integration
def test_smoke_run_on_a_real_stack_writes_the_report(tmp_path: Path) -> None:
    out = tmp_path / "metrics.json"
    assert main(["--smoke", "--out", str(out)]) == 0
    report = json.loads(out.read_text(encoding="utf-8"))
    assert report["machine"]["cores"] >= 1 and isinstance(report["machine"]["flags"], list)
    assert [(p["push"], p["ok"]) for p in report["phases"]] == [(True, 12), (False, 12)]
    fake = report["engines"]["fake"]
    assert set(fake) >= {"overhead_percent", "throughput_ratio_on_off", "task_cpu_ms"}
    assert [(p["processes"], p["dead_processes"]) for p in report["collect_and_push"]] == [
        (2, 0),
        (2, 2),
    ]
