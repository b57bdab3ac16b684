"""Metrics overhead: what counting and pushing costs a task, against the task's own CPU time.

Three parts, in one run:
  micro   the metric calls one new job makes, CPU per task, counting in files (a worker
          node's multiprocess mode) and in memory, in a child process (benchmarks.metrics_micro)
  parent  one collection of a node's folder (the live processes' files, every label in use;
          and with the files dead processes left) and its PUT to the stack's real Pushgateway:
          CPU per push, per second at the push interval, per task at the throughput measured
          below; and the node's own count of it (tts_metrics_push_cpu_seconds_total)
  macro   a real local stack and a worker node with the `fake` engine (no delay) and `espeak`:
          K jobs with pushing on, then K with pushing off (a node restarted with
          TTS_PUSHGATEWAY_URL=""), alternated for a few rounds; tasks/s, the ratio, and the
          node's CPU (parent, pool processes) from /proc, per task

    python -m benchmarks.metrics_bench [--quick] [--out bench-results/metrics.json]

Figures, not assertions; compare within one run (the machine is shared and noisy).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from benchmarks.batch_nodes import checkout_pythonpath, flush
from benchmarks.cpu import cpu_flags, cpu_model
from benchmarks.metrics_micro import NodeFolder, collect_and_push, metric_calls
from benchmarks.pipeline_bench import _rows
from core.settings import Settings
from devstack.stack import LocalStack, StackLayout, StackPorts
from producer.api import Producer
from worker.push import PUSH_CPU

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
GOAL_PERCENT = 1.0
# Jobs each fresh node takes before its measured window.
WARMUP_JOBS = 8
# The SIMD features every benchmark prints (they move the task's own CPU time, not the metrics').


@dataclass(frozen=True)
class Plan:
    """How much of each part to run."""

    engines: tuple[str, ...]
    jobs: dict[str, int]  # per phase, by engine
    rounds: int
    concurrency: int
    call_iterations: int
    call_repeats: int
    push_iterations: int
    # Node folders to collect: (live processes, dead processes' files).
    folders: tuple[tuple[int, int], ...]


PLANS = {
    # A few minutes on 2 cores: `make bench`.
    "quick": Plan(
        engines=("fake", "espeak"),
        jobs={"fake": 300, "espeak": 80},
        rounds=3,
        concurrency=2,
        call_iterations=5000,
        call_repeats=5,
        push_iterations=50,
        folders=((3, 0), (9, 0), (3, 100)),
    ),
    "full": Plan(
        engines=("fake", "espeak"),
        jobs={"fake": 800, "espeak": 200},
        rounds=5,
        concurrency=2,
        call_iterations=20000,
        call_repeats=7,
        push_iterations=200,
        folders=((3, 0), (9, 0), (3, 100), (3, 1000)),
    ),
    # The test's: structure only.
    "smoke": Plan(
        engines=("fake",),
        jobs={"fake": 12, "espeak": 6},
        rounds=1,
        concurrency=1,
        call_iterations=200,
        call_repeats=2,
        push_iterations=3,
        folders=((2, 0), (2, 2)),
    ),
}


def machine() -> dict[str, Any]:
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count() or 1,
        "flags": cpu_flags(),
        "python": platform.python_version(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


# -- the node's CPU, from /proc ----------------------------------------------------------------


def _stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    # Fields after the command name (in parentheses, may hold spaces), from field 3 (state).
    return text.rsplit(")", 1)[-1].split()


def node_cpu(pgid: int) -> tuple[float, float]:
    """(parent, pool) CPU seconds so far of the node led by `pgid`. The pool's: each live
    process of the group but the parent, with what its own children used (espeak-ng runs as
    one), plus what the parent's reaped children used (pool processes that exited)."""
    parent = _stat(pgid)
    if parent is None:
        raise RuntimeError(f"worker node {pgid} is gone")
    # utime, stime, cutime, cstime are fields 14-17: 11-14 here.
    own, reaped = sum(map(int, parent[11:13])), sum(map(int, parent[13:15]))
    pool = reaped
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == pgid:
            continue
        fields = _stat(int(entry.name))
        if fields is not None and len(fields) > 14 and int(fields[2]) == pgid:
            pool += sum(map(int, fields[11:15]))
    return own / CLOCK_TICKS, pool / CLOCK_TICKS


