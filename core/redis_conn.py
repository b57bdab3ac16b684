"""Redis connections for producer, worker and exporter: one place for passwords and TLS.

A password goes in the URL (`redis://:PASSWORD@host:port/0`, or the whole URL from
`TTS_BROKER_URL_FILE`); TLS is `rediss://`, with the server certificate always verified,
against `TTS_REDIS_TLS_CA_FILE` when the server's CA is not a system one.
"""

from __future__ import annotations

import ssl
from typing import Any

import redis

from core.settings import Settings


def uses_tls(url: str) -> bool:
    return url.startswith("rediss://")


def tls_options(settings: Settings, url: str) -> dict[str, Any]:
    """redis-py keyword arguments for a `rediss://` URL (nothing for plain `redis://`): the
    certificate always verified."""
    if not uses_tls(url):
        return {}
    options: dict[str, Any] = {"ssl_cert_reqs": ssl.CERT_REQUIRED}
    if settings.redis_tls_ca_file:
        options["ssl_ca_certs"] = settings.redis_tls_ca_file
    return options


def celery_tls_options(settings: Settings, url: str) -> dict[str, Any] | None:
    """Celery's broker_use_ssl / redis_backend_use_ssl: the same options, None for `redis://`."""
    return tls_options(settings, url) or None


def connect(settings: Settings, url: str | None = None, **kwargs: Any) -> redis.Redis:
    """A client for `url` (default: the results URL, where batch state lives)."""
    target = url or settings.results_url
    return redis.Redis.from_url(target, **tls_options(settings, target), **kwargs)
