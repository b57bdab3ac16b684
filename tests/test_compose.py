"""The Docker Compose stack, checked without a Docker engine: structure, mounts, targets."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

COMPOSE = Path(__file__).resolve().parent.parent / "compose"


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def with_defaults(text: str) -> str:
    """Compose's ${VAR:-default} replaced by its default, as when VAR is unset."""
    return re.sub(r"\$\{[A-Z0-9_]+:-([^}]*)\}", r"\1", text)


def test_services_and_mounts_exist() -> None:
    services = load(COMPOSE / "docker-compose.yml")["services"]
    assert set(services) >= {
        "redis",
        "s3",
        "pushgateway",
        "queue-exporter",
        "worker",
        "flower",
        "prometheus",
        "grafana",
    }
    # Every bind mount's source is in the repository (with ${VAR:-default}, the default):
    # nothing the user must create by hand before `up`.
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = with_defaults(volume).split(":")[0]
            if not source.startswith("."):
                continue  # a named volume
            assert (COMPOSE / source).exists(), f"{name}: {source} is not in the repository"


def test_redis_keeps_jobs() -> None:
    command = load(COMPOSE / "docker-compose.yml")["services"]["redis"]["command"]
    assert "--appendonly yes" in command
    assert "--maxmemory-policy noeviction" in command
    assert "--requirepass" in command


def test_prometheus_targets_are_compose_services() -> None:
    services = load(COMPOSE / "docker-compose.yml")["services"]
    config = load(COMPOSE / "prometheus" / "prometheus.yml")
    targets = [
        target
        for job in config["scrape_configs"]
        for static in job.get("static_configs", [])
        for target in static["targets"]
    ]
    assert targets
    for target in targets:
        host, _, port = target.partition(":")
        assert host in services, f"{target}: no service {host}"
        assert port.isdigit()
    pushgateway = next(j for j in config["scrape_configs"] if "pushgateway:9091" in str(j))
    assert pushgateway["honor_labels"] is True


def test_no_secret_in_the_compose_file() -> None:
    text = (COMPOSE / "docker-compose.yml").read_text(encoding="utf-8")
    for line in text.splitlines():
        if "PASSWORD" in line or "SECRET" in line:
            assert "${" in line or "$$" in line or line.strip().startswith("#"), line


# What each image ships to run a healthcheck with. redis:7.0 is Debian-based (redis-cli);
# chrislusf/seaweedfs is Alpine (seaweedfs docker/Dockerfile.go_build: `FROM alpine`), the
# prom/* images are built on quay.io/prometheus/busybox and grafana/grafana on Alpine: busybox
# wget in each, and neither curl nor nc is certain. The project's own image is
# python:3.11-slim, which has Python but neither wget nor curl.
TOOLS_BY_IMAGE = {
    "redis:": {"redis-cli"},
    "chrislusf/seaweedfs:": {"wget"},
    "prom/pushgateway:": {"wget"},
    "prom/prometheus:": {"wget"},
    "grafana/grafana:": {"wget"},
}
OWN_IMAGE_TOOLS = {"python", "celery"}


def healthcheck_tool(test: list[str] | str) -> str:
    """The program a healthcheck runs: its first word (CMD) or the shell command's (CMD-SHELL)."""
    if isinstance(test, str):
        return test.split()[0]
    kind, *argv = test
    return (argv[0] if kind == "CMD" else argv[0].split()[0]) if argv else ""


def test_every_service_has_a_healthcheck_with_a_tool_its_image_has() -> None:
    services = load(COMPOSE / "docker-compose.yml")["services"]
    for name, service in services.items():
        check = service.get("healthcheck")
        assert check and check.get("test"), f"{name}: no healthcheck"
        assert check["test"][0] in ("CMD", "CMD-SHELL"), f"{name}: {check['test']}"
        tool = healthcheck_tool(check["test"])
        if "build" in service:
            tools = OWN_IMAGE_TOOLS
        else:
            image = service["image"]
            tools = next(t for prefix, t in TOOLS_BY_IMAGE.items() if image.startswith(prefix))
        assert tool in tools, f"{name}: healthcheck runs {tool!r}, its image has {tools}"


