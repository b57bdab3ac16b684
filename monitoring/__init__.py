"""Monitoring as code: panels, the Grafana dashboard, Prometheus config, the PNG renderer and the
queue exporter."""