def pushed_value(pushgateway_url: str, name: str, worker: str) -> float:
    """`name`'s value in the worker's Pushgateway group (0 before its first push)."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"{pushgateway_url}/metrics", timeout=5) as response:
        text = response.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels.get("worker") == worker:
                return float(sample.value)
    return 0.0


# -- macro: alternated phases on a real stack ----------------------------------------------------


def run_phase(
    stack: LocalStack, settings: Settings, *, engine: str, push: bool, jobs: int, name: str
) -> dict[str, Any]:
    """A fresh node (pushing on or off) takes `jobs` new jobs; its figures over that window."""
    env = {"PYTHONPATH": checkout_pythonpath(), "TTS_FAKE_DELAY": "0"}
    if not push:
        env["TTS_PUSHGATEWAY_URL"] = ""
    node_settings = replace(settings, engine=engine, fake_delay=0.0)
    node = LocalStack(stack.layout, base_settings=node_settings, extra_env=env, ready_timeout=300)
    status = node.up([name], concurrency=stack.concurrency)[name]
    pgid = status.pid or 0
    worker = f"{name}@{socket.gethostname()}"
    gateway = stack.settings().pushgateway_url
    try:
        tag = uuid.uuid4().hex[:8]
        producer = Producer(stack.settings())
        # Outside the window: each pool process's first jobs (connections, lazy imports).
        producer.submit_batch(_rows(WARMUP_JOBS, tag + "w")).wait(timeout=600, poll_seconds=0.05)
        rows = _rows(jobs, tag)
        push_before = pushed_value(gateway, PUSH_CPU + "_total", worker) if push else 0.0
        parent_before, pool_before = node_cpu(pgid)
        started = time.perf_counter()
        results = producer.submit_batch(rows).wait(timeout=1800, poll_seconds=0.02)
        seconds = time.perf_counter() - started
        parent_after, pool_after = node_cpu(pgid)
        push_after = pushed_value(gateway, PUSH_CPU + "_total", worker) if push else 0.0
    finally:
        node.stop(name)
    ok = sum(r.ok for r in results)
    return {
        "engine": engine,
        "push": push,
        "jobs": jobs,
        "ok": ok,
        "seconds": round(seconds, 3),
        "tasks_per_second": round(jobs / seconds, 2),
        "parent_cpu_seconds": round(parent_after - parent_before, 3),
        "pool_cpu_ms_per_task": round((pool_after - pool_before) / jobs * 1e3, 3),
        "parent_cpu_ms_per_task": round((parent_after - parent_before) / jobs * 1e3, 3),
        # The node's own account (tts_metrics_push_cpu_seconds_total), within one push.
        "push_cpu_ms_per_task": round((push_after - push_before) / jobs * 1e3, 4) if push else None,
    }


def alternate(stack: LocalStack, settings: Settings, plan: Plan) -> list[dict[str, Any]]:
    """On, off, on, off...: each phase on a node of its own, started outside the window."""
    phases = []
    for engine in plan.engines:
        for round_ in range(1, plan.rounds + 1):
            for push in (True, False):
                mode = "on" if push else "off"
                name = f"worker-mbench-{engine}-{mode}-{round_}"
                phase = run_phase(
                    stack, settings, engine=engine, push=push, jobs=plan.jobs[engine], name=name
                )
                phases.append({**phase, "round": round_})
                print(
                    f"  {engine} round {round_} push {mode}: {phase['tasks_per_second']} tasks/s, "
                    f"pool {phase['pool_cpu_ms_per_task']} ms/task, "
                    f"parent {phase['parent_cpu_seconds']} s",
                    file=sys.stderr,
                )
            flush(stack.settings())
    return phases


# -- figures -------------------------------------------------------------------------------------


def _mean(values: Sequence[float]) -> float:
    return statistics.fmean(values) if values else 0.0


def engine_figures(
    phases: list[dict[str, Any]],
    *,
    calls: dict[str, dict[str, Any]],
    push: dict[str, Any],
) -> dict[str, Any]:
    """One engine's summary: the overhead per task against the task's CPU time, and throughput
    with pushing on against off (means over rounds, and each round's ratio)."""
    on = [p for p in phases if p["push"]]
    off = [p for p in phases if not p["push"]]
    task_cpu_ms = _mean([p["pool_cpu_ms_per_task"] for p in off])
    tps_on = _mean([p["tasks_per_second"] for p in on])
    tps_off = _mean([p["tasks_per_second"] for p in off])
    calls_ms = calls["files"]["median_us"] / 1e3
    # The parent pushes at least once per interval whatever the load: per task, that cost
    # shrinks as throughput grows. Taken at the throughput measured with pushing on.
    push_ms_per_task = push["cpu_ms_per_second"] / tps_on if tps_on else 0.0
    measured = _mean([p["push_cpu_ms_per_task"] for p in on if p["push_cpu_ms_per_task"]])
    # The larger of the two: back-to-back pushes run on warm caches, a busy node's pushes
    # every few seconds on cold ones; the node's own count misses one push per window.
    overhead_ms = calls_ms + max(push_ms_per_task, measured)
    rounds = sorted({p["round"] for p in phases})
    by_round = [
        round(on_p["tasks_per_second"] / off_p["tasks_per_second"], 3)
        for r in rounds
        for on_p in on
        for off_p in off
        if on_p["round"] == off_p["round"] == r and off_p["tasks_per_second"]
    ]
    return {
        "task_cpu_ms": round(task_cpu_ms, 3),
        "metric_calls_ms_per_task": round(calls_ms, 4),
        "push_ms_per_task": round(push_ms_per_task, 4),
        "overhead_percent": round(overhead_ms / task_cpu_ms * 100, 3) if task_cpu_ms else None,
        "measured_push_ms_per_task": round(measured, 4) if measured else None,
        "tasks_per_second_on": round(tps_on, 2),
        "tasks_per_second_off": round(tps_off, 2),
        "throughput_ratio_on_off": round(tps_on / tps_off, 3) if tps_off else None,
        "throughput_ratio_by_round": by_round,
        "pool_cpu_ms_per_task_on": round(_mean([p["pool_cpu_ms_per_task"] for p in on]), 3),
        "pool_cpu_ms_per_task_off": round(task_cpu_ms, 3),
        "parent_cpu_ms_per_task_on": round(_mean([p["parent_cpu_ms_per_task"] for p in on]), 3),
        "parent_cpu_ms_per_task_off": round(_mean([p["parent_cpu_ms_per_task"] for p in off]), 3),
        # Parent and pool together: less moved by other work on the machine than tasks/s.
        "node_cpu_ratio_on_off": _ratio(_node_cpu_ms(on), _node_cpu_ms(off)),
    }


def _node_cpu_ms(phases: list[dict[str, Any]]) -> float:
    return _mean([p["pool_cpu_ms_per_task"] + p["parent_cpu_ms_per_task"] for p in phases])


def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 3) if b else None


