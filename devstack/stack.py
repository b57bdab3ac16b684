"""The local stack without Docker: start, find, check and stop its servers as processes.

Used by `tts-batch up` / `down` / `ps` and by the integration-test harness::

    stack = LocalStack(StackLayout(tmp_path, ports=StackPorts.from_base(21000)))
    stack.up(["redis", "s3", "pushgateway"])
    settings = stack.settings()   # a Settings pointing at this stack
    stack.down()

All state (data, logs, pid files, generated config and credentials) lives in the state folder.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from core.delivery import CELERY_APP, QUEUE
from core.errors import StackError
from core.exit_codes import describe
from core.settings import Settings
from devstack.credentials import StackCredentials, load_or_create_credentials
from devstack.layout import StackLayout, StackPorts
from devstack.procs import (
    exclusive,
    exit_code,
    find_running,
    first_busy_port,
    is_alive,
    log_since_start,
    log_tail,
    read_pid,
    spawn,
    stop_pid,
    wait_until,
)
from devstack.services import (
    APP_SERVICES,
    BASE_SERVICES,
    WORKER_PREFIX,
    Service,
    ServiceContext,
    build_service,
    redis_url,
)

__all__ = [
    "LocalStack",
    "ServiceStatus",
    "StackError",
    "StackLayout",
    "StackPorts",
    "format_statuses",
]

State = Literal["running", "stopped", "skipped"]
# How a worker that refuses to start says why, in one line (worker.engine_host.fatal).
WORKER_LINE_PREFIX = "tts-batch worker: "


@dataclass(frozen=True)
class ServiceStatus:
    """One service as last seen: `started` says whether this call launched it."""

    name: str
    state: State
    pid: int | None = None
    url: str = ""
    started: bool = False
    ready_seconds: float | None = None
    detail: str = ""


class LocalStack:
    """A supervisor for one state folder's servers (see the module docstring)."""

    def __init__(
        self,
        layout: StackLayout,
        *,
        app: str = CELERY_APP,
        queue: str = QUEUE,
        base_settings: Settings | None = None,
        extra_env: Mapping[str, str] | None = None,
        redis_password: bool = False,
        ready_timeout: float = 60.0,
        scrape_interval: str = "5s",
    ) -> None:
        """`app` is the Celery app module of Flower and the workers; `base_settings` supplies
        every setting the stack does not own (engine, limits...); `extra_env` is added to
        every child's environment after the settings."""
        self.layout = layout
        self.app = app
        self.queue = queue
        self.base_settings = base_settings
        self.extra_env = dict(extra_env or {})
        self.redis_password = redis_password
        self.ready_timeout = ready_timeout
        self.scrape_interval = scrape_interval
        self.concurrency = 2
        self._lock_depth = 0

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        app: str = CELERY_APP,
        extra_env: Mapping[str, str] | None = None,
        redis_password: bool = False,
    ) -> LocalStack:
        """The stack `tts-batch up` manages: `settings.stack_dir`, with the Redis, S3 and
        Pushgateway ports taken from the settings' URLs (the other ports: the folder's
        ports.json when it has one, else StackPorts.local()).
        """
        state_dir = Path(settings.stack_dir)
        try:
            base = StackPorts.saved(state_dir) or StackPorts.local()
        except ValueError as exc:
            raise StackError(str(exc)) from exc
        ports = replace(
            base,
            redis=_port_of(settings.broker_url, base.redis),
            s3=_port_of(settings.s3_endpoint, base.s3),
            pushgateway=_port_of(settings.pushgateway_url, base.pushgateway),
        )
        layout = StackLayout(state_dir, ports=ports)
        return cls(
            layout,
            app=app,
            base_settings=settings,
            extra_env=extra_env,
            redis_password=redis_password,
        )

    def settings(self) -> Settings:
        """Settings pointing at this stack: broker, S3 endpoint and keys, Pushgateway."""
        return self._stack_settings(self._context(self._creds()))

    def up(
        self, services: Sequence[str] | None = None, *, workers: int = 1, concurrency: int = 2
    ) -> dict[str, ServiceStatus]:
        """Start what is not running yet and wait until every service is ready.

        `services` defaults to all of them plus `workers` Celery workers (`worker-1`...);
        services whose module is missing (Flower and workers without the app, the queue
        exporter) come back as "skipped". Raises StackError naming the service, with its log
        tail, if one cannot start or is not ready within `ready_timeout`.
        """
        self.concurrency = concurrency
        names = list(services) if services is not None else self.default_services(workers)
        result: dict[str, ServiceStatus] = {}
        with self._exclusive():
            # Two phases: Flower and workers connect to Redis at start-up.
            for phase in (_base_first(names), _app_last(names)):
                result.update(self._start_all(phase))
        return result

    @staticmethod
    def default_services(workers: int = 1) -> list[str]:
        """Every service name, with `workers` worker entries."""
        workers_names = [f"{WORKER_PREFIX}{i}" for i in range(1, workers + 1)]
        return [*BASE_SERVICES, *APP_SERVICES, *workers_names]

    def down(self) -> dict[str, ServiceStatus]:
        """Stop every service that has a pid file, workers first, Redis last."""
        names = list(reversed(self._known_names()))
        # In waves, each stopped in parallel (a worker's warm shutdown takes ~2 s): consumers
        # of Redis and S3 first, so that they never see their servers vanish mid-task.
        waves = [_app_last(names), [n for n in _base_first(names) if n != "redis"], ["redis"]]
        out: dict[str, ServiceStatus] = {}
        with self._exclusive(create=False), ThreadPoolExecutor(max_workers=8) as pool:
            for wave in waves:
                out.update(zip(wave, pool.map(self.stop, wave), strict=True))
        return out

    def status(self) -> dict[str, ServiceStatus]:
        """What runs now, per pid file and command line (stale pid files are removed)."""
        creds = self._creds(create=False)
        out: dict[str, ServiceStatus] = {}
        for name in self._known_names(extra=self.default_services()):
            service = build_service(name, self._context(creds))
            pid = find_running(service.spec, self.layout.dirs)
            if pid is None and service.missing:
                out[name] = ServiceStatus(name, "skipped", detail=service.missing)
                continue
            state: State = "running" if pid else "stopped"
            out[name] = ServiceStatus(name, state, pid=pid, url=service.url)
        return out

    def start(self, name: str) -> ServiceStatus:
        """Start one service (if not running) and wait until it is ready."""
        with self._exclusive():
            return self._start_all([name])[name]

    def stop(self, name: str) -> ServiceStatus:
        """Stop one service by its pid file: SIGTERM, wait, SIGKILL; remove the pid file."""
        with self._exclusive(create=False):
            return self._stop(name)

    def _stop(self, name: str) -> ServiceStatus:
        dirs = self.layout.dirs
        pid = read_pid(dirs, name)
        service = build_service(name, self._context(self._creds(create=False)))
        detail = ""
        if pid is not None and is_alive(pid):
            if find_running(service.spec, dirs) == pid:
                killed = stop_pid(pid, grace=service.grace)
                detail = "killed after grace period" if killed else "terminated"
            else:
                detail = f"pid {pid} belongs to another process: left alone"
        dirs.pid_file(name).unlink(missing_ok=True)
        return ServiceStatus(name, "stopped", pid=pid, detail=detail)

    def kill(self, name: str, sig: signal.Signals = signal.SIGKILL, *, group: bool = False) -> int:
        """Send `sig` to a running service (its whole process group if `group`); return the pid.

        For fault tests: no waiting and no clean-up; the next start or status sees the stale
        pid file. Raises StackError if the service is not running.
        """
        service = build_service(name, self._context(self._creds(create=False)))
        pid = find_running(service.spec, self.layout.dirs)
        if pid is None:
            raise StackError(f"{name} is not running")
        if group:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
        return pid

    def restart(self, name: str) -> ServiceStatus:
        """Stop, then start one service, keeping its data."""
        with self._exclusive():
            self.stop(name)
            return self.start(name)

    # -- internals ---------------------------------------------------------------------

    @contextmanager
    def _exclusive(self, *, create: bool = True) -> Iterator[None]:
        """One supervisor at a time per state folder: two concurrent `up`s would start twins.

        Re-entrant within this object (restart calls stop and start; down stops in threads).
        """
        if self._lock_depth or (not create and not self.layout.state_dir.exists()):
            yield
            return
        with exclusive(self.layout.state_dir / "stack.lock"):
            self._lock_depth += 1
            try:
                yield
            finally:
                self._lock_depth -= 1

    def _creds(self, *, create: bool = True) -> StackCredentials:
        # Inspecting or stopping a stack must not create a state folder where there is none,
        # nor change its credentials (stop runs in parallel threads).
        if not create and not self.layout.credentials_file.exists():
            return StackCredentials("", "", "", "")
        return load_or_create_credentials(
            self.layout.credentials_file, redis_password=self.redis_password and create
        )

    def _context(self, creds: StackCredentials) -> ServiceContext:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        ctx = ServiceContext(
            layout=self.layout,
            creds=creds,
            env=env,
            app=self.app,
            queue=self.queue,
            concurrency=self.concurrency,
            scrape_interval=self.scrape_interval,
        )
        settings_env = self._stack_settings(ctx).to_env()
        return replace(ctx, env={**env, **settings_env, **self.extra_env})

    def _stack_settings(self, ctx: ServiceContext) -> Settings:
        host, ports = self.layout.host, self.layout.ports
        base = self.base_settings or Settings()
        return replace(
            base,
            # The workers' metric files, one folder per node, live with the stack's state.
            metrics_dir=base.metrics_dir or str(self.layout.state_dir / "metrics"),
            broker_url=redis_url(ctx),
            result_backend="",
            s3_endpoint=f"http://{host}:{ports.s3}",
            s3_access_key=ctx.creds.access_key,
            s3_secret_key=ctx.creds.secret_key,
            pushgateway_url=f"http://{host}:{ports.pushgateway}",
            stack_dir=str(self.layout.state_dir),
        )

    def _known_names(self, extra: Iterable[str] = ()) -> list[str]:
        """Service names in start order: the defaults, then any other pid file's name."""
        found = sorted(p.stem for p in self.layout.dirs.pids.glob("*.pid"))
        names = [*BASE_SERVICES, *APP_SERVICES]
        workers = sorted({n for n in [*found, *extra] if n.startswith(WORKER_PREFIX)}, key=_nat)
        return [*names, *workers, *(n for n in found if n not in names and n not in workers)]

    def _start_all(self, names: Sequence[str]) -> dict[str, ServiceStatus]:
        ctx = self._context(self._creds())
        dirs = self.layout.dirs
        out: dict[str, ServiceStatus] = {}
        # Services found running are checked for readiness too: a previous `up` may have been
        # interrupted before they were.
        waiting: dict[str, tuple[Service, int, float]] = {}
        to_start: list[Service] = []
        for name in names:
            service = build_service(name, ctx)
            pid = find_running(service.spec, dirs)
            if pid is not None:
                waiting[name] = (service, pid, time.monotonic())
            elif service.missing:
                out[name] = ServiceStatus(name, "skipped", detail=service.missing)
            else:
                to_start.append(service)
        # Every port checked before anything is spawned: a clash leaves nothing half-started.
        for service in to_start:
            busy = self._busy_port(service)
            if busy is not None:
                raise StackError(
                    f"{service.spec.name}: port {busy} is already in use by another process"
                )
        started: set[str] = set()
        for service in to_start:
            service.prepare()
            waiting[service.spec.name] = (service, spawn(service.spec, dirs), time.monotonic())
            started.add(service.spec.name)
        ready_seconds = self._wait_ready(waiting, started=started)
        for name, (service, pid, _) in waiting.items():
            out[name] = ServiceStatus(
                name,
                "running",
                pid=pid,
                url=service.url,
                started=name in started,
                ready_seconds=ready_seconds[name] if name in started else None,
            )
        return {name: out[name] for name in names}

    def _busy_port(self, service: Service) -> int | None:
        """A port of `service` that stays taken for a few seconds, or None.

        The grace covers a just-stopped server's sockets; once seen (not reproduced since),
        a restarted Flower's port was refused right after its predecessor had exited.
        """
        busy: int | None = None

        def free() -> bool:
            nonlocal busy
            busy = first_busy_port(self.layout.host, service.ports)
            return busy is None

        wait_until(free, timeout=3.0, interval=0.2)
        return busy

    def _wait_ready(
        self, launched: Mapping[str, tuple[Service, int, float]], *, started: set[str]
    ) -> dict[str, float]:
        """Poll every service together; seconds from spawn to ready, per service.

        On failure the failed services, if this call started them, are stopped again (the
        others are left to `down`), and StackError says why.
        """
        ready: dict[str, float] = {}
        failed: dict[str, str] = {}

        def check() -> bool:
            for name, (service, pid, t0) in launched.items():
                if name in ready or name in failed:
                    continue
                if service.ready():
                    ready[name] = round(time.monotonic() - t0, 3)
                elif not is_alive(pid):
                    failed[name] = _exited(pid)
            return len(ready) + len(failed) == len(launched) or bool(failed)

        if not wait_until(check, timeout=self.ready_timeout):
            for name in launched.keys() - ready.keys():
                failed[name] = f"not ready after {self.ready_timeout}s"
        if not failed:
            return ready
        for name in failed.keys() & started:
            self.stop(name)
        raise StackError("\n".join(self._failure(name, why) for name, why in failed.items()))

    def _failure(self, name: str, why: str) -> str:
        """What to say of a service that failed: a worker's own one-line reason when it gave one
        (`tts-batch worker: ...`, before exiting with a code of core.exit_codes), else the tail
        of its log."""
        log_file = self.layout.dirs.log_file(name)
        logged = log_since_start(self.layout.dirs, name)
        said = [line for line in logged.splitlines() if line.startswith(WORKER_LINE_PREFIX)]
        if said and name.startswith(WORKER_PREFIX):
            return f"{name} {why}: {said[-1]} (log {log_file})"
        return f"{name} {why}; log {log_file}:\n{log_tail(self.layout.dirs, name)}"


