"""Build the Grafana dashboard JSON from `monitoring.panels.PANELS`.

`python -m monitoring.grafana` rewrites `compose/grafana/dashboards/tts-batch.json`; `--check`
exits 1 if the committed file differs (a test runs the same comparison). Standard library only.
"""

from __future__ import annotations

import json
from typing import Any

from monitoring.generated import SOURCE_COMPOSE, write_or_check
from monitoring.panels import PANELS, Panel

DASHBOARD_FILE = SOURCE_COMPOSE / "grafana" / "dashboards" / "tts-batch.json"
DASHBOARD_UID = "tts-batch"
# Must equal the uid in compose/grafana/provisioning/datasources/prometheus.yml.
DATASOURCE = {"type": "prometheus", "uid": "tts-prometheus"}
# Grafana's grid is 24 columns wide: three panels a row.
PANEL_WIDTH = 8
PANEL_HEIGHT = 8
PER_ROW = 24 // PANEL_WIDTH


def _panel_json(panel: Panel, index: int) -> dict[str, Any]:
    defaults: dict[str, Any] = {"unit": panel.unit, "min": 0}
    if panel.y_max is not None:
        defaults["max"] = panel.y_max
    if panel.no_value:
        # Shown instead of "No data" when the queries return nothing (a ratio's "no traffic").
        defaults["noValue"] = panel.no_value
    return {
        "id": index + 1,
        "type": "timeseries",
        "title": panel.title,
        "description": panel.description,
        "datasource": DATASOURCE,
        "gridPos": {
            "x": (index % PER_ROW) * PANEL_WIDTH,
            "y": (index // PER_ROW) * PANEL_HEIGHT,
            "w": PANEL_WIDTH,
            "h": PANEL_HEIGHT,
        },
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {
            "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
        "targets": [
            {
                "refId": chr(ord("A") + n),
                "datasource": DATASOURCE,
                "expr": query.expr,
                "legendFormat": query.legend,
                "range": True,
            }
            for n, query in enumerate(panel.queries)
        ],
    }


def build_dashboard(panels: tuple[Panel, ...] = PANELS) -> dict[str, Any]:
    """The dashboard as a Grafana JSON model (a dict ready for json.dumps)."""
    return {
        "uid": DASHBOARD_UID,
        "title": "tts-batch",
        "description": "Bulk TTS workers: throughput, latency, errors, queue, worker freshness.",
        "tags": ["tts-batch"],
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "refresh": "10s",
        "time": {"from": "now-30m", "to": "now"},
        "annotations": {"list": []},
        "templating": {"list": []},
        "panels": [_panel_json(panel, i) for i, panel in enumerate(panels)],
    }


def dashboard_text() -> str:
    """The dashboard file's exact content."""
    return json.dumps(build_dashboard(), indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> None:
    write_or_check(
        argv, default_out=DASHBOARD_FILE, render=dashboard_text, module="monitoring.grafana"
    )


if __name__ == "__main__":
    main()
