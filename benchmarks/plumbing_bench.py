"""Plumbing overhead: the full pipeline (fake engine, no delay) against a bare Celery task, in
one run, on a local stack started for the purpose, with real Celery worker processes.

  (a) noop      a Celery task that returns at once (benchmarks.plumbing_app)
  (b) s3        a Celery task that makes only a new job's S3 requests: HEAD (a miss), then the
                conditional PUT of the pipeline's object for the same text, with its metadata
  (c) pipeline  tts.synthesize with the fake engine (TTS_FAKE_DELAY=0), new texts: validation,
                batch state, content lease, S3 lookup, synthesis, encoding, upload, record,
                metrics (pushed to the stack's Pushgateway unless --no-push)

Same Celery configuration (celeryconfig.py), concurrency and number of jobs; after one
unmeasured warm-up run of each, the scenarios alternate, round after round, in a rotating
order. Each run fills its queue first, then starts a fresh node on it, so that sending is not
measured. Figures come from the nodes' own task
events: throughput is jobs over first task-started to last task-succeeded; per-task times are
Celery's `runtime` (the task in its pool process, result stored included). CPU per task: the
node's processes, SeaweedFS and Redis, from /proc, over the same window.

    python -m benchmarks.plumbing_bench [--quick] [--jobs N] [--rounds R] [--out FILE]

Figures, not assertions: compare the ratios within one run.
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
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from celery import Celery

from benchmarks.batch_nodes import checkout_pythonpath, group_members
from benchmarks.cpu import cpu_flags, cpu_model
from benchmarks.plumbing_app import NOOP, S3, fake_object
from core.delivery import CELERY_APP, QUEUE
from core.settings import Settings
from devstack.procs import read_pid
from devstack.stack import LocalStack, StackLayout, StackPorts
from producer.api import Producer
from producer.sender import client_app

SCENARIOS = ("noop", "s3", "pipeline")
LABELS = {
    "noop": "(a) Celery no-op task",
    "s3": "(b) Celery task, S3 calls only",
    "pipeline": "(c) full pipeline, fake engine",
}
APP = "benchmarks.plumbing_app"
SPEAKER = "英文女"
GOAL = 0.8
WARMUP_ROUND, WARMUP_JOBS = 99, 40


@dataclass(frozen=True)
class Plan:
    jobs: int
    rounds: int
    concurrency: int


# Many short rounds rather than a few long ones: each (b)/(c) pair runs close together in time.
PLANS = {
    "quick": Plan(jobs=150, rounds=6, concurrency=2),
    "full": Plan(jobs=600, rounds=8, concurrency=2),
}


# -- figures -----------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile, interpolated between ranks (None for no values)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def run_figures(events: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One run's figures from its task events (task-started, task-succeeded, task-failed)."""
    starts = [e["timestamp"] for e in events if e["type"] == "task-started"]
    done = [e for e in events if e["type"] == "task-succeeded"]
    failed = sum(e["type"] == "task-failed" for e in events)
    ends = [e["timestamp"] for e in done]
    window = (max(ends) - min(starts)) if starts and ends else 0.0
    return {
        "jobs": len(done) + failed,
        "failed": failed,
        "seconds": round(window, 3),
        "tasks_per_second": round(len(done) / window, 1) if window > 0 else None,
        "runtimes": [float(e["runtime"]) for e in done],
    }


