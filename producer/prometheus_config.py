"""Prometheus scrape configuration for the local stack.

PLACEHOLDER: the monitoring work owns this module and replaces it at merge; only the signature
of `render_prometheus_config` is relied on by the local stack.
"""

from __future__ import annotations

from pathlib import Path


def render_prometheus_config(
    *,
    pushgateway: str,
    flower: str | None,
    exporter: str | None,
    rules_dir: Path,
    scrape_interval: str = "5s",
) -> str:
    """Return prometheus.yml text scraping the given `host:port` targets.

    The Pushgateway job keeps the pushed `job`/`worker`/`process` labels (honor_labels).
    """
    lines = [
        "global:",
        f"  scrape_interval: {scrape_interval}",
        f"  evaluation_interval: {scrape_interval}",
        "rule_files:",
        f"  - {str(rules_dir / '*.yml')!r}",
        "scrape_configs:",
        "  - job_name: pushgateway",
        "    honor_labels: true",
        "    static_configs:",
        f"      - targets: [{pushgateway!r}]",
    ]
    if flower:
        lines += [
            "  - job_name: flower",
            "    metrics_path: /metrics",
            "    static_configs:",
            f"      - targets: [{flower!r}]",
        ]
    if exporter:
        lines += [
            "  - job_name: tts_queue",
            "    static_configs:",
            f"      - targets: [{exporter!r}]",
        ]
    return "\n".join(lines) + "\n"
