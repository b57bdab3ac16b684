"""The local stack's servers: how each is launched and how its readiness is checked."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import os
import shutil
import socket
import sys
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from core.delivery import CELERY_APP, QUEUE, celery_options, worker_arguments, worker_pool
from core.errors import StackError
from core.settings import Settings
from devstack.credentials import StackCredentials, write_secret
from devstack.layout import StackLayout
from devstack.procs import ProcSpec
from monitoring.generated import compose_dir
from monitoring.prometheus_config import render_prometheus_config

# Services that need nothing but their binary, started first; app services need Redis up.
BASE_SERVICES = ("redis", "s3", "pushgateway", "prometheus", "queue-exporter")
APP_SERVICES = ("flower",)
WORKER_PREFIX = "worker-"
# A bucket and object of the stack's own: S3 is ready when this object can be read back, which
# after a restart takes a few seconds longer than listing buckets does.
PROBE_BUCKET = "tts-stack-probe"
PROBE_KEY = "ready"
EXPORTER_MODULE = "monitoring.queue_exporter"


@dataclass(frozen=True)
class Service:
    """One server of the stack: its process, ports, readiness probe and first-start setup."""

    spec: ProcSpec
    ports: tuple[int, ...]
    url: str
    ready: Callable[[], bool]
    prepare: Callable[[], None] = lambda: None
    # Seconds between SIGTERM and SIGKILL; a worker finishing its task deserves more.
    grace: float = 10.0
    # Why it cannot run here (a Python module not installed); empty when it can.
    missing: str = ""


@dataclass(frozen=True)
class ServiceContext:
    """What every service definition needs to know about the stack it belongs to."""

    layout: StackLayout
    creds: StackCredentials
    env: Mapping[str, str]
    app: str = CELERY_APP
    queue: str = QUEUE
    concurrency: int = 2
    # How often the stack's Prometheus scrapes; tests use 1s to see rates sooner.
    scrape_interval: str = "5s"

    def has_module(self, module: str) -> bool:
        """True if the stack's child processes can import `module`."""
        return module_exists(module, child_pythonpath(self.env))


def build_service(name: str, ctx: ServiceContext) -> Service:
    """The definition of service `name`; see `Service.missing` for whether it can run here."""
    if name.startswith(WORKER_PREFIX):
        return _worker(name, ctx)
    builders: dict[str, Callable[[ServiceContext], Service]] = {
        "redis": _redis,
        "s3": _s3,
        "pushgateway": _pushgateway,
        "prometheus": _prometheus,
        "queue-exporter": _exporter,
        "flower": _flower,
    }
    if name not in builders:
        raise StackError(f"unknown service {name!r}")
    return builders[name](ctx)


def module_exists(module: str, extra_paths: Sequence[str] = ()) -> bool:
    """True if `module` can be imported, here or with `extra_paths` (a child's PYTHONPATH).

    Nothing is imported but parent packages; the module's own top-level code never runs.
    """
    try:
        if importlib.util.find_spec(module) is not None:
            return True
    except ModuleNotFoundError:
        pass
    path: list[str] | None = [*extra_paths, *sys.path]
    for part in module.split("."):
        spec = importlib.machinery.PathFinder.find_spec(part, path)
        if spec is None:
            return False
        path = list(spec.submodule_search_locations or [])
    return True


def child_pythonpath(env: Mapping[str, str]) -> list[str]:
    """The PYTHONPATH entries of a child environment."""
    return [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]


def _missing(ctx: ServiceContext, module: str) -> str:
    return "" if ctx.has_module(module) else f"module {module} not installed"


def executable(name: str) -> str:
    """The path of `name`: next to this Python first (venv scripts), then on PATH."""
    local = Path(sys.executable).parent / name
    if local.exists():
        return str(local)
    found = shutil.which(name)
    if found is None:
        raise StackError(f"{name} not found: run `make install` (scripts/install-system.sh)")
    return found


