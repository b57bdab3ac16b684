"""Batched CosyVoice through the whole pipeline: throughput and latency against batch size.

    python -m benchmarks.batch_bench --quick --out bench-results/batch.json   # < 15 min
    python -m benchmarks.batch_bench --out FILE                               # the full grid
    python -m benchmarks.batch_bench --smoke --out /tmp/batch-smoke.json  # the harness, 2-3 min

For each preset (TTS_COSYVOICE_PRESET), number of worker processes (Celery nodes) and batch
size B (TTS_ENGINE_BATCH, jobs a worker process holds and decodes together), on fresh nodes of
a local stack of its own (Redis, S3, Pushgateway on free loopback ports; never eager mode):

0. once per preset, before any measurement, a node loads the model and is stopped: a first
   load exports the preset's ONNX graphs, whose leftovers would swell one config's RSS;
1. start the nodes and wait until each has loaded the model (not timed);
2. warm up: one short job per node (opens the ONNX Runtime sessions);
3. alone: a short job on the idle worker, enqueue to result;
4. burst: a batch of mixed-length jobs (2-30 s of audio; fewer and shorter with --quick),
   enqueued at once: aggregate RTF = wall seconds / audio seconds from the first enqueue to the
   last result (lower is better, 1 = real time), each job's latency (enqueue to result, p50 and
   p99), the nodes' peak RSS (the largest VmHWM of their processes, reset after the warm-up so
   that the load is not in it), and from the Pushgateway speech tokens/s and rows per decode
   step when the engine pushes them;
5. busy: each process holds max(B-1, 1) long jobs (so at B >= 2 one slot is free; at B = 1 the
   short job waits for a long one, as it does without batching); a short job then goes in:
   its latency against the alone figure (issue 10's goal: p99 at most 3x);
6. the nodes are SIGKILLed (the busy phase's long jobs need not finish), Redis is flushed.

Every job text is new (random words picked by text-token count: the random model makes 0.4 s
of audio per text token), so nothing is served from the content cache. Figures, not tests:
compare rows of one run.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import redis

from benchmarks.batch_nodes import (
    BATCH_ENV,
    BATCH_SIZE,
    BATCH_WAIT_ENV,
    RSS_BUDGET_ENV,
    SPEECH_TOKENS,
    TASKS,
    NodeGroup,
    batching_available,
    cores,
    flush,
    node_concurrency,
    pushed_samples,
    queue_depth,
)
from benchmarks.batch_report import (
    Config,
    add_ratios,
    counter_rate,
    failed_configs,
    format_table,
    histogram_mean,
    report_layout,
    short_job_figures,
    summarize_burst,
    write_plot,
)
from benchmarks.batch_texts import TokenCounter, count_words, text_of_tokens, tokens_for
from core.settings import Settings
from devstack.stack import LocalStack, StackLayout, StackPorts
from producer.api import BatchHandle, JobResult, Producer

DEFAULT_OUT = Path("bench-results/batch.json")
SPEAKER, LANG = "英文女", "en"
# How often results are read while jobs run: the latency resolution.
POLL_SECONDS = 0.1


@dataclass(frozen=True)
class Plan:
    """What one run measures. `lengths` (seconds of audio) are cycled to make a burst of
    max(min_jobs, B x processes) jobs, so that every slot of every process has a job."""

    presets: tuple[str, ...]
    batch_sizes: tuple[int, ...]
    processes: tuple[int, ...]
    lengths: tuple[float, ...]
    min_jobs: int
    probes: int
    short_seconds: float
    long_seconds: float
    model_size: str

    def burst_lengths(self, config: Config) -> list[float]:
        count = max(self.min_jobs, config.batch * config.processes)
        return [self.lengths[i % len(self.lengths)] for i in range(count)]


BATCH_SIZES = (1, 2, 4, 8, 16)
PLANS = {
    # 2-30 s, in an order where every prefix is mixed; mean 8.8 s.
    "full": Plan(
        presets=("exact", "fast"),
        batch_sizes=BATCH_SIZES,
        processes=(1, 2),
        lengths=(2, 8, 3, 20, 2, 5, 30, 2, 12, 3, 4, 15),
        min_jobs=12,
        probes=3,
        short_seconds=2,
        long_seconds=20,
        model_size="full",
    ),
    # Under 15 minutes on 2 cores: one process, B up to 8 (16 is in the full grid), bursts of
    # max(4, B) jobs of 2-4 s (mean 2.6 s), one short job each way. Measured on 2026-12-03
    # (an AVX-512 Xeon without AMX): the exact preset's B = 1-8 took 11 minutes with bursts of
    # 6-8 jobs of 2-5 s, so the bursts are smaller here.
    "quick": Plan(
        presets=("exact", "fast"),
        batch_sizes=(1, 2, 4, 8),
        processes=(1,),
        lengths=(2, 3, 2, 4, 2, 3, 2, 3),
        min_jobs=4,
        probes=1,
        short_seconds=2,
        long_seconds=4,
        model_size="full",
    ),
    # The harness on the tiny model: every phase, in 2-3 minutes.
    "smoke": Plan(
        presets=("exact", "fast"),
        batch_sizes=(1, 2),
        processes=(1,),
        lengths=(1.5, 3),
        min_jobs=2,
        probes=1,
        short_seconds=1.5,
        long_seconds=3,
        model_size="tiny",
    ),
}


@dataclass
class Bench:
    """What every configuration shares: the stack, the base settings, the text source."""

    stack: LocalStack
    settings: Settings
    node_settings: Settings
    count: TokenCounter
    run_tag: str
    plan: Plan
    extra_env: Mapping[str, str]
    # Every text enqueued in this run: a repeat would be served from the content cache.
    used_texts: set[str] = field(default_factory=set)

    @cached_property
    def producer(self) -> Producer:
        return Producer(self.settings)


# --- jobs -----------------------------------------------------------------------------------


class JobTexts:
    """Fresh rows for one configuration: ids and texts never seen before in this run."""

    def __init__(self, bench: Bench, config: Config) -> None:
        self._bench = bench
        tag = f"{config.preset}-{config.processes}-{config.batch}"
        self._rng = random.Random(f"{bench.run_tag}-{tag}")
        self._n = 0

    def rows(self, lengths: Sequence[float]) -> list[dict[str, Any]]:
        return [self.row(seconds) for seconds in lengths]

    def row(self, seconds: float) -> dict[str, Any]:
        """A job of about `seconds` of audio (the id says how long it was meant to be)."""
        self._n += 1
        for _ in range(100):
            text = text_of_tokens(tokens_for(seconds), rng=self._rng, count=self._bench.count)
            if text not in self._bench.used_texts:
                break
        else:
            raise RuntimeError(f"no new text of {seconds} s left: use longer short jobs")
        self._bench.used_texts.add(text)
        return {"id": f"j{self._n}-{seconds:g}s", "text": text, "speaker": SPEAKER, "lang": LANG}


def wait_for_rows(
    handle: BatchHandle, *, total: int, started: float, timeout: float
) -> dict[str, tuple[float, JobResult]]:
    """Row id -> (seconds from `started` to when its result was first seen, the result)."""
    seen: dict[str, tuple[float, JobResult]] = {}
    while True:
        results = [r for r in handle.results() if r.status != "pending"]
        now = time.monotonic() - started
        for result in results:
            seen.setdefault(result.row_id, (now, result))
        if len(seen) >= total:
            return seen
        if now > timeout:
            raise TimeoutError(f"{total - len(seen)} of {total} jobs not done after {now:.0f} s")
        time.sleep(POLL_SECONDS)


def timeout_for(audio_seconds: float) -> float:
    """Generous: upstream's code on a busy machine runs at RTF ~15."""
    return 300 + 20 * audio_seconds


