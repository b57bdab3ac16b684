"""The local stack's credentials file (`STACK_DIR/credentials.json`): its only reader and writer.

`tts-batch up` writes it once per state folder (S3 keys, Flower login, Redis password, mode
0600); the CLI and `Producer.from_env` fall back to it for what the environment leaves out, so
that commands run against the local stack with no TTS_* variables. Workers and services started
by the stack get everything through their environment and never read it.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

from core.errors import ConfigError
from core.settings import Settings


def credentials_path(stack_dir: str) -> Path:
    """Where `tts-batch up` keeps the secrets it generated for the local stack."""
    return Path(stack_dir) / "credentials.json"


def _corrupt(path: Path, exc: Exception) -> ConfigError:
    return ConfigError(
        f"{path}: unreadable stack credentials ({exc}); fix it, or delete it and run "
        "`tts-batch down` then `tts-batch up` to make new ones"
    )


def read_credentials(stack_dir: str) -> dict[str, str]:
    """The credentials file's values; empty when there is none. A corrupt file is a
    ConfigError (one line for the CLI), never silently ignored."""
    return _read(credentials_path(stack_dir)) or {}


def _read(path: Path) -> dict[str, str] | None:
    """The file's values, None when it does not exist; ConfigError when it is corrupt."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise _corrupt(path, exc) from exc
    if not isinstance(data, dict):
        raise _corrupt(path, ValueError("not a JSON object"))
    return {str(k): str(v) for k, v in data.items()}


def local_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Settings from the environment, with what it leaves out taken from the local stack's
    credentials file: the S3 keys, and the Redis password of the default broker URL."""
    env = os.environ if environ is None else environ
    settings = Settings.from_env(env)
    broker_given = "TTS_BROKER_URL" in env or "TTS_BROKER_URL_FILE" in env
    return with_stack_credentials(settings, broker_given=broker_given)


def with_stack_credentials(settings: Settings, *, broker_given: bool) -> Settings:
    """Fill what the environment left out from the local stack's credentials file: the S3
    keys, and the Redis password of the default (local stack) broker URL."""
    if settings.s3_access_key and settings.s3_secret_key and broker_given:
        return settings
    creds = read_credentials(settings.stack_dir)
    if not creds:
        return settings
    broker_url = settings.broker_url
    password = str(creds.get("redis_password") or "")
    if password and not broker_given and urlsplit(broker_url).password is None:
        parts = urlsplit(broker_url)
        broker_url = urlunsplit(
            parts._replace(netloc=f":{quote(password, safe='')}@{parts.netloc}")
        )
    return replace(
        settings,
        broker_url=broker_url,
        s3_access_key=settings.s3_access_key or str(creds.get("access_key", "")),
        s3_secret_key=settings.s3_secret_key or str(creds.get("secret_key", "")),
    )


@dataclass(frozen=True)
class StackCredentials:
    """Secrets generated once per state folder and reused by every later `up`."""

    access_key: str = field(repr=False)
    secret_key: str = field(repr=False)
    flower_user: str
    flower_password: str = field(repr=False)
    redis_password: str = field(default="", repr=False)


def load_or_create_credentials(path: Path, *, redis_password: bool = False) -> StackCredentials:
    """Read the stack's credentials file, creating it (mode 0600) with random secrets if absent.

    A Redis password is added to an existing file when asked for; it is never removed.
    """
    data = _read(path)
    if data is None:
        creds = StackCredentials(
            access_key="TTS" + secrets.token_hex(8).upper(),
            secret_key=secrets.token_urlsafe(30),
            flower_user="tts",
            flower_password=secrets.token_urlsafe(18),
        )
    else:
        try:
            creds = StackCredentials(**data)
        except TypeError as exc:  # a key missing or unknown
            raise _corrupt(path, exc) from exc
        if not (redis_password and not creds.redis_password):
            return creds
    if redis_password and not creds.redis_password:
        creds = StackCredentials(**{**asdict(creds), "redis_password": secrets.token_urlsafe(24)})
    write_secret(path, json.dumps(asdict(creds), indent=2) + "\n")
    return creds


def write_secret(path: Path, text: str) -> None:
    """Write `text` to `path` atomically, readable by the owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.chmod(tmp, 0o600)
    tmp.replace(path)