def redis_url(ctx: ServiceContext) -> str:
    """The broker URL of the stack's Redis, with its password when one is set."""
    auth = f":{ctx.creds.redis_password}@" if ctx.creds.redis_password else ""
    return f"redis://{auth}{ctx.layout.host}:{ctx.layout.ports.redis}/0"


def _redis(ctx: ServiceContext) -> Service:
    host, port = ctx.layout.host, ctx.layout.ports.redis
    data = ctx.layout.data_dir("redis")
    conf = data / "redis.conf"

    def prepare() -> None:
        data.mkdir(parents=True, exist_ok=True)
        # A config file rather than flags keeps the password out of `ps` output.
        lines = [
            f"bind {host}",
            f"port {port}",
            f"dir {data}",
            "appendonly yes",
            "appendfsync everysec",
            # Queued jobs must never be evicted to make room.
            "maxmemory-policy noeviction",
            "daemonize no",
            'logfile ""',
        ]
        if ctx.creds.redis_password:
            lines.append(f"requirepass {ctx.creds.redis_password}")
        write_secret(conf, "\n".join(lines) + "\n")

    def ready() -> bool:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        client = redis.Redis(
            host=host,
            port=port,
            password=ctx.creds.redis_password or None,
            socket_timeout=1.0,
            socket_connect_timeout=1.0,
            # The caller polls; redis-py's own retries would stretch one probe to seconds.
            retry=Retry(NoBackoff(), 0),
        )
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()

    return Service(
        spec=ProcSpec(
            name="redis",
            argv=(executable("redis-server"), str(conf)),
            env=ctx.env,
            # redis-server rewrites its command line to "redis-server HOST:PORT".
            identity=("redis-server", f"{host}:{port}"),
        ),
        ports=(port,),
        url=f"redis://{host}:{port}/0",
        ready=ready,
        prepare=prepare,
    )