def run_jobs(
    bench: Bench, rows: list[dict[str, Any]], *, audio_seconds: float
) -> dict[str, tuple[float, JobResult]]:
    """Enqueue `rows` (about `audio_seconds` of audio) as one batch; wait for every result."""
    started = time.monotonic()
    handle = bench.producer.submit_batch(rows)
    return wait_for_rows(
        handle, total=len(rows), started=started, timeout=timeout_for(audio_seconds)
    )


def run_short(bench: Bench, texts: JobTexts) -> float:
    """One short job's latency, enqueue to result."""
    seconds = bench.plan.short_seconds
    outcome = run_jobs(bench, [texts.row(seconds)], audio_seconds=seconds)
    [(latency, result)] = outcome.values()
    if not result.ok:
        raise RuntimeError(f"short job failed: {result.reason}: {result.error}")
    return latency


# --- the phases -----------------------------------------------------------------------------


def warm_up(bench: Bench, nodes: NodeGroup, texts: JobTexts) -> int:
    """Short jobs until every node has run one (a node opens its sessions on its first job);
    returns how many jobs ran."""
    unseen, ran = set(nodes.hostnames), 0
    for _ in range(5):
        rows = texts.rows([bench.plan.short_seconds] * len(nodes.names))
        handle = bench.producer.submit_batch(rows)
        wait_for_rows(handle, total=len(rows), started=time.monotonic(), timeout=600)
        unseen -= _workers_of(bench, handle)
        ran += len(rows)
        if not unseen:
            break
    else:
        print(f"  warning: no warm-up job reached {sorted(unseen)}", file=sys.stderr)
    return ran