def format_table(report: dict[str, Any]) -> str:
    """The printed summary: the machine, then one column per engine."""
    m = report["machine"]
    calls = report["metric_calls"]
    lines = [
        f"cpu: {m['cpu']}, {m['cores']} cores, load {m['load_average']}",
        f"cpu flags: {' '.join(m['flags']) or '-'}",
        f"metric calls per task: {calls['files']['median_us']} us in files, "
        f"{calls['memory']['median_us']} us in memory",
    ]
    for push in report["collect_and_push"]:
        lines.append(
            f"collect + push, {push['processes']} live + {push['dead_processes']} dead "
            f"processes ({push['files']} files, "
            f"{push['body_bytes']} B): collect {push['collect_ms']} ms, push {push['push_ms']} ms "
            f"CPU ({push['push_wall_ms']} ms wall) = {push['cpu_ms_per_second']} ms/s at one "
            f"push per {push['push_seconds']} s"
        )
    engines = list(report["engines"])
    rows = [
        ("task CPU, pool, ms/task (push off)", "task_cpu_ms"),
        ("metric calls, ms/task", "metric_calls_ms_per_task"),
        ("collect + push, ms/task (from above)", "push_ms_per_task"),
        ("collect + push, ms/task (node's own count)", "measured_push_ms_per_task"),
        ("overhead, % of task CPU (calls + larger push)", "overhead_percent"),
        ("tasks/s push on", "tasks_per_second_on"),
        ("tasks/s push off", "tasks_per_second_off"),
        ("throughput on / off", "throughput_ratio_on_off"),
        ("  by round", "throughput_ratio_by_round"),
        ("pool CPU ms/task on", "pool_cpu_ms_per_task_on"),
        ("parent CPU ms/task on", "parent_cpu_ms_per_task_on"),
        ("parent CPU ms/task off", "parent_cpu_ms_per_task_off"),
        ("node CPU per task on / off", "node_cpu_ratio_on_off"),
    ]
    width = max(len(label) for label, _ in rows)
    lines.append(f"{'':{width}}  " + "  ".join(f"{e:>18}" for e in engines))
    for label, key in rows:
        cells = []
        for engine in engines:
            cells.append(f"{_cell(report['engines'][engine].get(key)):>18}")
        lines.append(f"{label:{width}}  " + "  ".join(cells))
    lines.append(f"goal: overhead under {GOAL_PERCENT}% of task CPU")
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, list):
        return " ".join(map(str, value))
    return str(value)