def _exited(pid: int) -> str:
    code = exit_code(pid)
    if code is None:
        return "exited during start-up"
    meaning = describe(code)
    return f"exited during start-up with code {code}" + (f" ({meaning})" if meaning else "")


def format_statuses(statuses: Mapping[str, ServiceStatus]) -> str:
    """A table for the CLI: name, state, pid, where, and start-up seconds when just started."""
    rows = []
    for st in statuses.values():
        ready = f"ready in {st.ready_seconds:.2f}s" if st.ready_seconds is not None else ""
        pid = str(st.pid) if st.pid else "-"
        rows.append(f"{st.name:<15} {st.state:<8} {pid:>8}  {st.url or st.detail}  {ready}")
    return "\n".join(row.rstrip() for row in rows)


def _port_of(url: str, default: int) -> int:
    try:
        return urlsplit(url).port or default
    except ValueError:
        return default


def _base_first(names: Sequence[str]) -> list[str]:
    return [n for n in names if n not in APP_SERVICES and not n.startswith(WORKER_PREFIX)]


def _app_last(names: Sequence[str]) -> list[str]:
    return [n for n in names if n in APP_SERVICES or n.startswith(WORKER_PREFIX)]


def _nat(name: str) -> tuple[str, int]:
    prefix, _, number = name.rpartition("-")
    return (prefix, int(number) if number.isdigit() else 0)