def _workers_of(bench: Bench, handle: BatchHandle) -> set[str]:
    """Which nodes ran a batch's jobs (the result records name them)."""
    from core.batch_state import BatchState

    client = redis.Redis.from_url(bench.settings.broker_url)
    state = BatchState(client, handle.batch_id, ttl_seconds=bench.settings.batch_ttl_seconds)
    return {str(record.get("worker")) for _, _, record in state.iter_rows() if record}


def alone(bench: Bench, texts: JobTexts) -> list[float]:
    """A short job's latency on the idle worker, `probes` times one after the other."""
    return [run_short(bench, texts) for _ in range(bench.plan.probes)]


def burst(bench: Bench, config: Config, texts: JobTexts) -> dict[str, Any]:
    """The mixed batch, all enqueued at once."""
    lengths = bench.plan.burst_lengths(config)
    outcome = run_jobs(bench, texts.rows(lengths), audio_seconds=sum(lengths))
    done = [(seconds, result) for seconds, result in outcome.values() if result.ok]
    figures = summarize_burst(
        [seconds for seconds, _ in done],
        audio_seconds=sum(result.audio_seconds or 0.0 for _, result in done),
        wall_seconds=max(seconds for seconds, _ in outcome.values()),
        failed=len(outcome) - len(done),
    )
    figures["cached"] = sum(result.cached for _, result in done)
    if figures["cached"] or figures["failed"]:
        print(f"  warning: {figures['cached']} cached, {figures['failed']} failed", file=sys.stderr)
    return figures


def busy(bench: Bench, config: Config, texts: JobTexts) -> list[float]:
    """A short job's latency while each process holds max(B-1, 1) long jobs (topped up before
    each probe, once the queue is empty: every long job is in a worker, none waits in line)."""
    client = redis.Redis.from_url(bench.settings.broker_url)
    target = max(config.batch - 1, 1) * config.processes
    background: list[BatchHandle] = []
    latencies = []
    for _ in range(bench.plan.probes):
        running = sum(handle.progress().pending for handle in background)
        if target > running:
            rows = texts.rows([bench.plan.long_seconds] * (target - running))
            background.append(bench.producer.submit_batch(rows))
        _wait(
            lambda: queue_depth(client) == 0,
            timeout=timeout_for(bench.plan.long_seconds * target),
            what="long jobs taken",
        )
        latencies.append(run_short(bench, texts))
    return latencies