def run(plan: Plan) -> dict[str, Any]:
    calls = metric_calls(iterations=plan.call_iterations, repeats=plan.call_repeats)
    with tempfile.TemporaryDirectory(prefix="tts-mbench-") as state:
        base = Settings(batch_ttl_seconds=3600)
        stack = LocalStack(
            StackLayout(Path(state), ports=StackPorts.find_free()), base_settings=base
        )
        stack.concurrency = plan.concurrency
        stack.up(["redis", "s3", "pushgateway"])
        try:
            settings = stack.settings()
            pushes = []
            for processes, dead in plan.folders:
                with NodeFolder(processes, dead=dead) as folder:
                    figures = collect_and_push(
                        folder.path,
                        url=settings.pushgateway_url,
                        iterations=plan.push_iterations,
                        push_seconds=settings.metrics_push_seconds,
                    )
                pushes.append({"processes": processes, "dead_processes": dead, **figures})
            phases = alternate(stack, base, plan)
        finally:
            stack.down()
    # The node's folder as the macro run has it: its pool processes and its parent.
    fresh = [p for p in pushes if not p["dead_processes"]]
    node_push = min(fresh, key=lambda p: abs(p["processes"] - (plan.concurrency + 1)))
    engines = {
        engine: engine_figures(
            [p for p in phases if p["engine"] == engine], calls=calls, push=node_push
        )
        for engine in plan.engines
    }
    return {
        "machine": machine(),
        "plan": {
            "rounds": plan.rounds,
            "jobs": {e: plan.jobs[e] for e in plan.engines},
            "concurrency": plan.concurrency,
        },
        "metric_calls": calls,
        "collect_and_push": pushes,
        "engines": engines,
        "phases": phases,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="a few minutes (make bench)")
    size.add_argument("--smoke", action="store_true", help="seconds; structure only (tests)")
    parser.add_argument("--engines", help="comma-separated (default: fake,espeak)")
    parser.add_argument("--rounds", type=int, help="on/off pairs per engine")
    parser.add_argument("--out", type=Path, default=Path("bench-results/metrics.json"))
    args = parser.parse_args(argv)
    plan = PLANS["smoke" if args.smoke else "quick" if args.quick else "full"]
    if args.engines:
        plan = replace(plan, engines=tuple(args.engines.split(",")))
    if args.rounds:
        plan = replace(plan, rounds=args.rounds)
    report = run(plan)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(format_table(report))
    print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