def summarize(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """A scenario over its rounds: median throughput, per-task p50/p99 over every task."""
    rates = [r["tasks_per_second"] for r in runs if r["tasks_per_second"]]
    runtimes = [t for r in runs for t in r["runtimes"]]

    def ms(q: float) -> float | None:
        value = percentile(runtimes, q)
        return None if value is None else round(value * 1000, 2)

    cpu = [r["cpu_ms_per_task"] for r in runs if r.get("cpu_ms_per_task")]
    return {
        "cpu_ms_per_task": {
            who: round(statistics.median(c[who] for c in cpu), 2) for who in (cpu[0] if cpu else {})
        },
        "tasks_per_second": round(statistics.median(rates), 1) if rates else None,
        "tasks_per_second_runs": rates,
        "p50_ms": ms(50),
        "p99_ms": ms(99),
        "tasks": len(runtimes),
        "failed": sum(r["failed"] for r in runs),
    }


def ratios(scenarios: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Throughput ratios of the medians, and (c)/(b) round by round: the two ran minutes
    apart at most, so a change in the machine's other load shows in one round, not in all."""

    def ratio(a: str, b: str) -> float | None:
        x, y = scenarios[a]["tasks_per_second"], scenarios[b]["tasks_per_second"]
        return round(x / y, 3) if x and y else None

    pairs = zip(
        scenarios["pipeline"]["tasks_per_second_runs"],
        scenarios["s3"]["tasks_per_second_runs"],
        strict=False,
    )
    per_round = [round(c / b, 3) for c, b in pairs if c and b]
    return {
        "pipeline_vs_s3": ratio("pipeline", "s3"),
        "pipeline_vs_s3_per_round": per_round,
        "pipeline_vs_s3_median_of_rounds": (
            round(statistics.median(per_round), 3) if per_round else None
        ),
        "pipeline_vs_noop": ratio("pipeline", "noop"),
        "s3_vs_noop": ratio("s3", "noop"),
    }


def format_table(report: dict[str, Any]) -> str:
    m, plan = report["machine"], report["plan"]
    lines = [
        f"plumbing overhead: {plan['rounds']} rounds x {plan['jobs']} jobs per scenario, "
        f"concurrency {plan['concurrency']}, {plan['object_bytes']}-byte objects, "
        f"pushing {'on' if plan['push'] else 'off'}",
        f"machine: {m['cpus']} CPUs, {m['cpu_model']}; python {m['python']}; 1-min load "
        f"{m.get('load_average_1m', {}).get('before', '?')} before, "
        f"{m.get('load_average_1m', {}).get('after', '?')} after",
        f"cpu flags: {' '.join(m['cpu_flags']) or '-'}",
        f"{'scenario':34} {'tasks/s':>8} {'p50 ms':>7} {'p99 ms':>7} "
        f"{'CPU ms/task: worker':>20} {'S3':>5} {'Redis':>6} {'failed':>6}  tasks/s of each round",
    ]

    def cell(value: Any) -> str:
        return "-" if value is None else f"{value}"

    for name in SCENARIOS:
        s = report["scenarios"][name]
        runs = ", ".join(f"{r:g}" for r in s["tasks_per_second_runs"])
        cpu = s.get("cpu_ms_per_task", {})
        lines.append(
            f"{LABELS[name]:34} {cell(s['tasks_per_second']):>8} {cell(s['p50_ms']):>7} "
            f"{cell(s['p99_ms']):>7} {cell(cpu.get('worker')):>20} {cell(cpu.get('s3')):>5} "
            f"{cell(cpu.get('redis')):>6} {s['failed']:>6}  {runs}"
        )
    r = report["ratios"]
    headline = r["pipeline_vs_s3_median_of_rounds"]
    verdict = "met" if (headline or 0) >= GOAL else "not met"
    rounds = ", ".join(f"{x:g}" for x in r["pipeline_vs_s3_per_round"])
    lines.append(
        f"throughput (c)/(b): {cell(headline)} median of rounds ({rounds}), "
        f"{cell(r['pipeline_vs_s3'])} of medians (goal >= {GOAL}: {verdict}); "
        f"(c)/(a) = {cell(r['pipeline_vs_noop'])}; (b)/(a) = {cell(r['s3_vs_noop'])}"
    )
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count() or 1,
        "cpu_model": cpu_model(),
        "cpu_flags": cpu_flags(),
        "python": platform.python_version(),
        "node": platform.node(),
    }


def cpu_seconds(pids: Sequence[int]) -> float:
    """User + system CPU of these processes so far (0 for one that is gone)."""
    total = 0
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[-1].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


# -- the run -----------------------------------------------------------------------------------


class EventLog:
    """Task events of every node on the broker, kept per node (a thread of the benchmark)."""

    def __init__(self, app: Celery) -> None:
        self._app = app
        self._events: dict[str, list[dict[str, Any]]] = {}
        self._lock = threading.Lock()
        self._receiver: Any = None
        self._thread = threading.Thread(target=self._run, name="plumbing-events", daemon=True)
        self._ready = threading.Event()

    def start(self) -> EventLog:
        self._thread.start()
        if not self._ready.wait(timeout=30):
            raise TimeoutError("the event receiver did not connect")
        return self

    def _run(self) -> None:
        with self._app.connection_for_read() as conn:
            self._receiver = self._app.events.Receiver(conn, handlers={"*": self._on_event})
            self._ready.set()
            self._receiver.capture(limit=None, timeout=None, wakeup=False)

    def _on_event(self, event: dict[str, Any]) -> None:
        if str(event.get("type", "")).startswith("task-"):
            with self._lock:
                self._events.setdefault(event.get("hostname", ""), []).append(event)

    def of(self, hostname: str) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._events.get(hostname, []))

    def stop(self) -> None:
        if self._receiver is not None:
            self._receiver.should_stop = True
        self._thread.join(timeout=5)