def _wait(check: Callable[[], bool], *, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not after {timeout} s")
        time.sleep(POLL_SECONDS)


# --- engine metrics from the Pushgateway ------------------------------------------------------


def engine_counters(bench: Bench, nodes: NodeGroup, *, tasks_done: int) -> dict[str, Any]:
    """The nodes' pushed speech tokens and batch-size histogram, once their pushes count
    `tasks_done` finished tasks (pushes run off the task's path, a moment later); empty
    readings when the engine does not push them or the pushes do not arrive in time."""
    samples: dict[str, float] = {}

    def pushed() -> bool:
        nonlocal samples
        samples = pushed_samples(bench.settings.pushgateway_url, nodes.hostnames)
        return samples.get(TASKS, 0) >= tasks_done

    try:
        _wait(pushed, timeout=20, what="metrics pushed")
    except TimeoutError:
        return {"tokens": None, "rows": None}
    rows = (samples.get(f"{BATCH_SIZE}_sum"), samples.get(f"{BATCH_SIZE}_count"))
    return {
        "tokens": samples.get(SPEECH_TOKENS),
        "rows": rows if None not in rows else None,
    }


# --- one configuration ----------------------------------------------------------------------


def run_config(bench: Bench, config: Config) -> dict[str, Any]:
    """Fresh nodes, the five phases, the nodes killed and Redis flushed whatever happens."""
    settings = replace(
        bench.node_settings,
        cosyvoice_preset=config.preset,
        threads=max(1, cores() // config.processes),
    )
    env = {**bench.extra_env, BATCH_ENV: str(config.batch)}
    tag = f"{bench.run_tag}-{config.preset}-p{config.processes}-b{config.batch}"
    starting = time.monotonic()
    nodes = NodeGroup.start(
        bench.stack,
        settings,
        tag=tag,
        processes=config.processes,
        env=env,
        concurrency=node_concurrency(config.batch),
    )
    start_seconds = round(time.monotonic() - starting, 1)
    try:
        return {**measure(bench, config, nodes), "start_seconds": start_seconds}
    finally:
        nodes.kill()
        flush(bench.settings)


def measure(bench: Bench, config: Config, nodes: NodeGroup) -> dict[str, Any]:
    texts = JobTexts(bench, config)
    done = warm_up(bench, nodes, texts)
    load_rss = nodes.peak_rss_mb()
    nodes.reset_peak_rss()
    alone_seconds = alone(bench, texts)
    done += len(alone_seconds)
    before = engine_counters(bench, nodes, tasks_done=done)
    figures = burst(bench, config, texts)
    rss = nodes.peak_rss_mb()  # a high-water mark since the reset: alone and the burst
    after = engine_counters(bench, nodes, tasks_done=done + figures["jobs"])
    try:
        busy_seconds = busy(bench, config, texts)
    except (TimeoutError, RuntimeError) as exc:  # the burst's figures still stand
        busy_seconds = []
        figures["busy_error"] = f"{type(exc).__name__}: {exc}"[:300]
    figures.update(short_job_figures(alone_seconds, busy_seconds))
    figures.update(
        {
            **rss_figures(rss),
            "load_rss_mb": max((mb for node in load_rss for mb in node), default=None),
            "speech_tokens_per_second": counter_rate(
                before["tokens"], after["tokens"], figures["wall_seconds"]
            ),
            "mean_rows_per_step": histogram_mean(before["rows"], after["rows"]),
            "alone_seconds": alone_seconds,
            "busy_seconds": busy_seconds,
        }
    )
    return figures


def rss_figures(by_node: list[list[float]]) -> dict[str, Any]:
    """The largest process's peak (what one process needs, and what B changes) and each
    node's. Pool children share the parent's weights copy-on-write: their figures overlap,
    so they are not added up; separate nodes hold separate copies."""
    node_peaks = [max(node, default=0.0) for node in by_node]
    return {"peak_rss_mb": max(node_peaks, default=None), "peak_rss_mb_by_node": node_peaks}


# --- the run --------------------------------------------------------------------------------


def configs(plan: Plan) -> list[Config]:
    return [
        Config(preset, processes, batch)
        for preset in plan.presets
        for processes in plan.processes
        for batch in plan.batch_sizes
    ]


@contextmanager
def local_stack(base: Settings) -> Iterator[LocalStack]:
    """Redis, S3 and a Pushgateway on free ports, in a temporary folder, stopped at the end."""
    with tempfile.TemporaryDirectory(prefix="tts-batch-bench-") as state:
        stack = LocalStack(
            StackLayout(Path(state), ports=StackPorts.find_free()), base_settings=base
        )
        try:
            stack.up(["redis", "s3", "pushgateway"])
            yield stack
        finally:
            stack.down()


def run(
    plan: Plan,
    *,
    engine: str,
    model_dir: Path | None,
    extra_env: Mapping[str, str],
    out: Path,
    plot: Path,
    mode: str,
) -> dict[Config, dict[str, Any]]:
    report: dict[str, Any] = {
        "benchmark": "batch_bench",
        "mode": mode,
        "engine": engine,
        "model": str(model_dir) if model_dir else None,
        "machine": _machine(),
        "batching_merged": batching_available(),
        "plan": asdict(plan),
        "env": dict(extra_env),
    }
    print(f"machine: {json.dumps(report['machine'])}", flush=True)
    if not report["batching_merged"]:
        print(f"note: the worker has no {BATCH_ENV} yet: every B runs like B=1", flush=True)
    base = Settings(batch_ttl_seconds=3600)
    node_settings = replace(base, engine=engine, model_dir=str(model_dir or ""))
    results: dict[Config, dict[str, Any]] = {}
    started = time.monotonic()
    with local_stack(base) as stack:
        bench = Bench(
            stack=stack,
            settings=stack.settings(),
            node_settings=node_settings,
            count=_counter(engine),
            run_tag=uuid.uuid4().hex[:6],
            plan=plan,
            extra_env=extra_env,
        )
        if engine == "cosyvoice":
            prepare_exports(bench)
        for config in configs(plan):
            results[config] = _run_one(bench, config)
            add_ratios(results)
            report["presets"] = report_layout(results)
            _write_json(out, report)
    print(format_table(results), flush=True)
    write_plot(results, plot)
    report["total_seconds"] = round(time.monotonic() - started, 1)
    _write_json(out, report)
    print(f"-> {out}, {plot} (total {report['total_seconds'] / 60:.1f} min)", flush=True)
    return results


def prepare_exports(bench: Bench) -> None:
    """One node start per preset before any measurement: a model's first load exports the
    preset's ONNX graphs into the model directory, and the memory that leaves resident would
    swell the peak RSS of whichever configuration came first."""
    for preset in bench.plan.presets:
        started = time.monotonic()
        settings = replace(bench.node_settings, cosyvoice_preset=preset, threads=1)
        nodes = NodeGroup.start(
            bench.stack, settings, tag=f"{bench.run_tag}-{preset}-prepare", processes=1,
            env={**bench.extra_env, BATCH_ENV: "1"}, concurrency=1,
        )  # fmt: skip
        nodes.kill()
        print(f"{preset}: model loaded once, exports ready ({time.monotonic() - started:.0f} s)")


def _run_one(bench: Bench, config: Config) -> dict[str, Any]:
    started = time.monotonic()
    try:
        figures = run_config(bench, config)
    except Exception as exc:  # one failed config must not lose the others' figures
        figures = {"error": f"{type(exc).__name__}: {exc}"[:500]}
    figures["config_seconds"] = round(time.monotonic() - started, 1)
    print(
        f"{config.preset} procs={config.processes} B={config.batch}: {_brief(figures)}", flush=True
    )
    return figures


def _brief(figures: Mapping[str, Any]) -> str:
    if "error" in figures:
        return str(figures["error"])
    keys = ("aggregate_rtf", "p50_seconds", "p99_seconds", "short_busy_vs_alone", "peak_rss_mb")
    shown = ", ".join(f"{key} {figures.get(key)}" for key in keys)
    return f"{shown} ({figures['config_seconds']} s)"


def _counter(engine: str) -> TokenCounter:
    if engine != "cosyvoice":
        return count_words
    from benchmarks.batch_texts import whisper_counter

    return whisper_counter()


def _machine() -> dict[str, Any]:
    from benchmarks.cosyvoice_bench import machine

    return machine()


def _write_json(path: Path, report: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


# --- command line ---------------------------------------------------------------------------


def model_directory(args: argparse.Namespace, plan: Plan, scratch: Path) -> Path | None:
    """The model to load: --model-dir (the full-size random model is built there if missing),
    cosyvoice_bench's default full-size one, or a tiny one in `scratch` for --smoke."""
    if args.engine != "cosyvoice":
        return None
    from benchmarks.cosyvoice_bench import DEFAULT_DIR, ensure_model

    if plan.model_size == "tiny" and args.model_dir is None:
        # In a child: importing the CosyVoice classes here would turn on their DEBUG logging.
        subprocess.run(
            [sys.executable, "-m", "worker.engines.cosyvoice.random_model", "make-random",
             "--size", "tiny", str(scratch / "tiny")],
            check=True,
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        return scratch / "tiny"
    directory = (args.model_dir or DEFAULT_DIR).resolve()
    ensure_model(directory)
    return directory


def plan_from(args: argparse.Namespace) -> Plan:
    plan = PLANS["smoke" if args.smoke else "quick" if args.quick else "full"]
    changes: dict[str, Any] = {}
    if args.presets:
        changes["presets"] = tuple(args.presets.split(","))
    if args.batch_sizes:
        changes["batch_sizes"] = tuple(int(b) for b in args.batch_sizes.split(","))
    if args.processes:
        changes["processes"] = tuple(int(p) for p in args.processes.split(","))
    if args.jobs:
        changes["min_jobs"] = args.jobs
    if args.probes:
        changes["probes"] = args.probes
    if args.engine != "cosyvoice":
        changes["presets"] = (args.engine,)  # presets are CosyVoice's; one row set
    return replace(plan, **changes)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.batch_bench", description=__doc__)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="1 process, short jobs (< 15 min)")
    mode.add_argument("--smoke", action="store_true", help="tiny model, tiny jobs (~2 min)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON file (default %(default)s)")
    p.add_argument("--plot", type=Path, help="PNG file (default: --out with .png)")
    p.add_argument("--presets", help="comma-separated (default exact,fast)")
    p.add_argument("--batch-sizes", help="comma-separated B values (default 1,2,4,8,16)")
    p.add_argument("--processes", help="comma-separated worker processes (default 1,2)")
    p.add_argument("--jobs", type=int, help="at least this many jobs per burst (and B x procs)")
    p.add_argument("--probes", type=int, help="short jobs timed alone and busy, per config")
    p.add_argument("--model-dir", type=Path, help="default /tmp/tts-batch-cosyvoice-full")
    p.add_argument(
        "--engine",
        default="cosyvoice",
        choices=("cosyvoice", "espeak", "fake"),
        help="espeak or fake check the harness without CosyVoice",
    )
    p.add_argument("--wait-ms", type=int, help=f"{BATCH_WAIT_ENV} for the workers")
    p.add_argument("--rss-budget-mb", type=int, help=f"{RSS_BUDGET_ENV} for the workers")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    plan = plan_from(args)
    extra_env = {}
    if args.wait_ms is not None:
        extra_env[BATCH_WAIT_ENV] = str(args.wait_ms)
    if args.rss_budget_mb is not None:
        extra_env[RSS_BUDGET_ENV] = str(args.rss_budget_mb)
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    with tempfile.TemporaryDirectory(prefix="tts-batch-bench-model-") as scratch:
        results = run(
            plan,
            engine=args.engine,
            model_dir=model_directory(args, plan, Path(scratch)),
            extra_env=extra_env,
            out=args.out,
            plot=args.plot or args.out.with_suffix(".png"),
            mode=mode,
        )
    return 1 if failed_configs(results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
