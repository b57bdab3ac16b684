"""`tts-batch doctor`: is everything the batches need up and reachable, and if not, what fixes it.

One function per check, each returning `Check` rows (the worker check one per node). `run_checks`
runs them side by side, each in a daemon thread bounded by a deadline: a server that accepts a
connection and never answers costs that check its deadline, never the whole report, and nothing
here raises.
"""

from __future__ import annotations

import base64
import shutil
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from core.settings import Settings

# Each network call's own timeout, and each check's deadline (a check may make a few calls).
CALL_SECONDS = 2.0
CHECK_SECONDS = 6.0
# How long live workers get to answer ping (on the same machine they answer in milliseconds).
PING_SECONDS = 1.0
# Below this much free space a filesystem fails: a night's batch of WAVs is gigabytes.
MIN_FREE_BYTES = 1 << 30
UP = "`tts-batch up`"
# Voices listed per worker in the table; `tts-batch speakers` lists them all.
VOICES_SHOWN = 8
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


@dataclass(frozen=True)
class Check:
    """One line of the report: what was checked, whether it passed, what was seen, the fix."""

    check: str
    ok: bool
    detail: str
    fix: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Targets:
    """Where the checked services are: the settings' URLs plus what Settings does not name."""

    settings: Settings
    prometheus_url: str
    flower_url: str
    flower_auth: tuple[str, str] | None
    audio_dir: Path
    min_free_bytes: int = MIN_FREE_BYTES


CheckFn = Callable[[Targets], list[Check]]


def hide_password(url: str) -> str:
    """`url` with its password (if any) replaced by ***."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        user = parts.username or ""
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
        return urlunsplit(parts._replace(netloc=f"{user}:***@{host}{port}"))
    except ValueError:
        return "(unparsable URL)"


def fix_for(url: str, setting: str) -> str:
    """The fix for a service that does not answer: the local stack's `up`, or the setting
    (`setting`: an environment variable, or "--option URL")."""
    try:
        host = urlsplit(url).hostname or ""
    except ValueError:
        host = ""
    if host in LOOPBACK:
        how = f"pass {setting}" if setting.startswith("--") else f"set {setting}"
        return f"is the stack up? {UP} (or {how})"
    return f"check {setting} and that {host or url} is reachable"


def check_redis(t: Targets) -> list[Check]:
    from redis.backoff import NoBackoff
    from redis.exceptions import AuthenticationError, RedisError
    from redis.retry import Retry

    from core.redis_conn import connect

    url = t.settings.broker_url
    shown = hide_password(url)
    try:
        client = connect(
            t.settings,
            url,
            socket_timeout=CALL_SECONDS,
            socket_connect_timeout=CALL_SECONDS,
            retry=Retry(NoBackoff(), 0),
        )
        try:
            client.ping()
        finally:
            client.close()
    except AuthenticationError as exc:
        return [
            Check("redis", False, f"{shown}: {_line(exc)}", "fix the password in TTS_BROKER_URL")
        ]
    except (RedisError, OSError, ValueError) as exc:
        return [Check("redis", False, f"{shown}: {_line(exc)}", fix_for(url, "TTS_BROKER_URL"))]
    return [Check("redis", True, f"{shown} answers ping")]


def check_s3(t: Targets) -> list[Check]:
    """The bucket exists (created, as `submit` would, when allowed) and a probe object can be
    written, read back and deleted with these keys."""
    from botocore.exceptions import BotoCoreError, ClientError

    from core.errors import TTSError
    from core.storage import AudioStore

    s = t.settings
    where = f"{s.s3_endpoint or 'AWS'} bucket {s.s3_bucket}"
    if not s.s3_access_key or not s.s3_secret_key:
        keys = f"set TTS_S3_ACCESS_KEY and TTS_S3_SECRET_KEY, or {UP}"
        return [Check("s3", False, f"{where}: no S3 keys", keys)]
    store = AudioStore.from_settings(s, call_seconds=CALL_SECONDS, attempts=1)
    key = f"doctor/probe-{uuid.uuid4().hex}"
    try:
        store.ensure_bucket(create=s.s3_create_bucket)
        store.put(key, b"doctor", fmt="bin", metadata={})
        if store.get(key) != b"doctor":
            return [Check("s3", False, f"{where}: probe object read back altered", "")]
        store.delete(key)
    except (TTSError, BotoCoreError, ClientError, OSError) as exc:
        fix = fix_for(s.s3_endpoint or "https://s3.amazonaws.com", "TTS_S3_ENDPOINT")
        if "credential" in str(exc).lower() or "denied" in str(exc).lower():
            fix = "check TTS_S3_ACCESS_KEY / TTS_S3_SECRET_KEY"
        return [Check("s3", False, f"{where}: {_line(exc)}", fix)]
    finally:
        store.close()
    return [Check("s3", True, f"{where}: write, read back and delete ok")]


def check_pushgateway(t: Targets) -> list[Check]:
    url = t.settings.pushgateway_url.rstrip("/")
    return [_http_check("pushgateway", f"{url}/-/healthy", fix_for(url, "TTS_PUSHGATEWAY_URL"))]


def check_prometheus(t: Targets) -> list[Check]:
    url = t.prometheus_url.rstrip("/")
    return [_http_check("prometheus", f"{url}/-/ready", fix_for(url, "--prometheus URL"))]


def check_flower(t: Targets) -> list[Check]:
    """Flower's health, then its login: /healthcheck answers anyone, its API only the login."""
    url = t.flower_url.rstrip("/")
    fix = fix_for(url, "--flower URL")
    health = _http_check("flower", f"{url}/healthcheck", fix)
    if not health.ok:
        return [health]
    login = _http_check("flower", f"{url}/api/workers", fix, auth=t.flower_auth)
    if not login.ok:
        return [login]
    who = f" (login {t.flower_auth[0]})" if t.flower_auth else ""
    return [Check("flower", True, f"{url} healthy{who}")]