def test_every_dependency_waits_for_healthy() -> None:
    services = load(COMPOSE / "docker-compose.yml")["services"]
    waits = 0
    for name, service in services.items():
        depends = service.get("depends_on", {})
        # The list form means "started", never "healthy".
        assert isinstance(depends, dict), f"{name}: depends_on as a list does not wait"
        for other, rule in depends.items():
            assert rule == {"condition": "service_healthy"}, f"{name} -> {other}: {rule}"
            assert "healthcheck" in services[other], f"{name} waits for {other}: no healthcheck"
            waits += 1
    assert {"redis", "s3", "pushgateway"} <= set(services["worker"]["depends_on"])
    assert waits >= 5


def test_healthchecks_answer_on_the_paths_the_servers_serve() -> None:
    """The HTTP paths probed are the servers' own health endpoints, on the container's port."""
    services = load(COMPOSE / "docker-compose.yml")["services"]
    expected = {
        "s3": "http://127.0.0.1:8333/healthz",
        "pushgateway": "http://127.0.0.1:9091/-/ready",
        "prometheus": "http://127.0.0.1:9090/-/ready",
        "grafana": "http://127.0.0.1:3000/api/health",
        "flower": "http://127.0.0.1:5555/healthcheck",
        "queue-exporter": "http://127.0.0.1:9808/metrics",
    }
    for name, url in expected.items():
        assert url in " ".join(services[name]["healthcheck"]["test"]), name


def test_s3_identities_are_written_from_the_env_at_start() -> None:
    s3 = load(COMPOSE / "docker-compose.yml")["services"]["s3"]
    script = (COMPOSE / "seaweedfs" / "entrypoint.sh").read_text(encoding="utf-8")
    default = re.search(r"SEAWEEDFS_IDENTITIES:-([^}]+)\}", script)
    assert default is not None
    # `weed` reads the file the entrypoint writes.
    assert f"-s3.config={default.group(1)}" in s3["command"]
    mounted = {v.split(":")[1]: v.split(":")[0] for v in s3["volumes"]}
    assert s3["entrypoint"][-1] in mounted
    assert mounted[s3["entrypoint"][-1]] == "./seaweedfs/entrypoint.sh"
    # No identities file to make by hand: none is mounted.
    assert not any("identities" in v for v in s3["volumes"])
    for key in ("TTS_S3_ACCESS_KEY", "TTS_S3_SECRET_KEY"):
        assert "${" + key + ":?" in s3["environment"][key]


def dockerfile_stages() -> list[str]:
    text = (COMPOSE.parent / "Dockerfile").read_text(encoding="utf-8")
    return re.findall(r"^FROM \S+ AS (\S+)$", text, flags=re.MULTILINE)


def test_worker_image_targets_follow_the_engine() -> None:
    services = load(COMPOSE / "docker-compose.yml")["services"]
    stages = dockerfile_stages()
    # A plain `docker build .` gives the small espeak image.
    assert stages[-1] == "espeak"
    assert "cosyvoice" in stages
    target = services["worker"]["build"]["target"]
    assert target == "${TTS_ENGINE:-espeak}"
    for other in ("flower", "queue-exporter"):
        assert services[other]["build"]["target"] == "espeak"
    text = (COMPOSE.parent / "Dockerfile").read_text(encoding="utf-8")
    cosyvoice_build = text[text.index("AS cosyvoice-build") : text.index("AS cosyvoice\n")]
    # The project's pinned CPU runtime, from PyTorch's CPU index.
    assert "scripts/install-cosyvoice.sh /opt/venv" in cosyvoice_build
    assert "download.pytorch.org/whl/cpu" in cosyvoice_build


def test_cosyvoice_model_is_mounted_read_only_where_the_engine_looks() -> None:
    worker = load(COMPOSE / "docker-compose.yml")["services"]["worker"]
    model_dir = worker["environment"]["TTS_MODEL_DIR"]
    # SOURCE:TARGET:MODE, where SOURCE is ${VAR:-default} and holds a colon of its own.
    mounts = [v.rsplit(":", 2) for v in worker["volumes"] if v.count(":") >= 2]
    mounts = [m for m in mounts if m[1] == model_dir]
    assert len(mounts) == 1, worker["volumes"]
    source, _, mode = mounts[0]
    assert mode == "ro"
    assert source.startswith("${TTS_MODEL_HOST_DIR:-")
    # Containers see the host's cores: the thread count is set, not derived.
    assert worker["environment"]["TTS_THREADS"].startswith("${TTS_THREADS:-")


