"""One settings object for producer and worker, read from the environment once.

Every name is `TTS_` + the field name in upper case. Defaults point at the local stack that
`tts-batch up` starts (its own ports, so it never clashes with services on the standard ones).
Secrets (S3 keys, Redis password inside the URL) come from the environment or from a `*_FILE`
variable naming a file; never from code. (The CLI and `Producer.from_env` also fall back to the
local stack's credentials file: devstack.credentials, its only reader.)
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from core.errors import ConfigError

# The seven speaker ids of CosyVoice-300M-SFT; the espeak and fake engines use the same names so
# that one job file works with every engine.
COSYVOICE_SFT_SPEAKERS = ("中文女", "中文男", "日语男", "粤语女", "英文女", "英文男", "韩语女")

# Dev-stack defaults. The ports of the local stack (devstack/): the standard port + 10000, so
# a system Redis on 6379 or a Prometheus on 9090 is never touched. The service URLs below
# default to them, so that a clone works with `tts-batch up` and no TTS_* variable; production
# sets every URL.
LOCAL_PORTS = {
    "redis": 16379,
    "s3": 18333,
    "pushgateway": 19091,
    "prometheus": 19090,
    "flower": 15555,
}


def _default_stack_dir() -> str:
    return str(Path.cwd() / ".tts-stack")


@dataclass(frozen=True)
class Settings:
    """Every TTS_* setting, in three groups: production settings; the local stack's state
    folder (a dev-stack default); and test knobs, which a production deployment leaves unset."""

    # --- Production settings (service URLs default to the local stack: see LOCAL_PORTS) ---
    broker_url: str = f"redis://127.0.0.1:{LOCAL_PORTS['redis']}/0"
    # CA bundle for a `rediss://` broker whose certificate is not signed by a system CA.
    redis_tls_ca_file: str = ""
    # Empty means: the broker URL.
    result_backend: str = ""
    s3_endpoint: str = f"http://127.0.0.1:{LOCAL_PORTS['s3']}"
    s3_region: str = "us-east-1"
    s3_bucket: str = "tts-audio"
    s3_access_key: str = field(default="", repr=False)
    s3_secret_key: str = field(default="", repr=False)
    s3_create_bucket: bool = True
    # Empty disables pushing (tasks still run).
    pushgateway_url: str = f"http://127.0.0.1:{LOCAL_PORTS['pushgateway']}"
    engine: str = "espeak"
    model_dir: str = ""
    # CosyVoice speed levers: upstream, exact (the default) or fast (worker.engines.cosyvoice
    # .presets). Part of the engine identity, so presets never share cached audio.
    cosyvoice_preset: str = "exact"
    # 0 means: the machine's cores divided among the worker processes.
    threads: int = 0
    # Pool processes per worker node when jobs run one per process (prefork); a batched node
    # (effective engine batch > 1) is one process whatever this says (core.delivery).
    concurrency: int = 2
    # Jobs one worker process holds and runs at once, decoded together by an engine that
    # batches; 0 = the engine's default (core.delivery.AUTO_ENGINE_BATCH), 1 = one job per
    # process (prefork pool).
    engine_batch: int = 0
    # The most a batching engine's scheduler waits for a batch to fill before a step.
    engine_batch_wait_ms: int = 50
    # A batching engine admits no job that would take the process past this RSS; 0 = no limit.
    engine_rss_budget_mb: int = 0
    max_chars: int = 500
    max_batch_rows: int = 100_000
    speakers: tuple[str, ...] = COSYVOICE_SFT_SPEAKERS
    default_format: str = "wav"
    # A lexicon file (CSV, TSV or JSON; docs/lexicon.md) every worker applies to every job,
    # after a batch's own lexicon; empty: none. Its digest is part of the content key.
    lexicon: str = ""
    # Batch state (progress, results, dead letters) lives this long after the last write.
    batch_ttl_seconds: int = 7 * 24 * 3600
    # Time limits of one job: base + per character of text (soft), + grace (hard). The broker's
    # visibility timeout is derived from the longest allowed job, so a slow job is never
    # redelivered while it still runs.
    task_time_base_seconds: float = 120.0
    task_time_per_char_seconds: float = 6.0
    task_time_grace_seconds: float = 60.0
    max_retries: int = 5
    retry_base_seconds: float = 2.0
    # Deliveries that ended with the worker process lost before a job is dead-lettered.
    max_redeliveries: int = 2
    # A job synthesizing a content key holds a lease this long, renewed while it works; a job
    # with the same key waits for the object instead of synthesizing it twice.
    lease_seconds: float = 30.0
    # A producer claims each job before sending it and keeps its claims alive this long,
    # renewed while it sends; the claims of a producer that died are taken over by a
    # resubmission once this has passed (core.batch_state.BatchState.claim_sends).
    send_lease_seconds: float = 30.0
    # 0 derives the broker's visibility timeout from the time limits (core.delivery); fault
    # tests set a short one.
    visibility_timeout: int = 0
    # Where each worker node keeps its processes' metric files (one folder per node name; a node
    # restarted under its name resumes its counts). Empty: <system temp dir>/tts-batch-metrics.
    metrics_dir: str = ""
    # A node pushes its group at least this often (its pool processes' counts reach the
    # Pushgateway within this, and push_time_seconds stays fresh).
    metrics_push_seconds: float = 2.0
    # Jobs a prefork pool process runs before it is replaced (Celery's
    # worker_max_tasks_per_child; a guard against slow leaks); 0 = never.
    max_tasks_per_child: int = 0
    # How often a worker node looks for jobs that started, have no outcome and whose message
    # exists nowhere any more (queue, unacked set): it records them as failed `worker_lost`
    # after two looks (worker/parent/reconciler.py). 0 = never.
    reconcile_seconds: float = 60.0
    # How long a starting worker waits for Redis to answer before it exits (EX_UNAVAILABLE);
    # refused credentials end the start at once (worker.parent.preflight).
    startup_timeout_seconds: float = 60.0

    # --- Dev-stack default: the local stack's state folder (data, logs, pids, credentials) ---
    stack_dir: str = field(default_factory=_default_stack_dir)

    # --- Test knobs: not for production. The fake engine's seconds of sleep per synthesis,
    # and a folder where it drops a marker file (named after its pid) when a synthesis starts.
    fake_delay: float = 0.0
    fake_marker_dir: str = ""
    # A folder where the pipeline drops a marker `<point>-<pid>-<ns>` at each fault point
    # (worker/fault_points.py) and then sleeps `fault_point_pause` seconds, so that a test can
    # kill a process at a known step.
    fault_point_dir: str = ""
    fault_point_pause: float = 0.0

    @property
    def visibility_timeout_seconds(self) -> int:
        """The broker's visibility timeout (the rule: core.delivery)."""
        from core.delivery import visibility_timeout_seconds

        return visibility_timeout_seconds(self)

    @property
    def effective_engine_batch(self) -> int:
        """Jobs one worker process runs at once (the rule: core.delivery)."""
        from core.delivery import effective_engine_batch

        return effective_engine_batch(self)

    @property
    def results_url(self) -> str:
        return self.result_backend or self.broker_url

    def __repr__(self) -> str:
        # Settings end up in tracebacks and test reports: no password of a URL in them (keys
        # are left out by repr=False).
        shown = []
        for f in fields(self):
            if f.repr:
                value = getattr(self, f.name)
                if isinstance(value, str) and "://" in value:
                    value = mask_url(value)
                shown.append(f"{f.name}={value!r}")
        return f"Settings({', '.join(shown)})"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Build settings from `TTS_*` variables (and `TTS_*_FILE` for secrets)."""
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for f in fields(cls):
            raw = _lookup(env, f.name)
            if raw is None:
                continue
            values[f.name] = _parse(f.name, raw, type_name=str(f.type))
        settings = cls(**values)  # type: ignore[arg-type]
        from core.delivery import check_engine_batch, check_visibility_timeout

        check_engine_batch(settings)
        check_visibility_timeout(settings)
        return settings

    def to_env(self) -> dict[str, str]:
        """The environment that reproduces these settings in a child process."""
        env: dict[str, str] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, tuple):
                text = ",".join(value)
            elif isinstance(value, bool):
                text = "true" if value else "false"
            else:
                text = str(value)
            env["TTS_" + f.name.upper()] = text
        return env


def mask_url(url: str) -> str:
    """The URL with its password, if any, replaced by ***."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