def check_workers(t: Targets) -> list[Check]:
    """Nodes that answer Celery's ping, each with the engine, model and voices it reports
    through the `tts_engine` remote-control command ("unknown" when a node has no such
    command, as older workers do not)."""
    from producer.sender import client_app

    app = client_app(t.settings)
    app.conf.broker_connection_retry = False
    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=0, timeout=CALL_SECONDS)
            # Without a destination, ping waits its whole timeout for nodes it cannot know of.
            pings = app.control.ping(timeout=PING_SECONDS, connection=conn) or []
            nodes = sorted(node for reply in pings for node in reply)
            engines = _engine_replies(app, conn, nodes) if nodes else {}
    except Exception as exc:  # kombu and redis raise many kinds; all mean the same here
        fix = fix_for(t.settings.broker_url, "TTS_BROKER_URL")
        return [Check("workers", False, f"cannot ask the workers: {_line(exc)}", fix)]
    finally:
        app.close()
    if not nodes:
        fix = f"{UP} (starts worker-1), or run `tts-batch worker` on a worker machine"
        return [Check("workers", False, "no worker answers ping", fix)]
    return [Check(f"worker {node}", True, _describe_engine(engines.get(node))) for node in nodes]


def _engine_replies(app: Any, conn: Any, nodes: list[str]) -> dict[str, dict[str, Any]]:
    # Every node answers, if only with an error: done when all have, not at the timeout.
    replies = app.control.broadcast(
        "tts_engine",
        reply=True,
        destination=nodes,
        limit=len(nodes),
        timeout=CALL_SECONDS,
        connection=conn,
    )
    found: dict[str, dict[str, Any]] = {}
    for reply in replies or []:
        for node, answer in reply.items():
            # A node without the command answers {"error": "KeyError('tts_engine')"}.
            if isinstance(answer, dict) and "engine" in answer:
                found[node] = answer
    return found


def _describe_engine(info: dict[str, Any] | None) -> str:
    """One line from a `tts_engine` reply: {"engine", "model" (a CosyVoice node's model
    directory, else None), "model_id", "speakers" (ids), "aliases" (alias -> id)}."""
    if info is None:
        return "online; engine unknown (the node does not answer `tts_engine`)"
    speakers = [str(s) for s in info.get("speakers") or []]
    aliases = info.get("aliases") or {}
    alias_of = {str(v): str(k) for k, v in aliases.items()} if isinstance(aliases, dict) else {}
    named = [f"{alias_of[s]} ({s})" if s in alias_of else s for s in speakers]
    shown = ", ".join(named[:VOICES_SHOWN]) or "none"
    more = f" and {len(named) - VOICES_SHOWN} more" if len(named) > VOICES_SHOWN else ""
    model = " ".join(str(m) for m in (info.get("model_id"), info.get("model")) if m) or "-"
    return f"online; engine {info.get('engine')}, model {model}; voices {shown}{more}"


