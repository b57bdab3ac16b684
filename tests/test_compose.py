"""The Docker Compose stack, checked without a Docker engine: structure, mounts, targets."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

COMPOSE = Path(__file__).resolve().parent.parent / "compose"


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def test_services_and_mounts_exist() -> None:
    doc = load(COMPOSE / "docker-compose.yml")
    services = doc["services"]
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
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if not source.startswith("."):
                continue  # a named volume
            path = COMPOSE / source
            # Secret files are the user's; an example sits beside each.
            example = path.with_name(path.stem + ".example" + path.suffix)
            assert path.exists() or example.exists(), f"{name}: {source} missing"


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


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose not installed")
def test_docker_compose_validates(tmp_path: Path) -> None:
    env = {**os.environ, "TTS_REDIS_PASSWORD": "x", "GRAFANA_ADMIN_PASSWORD": "y"}
    copy = tmp_path / "compose"
    shutil.copytree(COMPOSE, copy)
    (copy / ".env").write_text("", encoding="utf-8")
    subprocess.run(
        ["docker-compose", "-f", str(copy / "docker-compose.yml"), "config", "-q"],
        check=True,
        env=env,
        timeout=60,
    )
