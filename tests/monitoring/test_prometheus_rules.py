"""Prometheus configuration and alert rules, checked by the real promtool."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from monitoring.prometheus_config import COMPOSE_CONFIG, compose_config, render_prometheus_config

ROOT = Path(__file__).resolve().parents[2]
PROM_DIR = ROOT / "compose" / "prometheus"
RULES = sorted((PROM_DIR / "rules").glob("*.yml"))
RULE_TESTS = sorted((PROM_DIR / "tests").glob("*.yml"))


def promtool(*args: str | Path) -> str:
    """Run promtool; fail the test with its output unless it exits 0."""
    exe = shutil.which("promtool")
    if exe is None:
        pytest.fail("promtool not found: run scripts/install-system.sh (Debian package prometheus)")
    proc = subprocess.run(
        [exe, *map(str, args)], capture_output=True, text=True, timeout=120, check=False
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    return output


def test_compose_config_is_generated_from_the_module() -> None:
    assert COMPOSE_CONFIG.read_text(encoding="utf-8") == compose_config(), (
        "run: python -m monitoring.prometheus_config"
    )


def test_compose_config_passes_promtool() -> None:
    out = promtool("check", "config", COMPOSE_CONFIG)
    # The relative rule glob resolved to our rule files, and each was checked.
    assert f"SUCCESS: {len(RULES)} rule files found" in out


def test_compose_config_scrapes_every_service() -> None:
    text = compose_config()
    assert re.search(r"job_name: pushgateway\n    honor_labels: true\n", text)
    for target in ("pushgateway:9091", "flower:5555", "queue-exporter:9808"):
        assert f'"{target}"' in text
    assert '"rules/*.yml"' in text


def test_local_config_with_loopback_targets(tmp_path: Path) -> None:
    text = render_prometheus_config(
        pushgateway="127.0.0.1:19091",
        flower="127.0.0.1:15555",
        exporter="127.0.0.1:19808",
        rules_dir=PROM_DIR / "rules",
    )
    config = tmp_path / "prometheus.yml"
    config.write_text(text, encoding="utf-8")
    out = promtool("check", "config", config)
    assert f"SUCCESS: {len(RULES)} rule files found" in out
    assert "scrape_interval: 5s" in text


def test_optional_targets_are_left_out(tmp_path: Path) -> None:
    rules_dir = tmp_path / "no-rules"
    rules_dir.mkdir()
    text = render_prometheus_config(
        pushgateway="127.0.0.1:19091", flower=None, exporter=None, rules_dir=rules_dir
    )
    assert "job_name: flower" not in text
    assert "job_name: tts_queue" not in text
    config = tmp_path / "prometheus.yml"
    config.write_text(text, encoding="utf-8")
    promtool("check", "config", config)


def test_rules_pass_promtool_check() -> None:
    assert RULES
    promtool("check", "rules", *RULES)


def test_rule_unit_tests_pass() -> None:
    assert RULE_TESTS
    promtool("test", "rules", *RULE_TESTS)


def test_every_alert_has_a_unit_test() -> None:
    alerts = {m for f in RULES for m in re.findall(r"- alert: (\w+)", f.read_text())}
    tested = {m for f in RULE_TESTS for m in re.findall(r"alertname: (\w+)", f.read_text())}
    assert alerts == tested, f"untested: {alerts - tested}, unknown: {tested - alerts}"
    required = {
        "TTSErrorRatioHigh",
        "TTSWorkerGroupStale",
        "TTSQueueBacklogNotDraining",
        "TTSNoSuccessWithWorkPending",
    }
    assert required <= alerts