def test_env_example_names_every_variable_the_compose_file_reads() -> None:
    text = (COMPOSE / "docker-compose.yml").read_text(encoding="utf-8")
    # $${NAME} is the container shell's variable, not Compose's.
    used = set(re.findall(r"(?<!\$)\$\{([A-Z0-9_]+)", text))
    example = (COMPOSE / "env.example").read_text(encoding="utf-8")
    named = set(re.findall(r"^([A-Z0-9_]+)=", example, flags=re.MULTILINE))
    assert used <= named, used - named


def compose_config(tmp_path: Path, **env: str) -> dict[str, Any]:
    """`docker-compose config` of a copy of compose/ with a .env holding `env`."""
    copy = tmp_path / "compose"
    shutil.copytree(COMPOSE, copy)
    values = {
        "TTS_REDIS_PASSWORD": "x",
        "TTS_S3_ACCESS_KEY": "a",
        "TTS_S3_SECRET_KEY": "b",
        "GRAFANA_ADMIN_PASSWORD": "y",
        **env,
    }
    (copy / ".env").write_text("".join(f"{k}={v}\n" for k, v in values.items()), encoding="utf-8")
    # Only the .env file speaks: none of the caller's TTS_* variables.
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("TTS_", "GRAFANA_"))}
    result = subprocess.run(
        ["docker-compose", "-f", str(copy / "docker-compose.yml"), "config"],
        capture_output=True,
        text=True,
        env=clean,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    config: dict[str, Any] = yaml.safe_load(result.stdout)
    return config


needs_compose = pytest.mark.skipif(
    shutil.which("docker-compose") is None, reason="docker-compose not installed"
)


@needs_compose
def test_docker_compose_validates(tmp_path: Path) -> None:
    config = compose_config(tmp_path)
    worker = config["services"]["worker"]
    assert worker["build"]["target"] == "espeak"
    # Resolved bind mounts all exist: the default model folder is in the repository.
    for name, service in config["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0] if isinstance(volume, str) else volume["source"]
            if source.startswith("/"):
                assert Path(source).exists(), f"{name}: {source}"


@needs_compose
def test_docker_compose_cosyvoice_option(tmp_path: Path) -> None:
    model = tmp_path / "CosyVoice-300M-SFT"
    model.mkdir()
    config = compose_config(
        tmp_path, TTS_ENGINE="cosyvoice", TTS_MODEL_HOST_DIR=str(model), TTS_THREADS="4"
    )
    worker = config["services"]["worker"]
    assert worker["build"]["target"] == "cosyvoice"
    assert worker["environment"]["TTS_ENGINE"] == "cosyvoice"
    assert worker["environment"]["TTS_THREADS"] == "4"
    assert f"{model}:/models/cosyvoice:ro" in worker["volumes"]
    # Flower and the exporter stay on the small image.
    assert config["services"]["flower"]["build"]["target"] == "espeak"


@needs_compose
def test_docker_compose_refuses_missing_s3_keys(tmp_path: Path) -> None:
    copy = tmp_path / "compose"
    shutil.copytree(COMPOSE, copy)
    (copy / ".env").write_text("TTS_REDIS_PASSWORD=x\nGRAFANA_ADMIN_PASSWORD=y\n", encoding="utf-8")
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("TTS_", "GRAFANA_"))}
    result = subprocess.run(
        ["docker-compose", "-f", str(copy / "docker-compose.yml"), "config", "-q"],
        capture_output=True,
        text=True,
        env=clean,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert "set TTS_S3_ACCESS_KEY in compose/.env" in result.stderr


def test_flower_runs_with_the_local_stacks_options() -> None:
    from devstack.services import FLOWER_PURGE_OFFLINE_SECONDS, FLOWER_TASK_COLUMNS

    command = load(COMPOSE / "docker-compose.yml")["services"]["flower"]["command"]
    assert "--persistent=False" in command
    assert f"--purge_offline_workers={FLOWER_PURGE_OFFLINE_SECONDS}" in command
    assert f"--tasks_columns={FLOWER_TASK_COLUMNS}" in command