def check_model_dir(t: Targets) -> list[Check]:
    """A CosyVoice model directory, present and complete, when this machine's engine needs one."""
    s = t.settings
    if s.engine != "cosyvoice":
        return [Check("model dir", True, f"not needed by engine {s.engine}")]
    from core.errors import ConfigError
    from worker.engines.cosyvoice.model_dir import check_model_dir as check_dir

    try:
        path = check_dir(s.model_dir)
    except ConfigError as exc:
        fix = "`make install-cosyvoice`, then set TTS_MODEL_DIR to the model's absolute path"
        return [Check("model dir", False, _line(exc), fix)]
    return [Check("model dir", True, f"{path}: every model file present")]


def check_disk(t: Targets) -> list[Check]:
    """Free space where fetched audio, the workers' metric files and the stack's state go."""
    s = t.settings
    metrics = s.metrics_dir or str(Path(tempfile.gettempdir()) / "tts-batch-metrics")
    places = {"audio": t.audio_dir, "metrics": Path(metrics), "stack state": Path(s.stack_dir)}
    out = []
    for what, path in places.items():
        existing = _existing_parent(path)
        try:
            free = shutil.disk_usage(existing).free
        except OSError as exc:
            out.append(Check(f"disk ({what})", False, f"{path}: {_line(exc)}", ""))
            continue
        detail = f"{path}: {free / 2**30:.1f} GiB free"
        if free < t.min_free_bytes:
            need = t.min_free_bytes / 2**30
            fix = f"free space on the filesystem of {existing} (at least {need:g} GiB)"
            out.append(Check(f"disk ({what})", False, detail, fix))
        else:
            out.append(Check(f"disk ({what})", True, detail))
    return out


ALL_CHECKS: tuple[tuple[str, CheckFn], ...] = (
    ("redis", check_redis),
    ("s3", check_s3),
    ("pushgateway", check_pushgateway),
    ("prometheus", check_prometheus),
    ("flower", check_flower),
    ("workers", check_workers),
    ("model dir", check_model_dir),
    ("disk", check_disk),
)


def run_checks(
    targets: Targets,
    checks: Sequence[tuple[str, CheckFn]] = ALL_CHECKS,
    *,
    deadline: float = CHECK_SECONDS,
) -> list[Check]:
    """Every check, side by side, in the order given; one that overruns `deadline` or raises
    fails with that said. Daemon threads: a hung call never keeps the process alive."""
    results: dict[str, list[Check]] = {}
    threads = []
    for name, fn in checks:

        def run(name: str = name, fn: CheckFn = fn) -> None:
            try:
                results[name] = fn(targets)
            except Exception as exc:  # a check must report, never take the doctor down
                results[name] = [Check(name, False, f"check failed: {_line(exc)}", "")]

        thread = threading.Thread(target=run, name=f"doctor-{name}", daemon=True)
        thread.start()
        threads.append((name, thread))
    out: list[Check] = []
    end = time.monotonic() + deadline
    for name, thread in threads:
        thread.join(timeout=max(0.0, end - time.monotonic()))
        got = results.get(name)
        if got is None:
            got = [Check(name, False, f"no answer within {deadline:g} s", "")]
        out.extend(got)
    return out


def _http_check(name: str, url: str, fix: str, *, auth: tuple[str, str] | None = None) -> Check:
    request = urllib.request.Request(url)
    if auth is not None:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=CALL_SECONDS) as response:
            status = response.status
    except urllib.error.HTTPError as exc:
        if exc.code == 401:
            fix = "use the login in STACK_DIR/credentials.json (flower_user, flower_password)"
            return Check(name, False, f"{url}: login refused (401)", fix)
        return Check(name, False, f"{url}: HTTP {exc.code}", fix)
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return Check(name, False, f"{url}: {_line(reason)}", fix)
    if status != 200:
        return Check(name, False, f"{url}: HTTP {status}", fix)
    return Check(name, True, f"{url} healthy")


def _existing_parent(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path("/")


def _line(exc: object) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
