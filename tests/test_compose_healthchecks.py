"""The Compose healthchecks run against the project's real servers, outside containers: the
worker's (the image's own CMD started as is, then the healthcheck's exact shell command) and
the HTTP paths of the Pushgateway, Prometheus and queue exporter checks."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from core.settings import Settings
from tests.support.helpers import wait_until

ROOT = Path(__file__).resolve().parent.parent
SERVICES = yaml.safe_load((ROOT / "compose" / "docker-compose.yml").read_text(encoding="utf-8"))[
    "services"
]


def image_cmd() -> list[str]:
    """The Dockerfile's CMD, which the worker containers run."""
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    found = re.search(r"^CMD (\[.*\])$", text, flags=re.MULTILINE)
    assert found is not None
    cmd: list[str] = yaml.safe_load(found.group(1))
    return cmd


def shell_check(service: str) -> str:
    """A CMD-SHELL healthcheck as the container's shell gets it: Compose turns $$ into $."""
    kind, command = SERVICES[service]["healthcheck"]["test"]
    assert kind == "CMD-SHELL"
    return str(command).replace("$$", "$")


def bin_path() -> str:
    # celery from the venv, as it is on PATH in the image.
    return f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"


@pytest.mark.integration
def test_worker_healthcheck_passes_on_a_running_node_and_fails_without_one(
    settings: Settings, tmp_path: Path
) -> None:
    env = {
        **os.environ,
        **settings.to_env(),
        "TTS_ENGINE": "fake",
        "PATH": bin_path(),
        # Docker sets HOSTNAME to the container's hostname, which Celery's default node name
        # (celery@%h) uses too.
        "HOSTNAME": socket.gethostname(),
        "TTS_METRICS_DIR": str(tmp_path / "metrics"),
    }
    check = shell_check("worker")

    def healthy() -> bool:
        result = subprocess.run(["/bin/sh", "-c", check], env=env, timeout=60, check=False)
        return result.returncode == 0

    log = (tmp_path / "worker.log").open("wb")
    worker = subprocess.Popen(image_cmd(), env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until(healthy, timeout=90, interval=1, what="the worker healthcheck to pass")
    finally:
        worker.terminate()
        try:
            worker.wait(timeout=60)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
        log.close()
    assert not healthy(), "the healthcheck passed with no worker running"


@pytest.mark.integration
@pytest.mark.parametrize(
    ("service", "port_of"),
    [
        ("pushgateway", "pushgateway"),
        ("prometheus", "prometheus"),
        ("queue-exporter", "exporter"),
    ],
)
def test_http_healthchecks_answer_on_the_projects_servers(
    stack: Any, service: str, port_of: str
) -> None:
    # The path the container probes on its own port, asked of the same server here.
    probe = re.search(
        r"http://127\.0\.0\.1:\d+(/[^'\"\s]*)", " ".join(SERVICES[service]["healthcheck"]["test"])
    )
    assert probe is not None
    port = getattr(stack.layout.ports, port_of)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{probe.group(1)}", timeout=10) as resp:
        assert resp.status == 200