@dataclass
class Bench:
    stack: LocalStack
    settings: Settings
    node_settings: Settings
    plan: Plan
    node_env: dict[str, str]
    events: EventLog
    object_bytes: int
    metadata: dict[str, str]
    tag: str

    def run(self, scenario: str, round_no: int, *, jobs: int = 0) -> dict[str, Any]:
        jobs = jobs or self.plan.jobs
        name = f"worker-plumb-{scenario}-{self.tag}-{round_no}"
        self._fill(scenario, round_no, jobs)
        # The pipeline's node: the stack's own app and queue; the bare ones: plumbing_app.
        bare = scenario != "pipeline"
        node = LocalStack(
            self.stack.layout,
            app=APP if bare else CELERY_APP,
            queue=f"bench-{scenario}" if bare else QUEUE,
            base_settings=self.node_settings,
            extra_env=self.node_env,
            ready_timeout=120,
        )
        pgid = node.up([name], concurrency=self.plan.concurrency)[name].pid or 0
        hostname = f"{name}@{socket.gethostname()}"
        # CPU from here to the last job, per job counted from here: the node's start-up is not
        # the task's cost.
        servers = {s: read_pid(self.stack.layout.dirs, s) or 0 for s in ("s3", "redis")}
        before = {"worker": cpu_seconds(group_members(pgid))}
        before.update({s: cpu_seconds([pid]) for s, pid in servers.items()})
        counted = jobs - self._terminal(hostname)
        try:
            deadline = time.monotonic() + 60 + jobs
            while self._terminal(hostname) < jobs:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{scenario}: {self._terminal(hostname)} jobs done")
                time.sleep(0.2)
            after = {"worker": cpu_seconds(group_members(pgid))}
            after.update({s: cpu_seconds([pid]) for s, pid in servers.items()})
        finally:
            node.stop(name)
        figures = run_figures(self.events.of(hostname))
        # None when every job ran before the node was seen ready (tiny runs).
        figures["cpu_ms_per_task"] = (
            {who: round((after[who] - before[who]) * 1000 / counted, 2) for who in before}
            if counted > 0
            else None
        )
        return figures

    def _terminal(self, hostname: str) -> int:
        return sum(e["type"] in ("task-succeeded", "task-failed") for e in self.events.of(hostname))

    def _fill(self, scenario: str, round_no: int, jobs: int) -> None:
        texts = [pipeline_text(self.tag, round_no, i) for i in range(jobs)]
        if scenario == "pipeline":
            rows = [{"id": f"r{i}", "text": t, "speaker": SPEAKER} for i, t in enumerate(texts)]
            Producer(self.settings).submit_batch(rows, batch_id=f"plumb-{self.tag}-{round_no}")
            return
        app = client_app(self.settings)
        with app.producer_or_acquire() as producer:
            for i in range(jobs):
                if scenario == "noop":
                    args: list[Any] = [{"job_id": f"noop-{i}", "text": texts[i]}]
                else:
                    key = f"bench/{self.tag}/{round_no}/{i}.wav"
                    # The same text for every job: its bytes are made once per process.
                    args = [key, texts[0], self.metadata]
                task = NOOP if scenario == "noop" else S3
                app.send_task(task, args=args, queue=f"bench-{scenario}", producer=producer)


def pipeline_text(tag: str, round_no: int, i: int) -> str:
    """New text of one length for every job (one object size)."""
    return f"Platform {round_no:02d}{i:06d} {tag} is now open for boarding."