def _lookup(env: Mapping[str, str], name: str) -> str | None:
    key = "TTS_" + name.upper()
    if key in env:
        return env[key]
    file_key = key + "_FILE"
    if file_key in env:
        try:
            return Path(env[file_key]).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"{file_key}: cannot read {env[file_key]!r}: {exc}") from exc
    return None


def _parse(name: str, raw: str, *, type_name: str) -> object:
    key = "TTS_" + name.upper()
    if type_name == "bool":
        lowered = raw.strip().lower()
        if lowered in {"1", "true", "yes", "on"}:
            return True
        if lowered in {"0", "false", "no", "off", ""}:
            return False
        raise ConfigError(f"{key}: expected true or false, got {raw!r}")
    if type_name in {"int", "float"}:
        try:
            number = int(raw) if type_name == "int" else float(raw)
        except ValueError:
            raise ConfigError(f"{key}: expected a {type_name}, got {raw!r}") from None
        if number < 0:
            raise ConfigError(f"{key}: must not be negative, got {raw!r}")
        return number
    if type_name.startswith("tuple"):
        items = tuple(item.strip() for item in raw.split(",") if item.strip())
        if not items:
            raise ConfigError(f"{key}: expected a comma-separated list, got {raw!r}")
        return items
    return raw.strip()