def _s3(ctx: ServiceContext) -> Service:
    host, ports = ctx.layout.host, ctx.layout.ports
    data = ctx.layout.data_dir("s3")
    identities = data / "identities.json"
    endpoint = f"http://{host}:{ports.s3}"

    def prepare() -> None:
        (data / "data").mkdir(parents=True, exist_ok=True)
        doc = {
            "identities": [
                {
                    "name": "tts",
                    "credentials": [
                        {"accessKey": ctx.creds.access_key, "secretKey": ctx.creds.secret_key}
                    ],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }
        write_secret(identities, json.dumps(doc))

    def ready() -> bool:
        return s3_round_trip(endpoint, ctx.creds)

    argv = [
        executable("weed"),
        "mini",
        f"-dir={data / 'data'}",
        f"-ip={host}",
        f"-ip.bind={host}",
    ]
    grpc = ports.weed_grpc_ports()
    for part, port in ports.weed_http().items():
        argv += [f"-{part}.port={port}", f"-{part}.port.grpc={grpc[part]}"]
    # Every optional listener off, so that no default port is ever opened.
    argv += [
        "-admin.ui=false",
        "-webdav=false",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        f"-s3.config={identities}",
    ]
    return Service(
        spec=ProcSpec(
            name="s3",
            argv=tuple(argv),
            env=ctx.env,
            identity=("weed", "mini", f"-s3.port={ports.s3}"),
        ),
        ports=ctx.layout.ports.weed_ports(),
        url=endpoint,
        ready=ready,
        prepare=prepare,
    )


def s3_round_trip(endpoint: str, creds: StackCredentials) -> bool:
    """True if the S3 server lists buckets and serves the probe object (written if missing)."""
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError

    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=creds.access_key,
        aws_secret_access_key=creds.secret_key,
        region_name="us-east-1",
        config=Config(
            connect_timeout=1,
            read_timeout=3,
            retries={"max_attempts": 1},
            s3={"addressing_style": "path"},
        ),
    )
    try:
        names = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
        if PROBE_BUCKET not in names:
            client.create_bucket(Bucket=PROBE_BUCKET)
            client.put_object(Bucket=PROBE_BUCKET, Key=PROBE_KEY, Body=b"ok")
        body = client.get_object(Bucket=PROBE_BUCKET, Key=PROBE_KEY)["Body"].read()
        return bool(body == b"ok")
    except (BotoCoreError, ClientError):
        return False
    finally:
        client.close()


def _http_ok(url: str, *, timeout: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return bool(resp.status == 200)
    except (OSError, ValueError):
        return False


def _tcp_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def _pushgateway(ctx: ServiceContext) -> Service:
    host, port = ctx.layout.host, ctx.layout.ports.pushgateway
    data = ctx.layout.data_dir("pushgateway")
    url = f"http://{host}:{port}"
    return Service(
        spec=ProcSpec(
            name="pushgateway",
            argv=(
                executable("prometheus-pushgateway"),
                f"--web.listen-address={host}:{port}",
                # Groups survive a restart, like any other state of the stack.
                f"--persistence.file={data / 'metrics.store'}",
            ),
            env=ctx.env,
            identity=("prometheus-pushgateway", f"--web.listen-address={host}:{port}"),
        ),
        ports=(port,),
        url=url,
        ready=lambda: _http_ok(f"{url}/-/ready"),
        prepare=lambda: data.mkdir(parents=True, exist_ok=True),
    )


def _prometheus(ctx: ServiceContext) -> Service:
    layout = ctx.layout
    host, ports = layout.host, layout.ports
    data = layout.data_dir("prometheus")
    config, rules = data / "prometheus.yml", data / "rules"
    url = f"http://{host}:{ports.prometheus}"

    def prepare() -> None:
        rules.mkdir(parents=True, exist_ok=True)
        # The project's alert rules, copied so that the stack runs the version it started with.
        for rule_file in sorted((compose_dir() / "prometheus" / "rules").glob("*.yml")):
            shutil.copyfile(rule_file, rules / rule_file.name)
        text = render_prometheus_config(
            pushgateway=f"{host}:{ports.pushgateway}",
            flower=f"{host}:{ports.flower}" if ctx.has_module(ctx.app) else None,
            exporter=f"{host}:{ports.exporter}" if ctx.has_module(EXPORTER_MODULE) else None,
            rules_dir=rules,
            scrape_interval=ctx.scrape_interval,
        )
        config.write_text(text, encoding="utf-8")

    return Service(
        spec=ProcSpec(
            name="prometheus",
            argv=(
                executable("prometheus"),
                f"--config.file={config}",
                f"--storage.tsdb.path={data / 'data'}",
                f"--web.listen-address={host}:{ports.prometheus}",
                # Lets the monitoring work reload rules without a restart.
                "--web.enable-lifecycle",
            ),
            env=ctx.env,
            identity=("prometheus", f"--web.listen-address={host}:{ports.prometheus}"),
        ),
        ports=(ports.prometheus,),
        url=url,
        ready=lambda: _http_ok(f"{url}/-/ready"),
        prepare=prepare,
    )


def _exporter(ctx: ServiceContext) -> Service:
    host, port = ctx.layout.host, ctx.layout.ports.exporter
    return Service(
        spec=ProcSpec(
            name="queue-exporter",
            argv=(sys.executable, "-m", EXPORTER_MODULE, "--port", str(port)),
            env=ctx.env,
            identity=(EXPORTER_MODULE, f"--port {port}"),
        ),
        ports=(port,),
        url=f"http://{host}:{port}/metrics",
        ready=lambda: _tcp_open(host, port),
        missing=_missing(ctx, EXPORTER_MODULE),
    )


# Flower's worker list drops a node this long after its last heartbeat (Celery sends one every
# 2 s), and its task list shows these columns.
FLOWER_PURGE_OFFLINE_SECONDS = 30
FLOWER_TASK_COLUMNS = "args,state,worker,received,runtime,retries,exception,uuid"


def _flower(ctx: ServiceContext) -> Service:
    host, port = ctx.layout.host, ctx.layout.ports.flower
    url = f"http://{host}:{port}"
    # Flower reads FLOWER_* variables as options: the password stays out of `ps` output.
    env = {**ctx.env, "FLOWER_BASIC_AUTH": f"{ctx.creds.flower_user}:{ctx.creds.flower_password}"}
    return Service(
        spec=ProcSpec(
            name="flower",
            argv=(
                executable("celery"),
                "-A",
                ctx.app,
                "flower",
                f"--address={host}",
                f"--port={port}",
                # Nothing saved between runs: a restarted Flower shows the tasks it sees anew
                # (the batch state in Redis is the record, not Flower's database).
                "--persistent=False",
                # A stopped worker leaves the list 30 s after its last heartbeat.
                f"--purge_offline_workers={FLOWER_PURGE_OFFLINE_SECONDS}",
                # args first: the task label (batch, row, speaker, text start; see
                # core.contract.task_label) is what tells batches apart; the name is always
                # tts.synthesize.
                f"--tasks_columns={FLOWER_TASK_COLUMNS}",
            ),
            env=env,
            identity=("celery", "flower", f"--port={port}"),
        ),
        ports=(port,),
        url=url,
        ready=lambda: _http_ok(f"{url}/healthcheck"),
        missing=_missing(ctx, ctx.app),
    )


def worker_node_name(name: str) -> str:
    """The Celery node name of stack worker `name`: `name@HOST`, %h expanded here (as Celery
    would) so that `ps`, `recover` and Flower show, and readiness pings, the real name."""
    return f"{name}@{socket.gethostname()}"


def _worker(name: str, ctx: ServiceContext) -> Service:
    hostname = worker_node_name(name)
    # Prefork with `concurrency` processes, or one batched process with B task threads: the
    # node's own settings decide (core.delivery.worker_pool), as celeryconfig.py does.
    # The node's own settings: its broker may not be the stack's Redis (a TLS one in tests).
    settings = Settings.from_env(ctx.env)
    pool = worker_pool(settings, processes=ctx.concurrency)
    return Service(
        spec=ProcSpec(
            name=name,
            argv=(
                executable("celery"),
                *worker_arguments(app=ctx.app, queue=ctx.queue, pool=pool, hostname=hostname),
            ),
            env=ctx.env,
            # `name@` rather than the full node name: a worker started as `name@%h` by an older
            # version is still recognised (Celery expands %h to the same host name).
            identity=("celery", " worker ", f"--hostname {name}@"),
        ),
        ports=(),
        url=hostname,
        # The node itself answers: ready once it consumes, however long its log has grown.
        ready=lambda: node_answers_ping(settings, hostname),
        grace=30.0,
        missing=_missing(ctx, ctx.app),
    )


def node_answers_ping(settings: Settings, node: str, *, timeout: float = 1.0) -> bool:
    """True if Celery node `node` answers a ping sent through `settings`' broker (and its TLS
    options) within `timeout`."""
    from celery import Celery
    from kombu.exceptions import KombuError
    from redis.exceptions import RedisError

    app = Celery("tts_stack_probe", set_as_current=False)
    app.conf.update(**celery_options(settings))
    # One attempt: the caller polls, and a Redis that is down must not stall a probe.
    app.conf.broker_connection_retry = False
    app.conf.broker_connection_max_retries = 0
    app.conf.broker_transport_options = {
        **app.conf.broker_transport_options,
        "socket_connect_timeout": timeout,
        "max_retries": 0,
    }
    try:
        with app.connection_for_write() as conn:
            replies = app.control.ping(destination=[node], timeout=timeout, connection=conn)
    except (OSError, KombuError, RedisError):
        return False
    finally:
        app.close()
    return any(node in reply for reply in replies or [])