def object_figures(tag: str) -> tuple[int, dict[str, str]]:
    """The size and metadata of the object the pipeline stores for one of the texts."""
    from worker.audio import duration_seconds
    from worker.engines.fake import FakeSynthesizer

    engine = FakeSynthesizer()
    text = pipeline_text(tag, 0, 0)
    data = fake_object(text)
    samples = engine.synthesize(text, speaker=SPEAKER, lang=None)
    seconds = duration_seconds(samples, engine.sample_rate)
    metadata = {
        "engine": engine.name,
        "model": engine.model_id,
        "speaker": SPEAKER.encode("utf-8").hex(),
        "speaker-encoding": "utf-8-hex",
        "lang": "",
        "sample-rate": str(engine.sample_rate),
        "duration-seconds": f"{seconds:.3f}",
        "text-sha256": "0" * 64,
    }
    return len(data), metadata


def run(plan: Plan, *, push: bool = True) -> dict[str, Any]:
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="tts-plumbing-") as state:
        base = Settings(batch_ttl_seconds=3600)
        stack = LocalStack(
            StackLayout(Path(state), ports=StackPorts.find_free()), base_settings=base
        )
        stack.up(["redis", "s3", "pushgateway"] if push else ["redis", "s3"])
        try:
            settings = stack.settings()
            if not push:
                settings = replace(settings, pushgateway_url="")
            node_settings = replace(base, engine="fake", fake_delay=0.0)
            node_env = {"PYTHONPATH": checkout_pythonpath()}
            if not push:
                # After the stack's own settings, which always name its Pushgateway.
                node_env["TTS_PUSHGATEWAY_URL"] = ""
            events = EventLog(client_app(settings)).start()
            tag = uuid.uuid4().hex[:6]
            size, metadata = object_figures(tag)
            bench = Bench(
                stack=stack,
                settings=settings,
                node_settings=node_settings,
                node_env=node_env,
                plan=plan,
                events=events,
                object_bytes=size,
                metadata=metadata,
                tag=tag,
            )
            runs: dict[str, list[dict[str, Any]]] = {name: [] for name in SCENARIOS}
            try:
                # Not measured: a fresh SeaweedFS is slower for its first writes (it grows its
                # volumes), which would fall on whichever scenario uploads first.
                for name in SCENARIOS:
                    bench.run(name, WARMUP_ROUND, jobs=min(plan.jobs, WARMUP_JOBS))
                for round_no in range(plan.rounds):
                    # A rotating order: no scenario always runs first (or after the same one).
                    shift = round_no % len(SCENARIOS)
                    for name in SCENARIOS[shift:] + SCENARIOS[:shift]:
                        runs[name].append(bench.run(name, round_no))
            finally:
                events.stop()
        finally:
            stack.down()
    scenarios = {name: summarize(r) for name, r in runs.items()}
    # Other work on the machine: the 1-minute load average before the stack and at the end.
    load = {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2)}
    return {
        "machine": {**machine(), "load_average_1m": load},
        "plan": {
            "jobs": plan.jobs,
            "rounds": plan.rounds,
            "concurrency": plan.concurrency,
            "object_bytes": size,
            "push": push,
        },
        "scenarios": scenarios,
        "ratios": ratios(scenarios),
        "goal_pipeline_vs_s3": GOAL,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="150 jobs x 6 rounds (~3 min)")
    parser.add_argument("--jobs", type=int, help="jobs per scenario and round")
    parser.add_argument("--rounds", type=int, help="rounds (each runs every scenario)")
    parser.add_argument("--concurrency", type=int, help="pool processes per node (2)")
    parser.add_argument("--no-push", action="store_true", help="no Pushgateway, no pushing")
    parser.add_argument("--out", type=Path, default=Path("bench-results/plumbing.json"))
    args = parser.parse_args(argv)
    plan = PLANS["quick" if args.quick else "full"]
    plan = Plan(
        jobs=args.jobs or plan.jobs,
        rounds=args.rounds or plan.rounds,
        concurrency=args.concurrency or plan.concurrency,
    )
    report = run(plan, push=not args.no_push)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(format_table(report))
    print(f"-> {args.out}")
    return 1 if any(s["failed"] for s in report["scenarios"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
