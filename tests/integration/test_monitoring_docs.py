"""The alert rules and Grafana dashboard that docs/ ships are valid, and refer to real series."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

DOCS = Path(__file__).resolve().parents[2] / "docs" / "monitoring"
SERIES = re.compile(r"modelplane_[a-z_]+")


def known_series() -> set[str]:
    source = Path(__file__).resolve().parents[2] / "src/modelplane/telemetry/metrics.py"
    names = set(SERIES.findall(source.read_text()))
    suffixes = ("_total", "_bucket", "_sum", "_count")
    return names | {n + s for n in names for s in suffixes}


def test_alert_rules_pass_promtool() -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool comes with Debian's prometheus package: apt-get install prometheus"
    result = subprocess.run([promtool, "check", "rules", str(DOCS / "alerts.yml")],
                            capture_output=True, text=True, check=False)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "7 rules found" in result.stdout


def test_dashboard_and_alerts_use_series_modelplane_exports() -> None:
    dashboard = json.loads((DOCS / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = set(SERIES.findall(" ".join(exprs) + (DOCS / "alerts.yml").read_text()))
    assert used, "no modelplane series referenced"
    assert used <= known_series(), used - known_series()


def test_attack_detection_rules_pass_promtool_and_use_real_series() -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool comes with Debian's prometheus package: apt-get install prometheus"
    rules = DOCS / "security-alerts.yml"
    result = subprocess.run([promtool, "check", "rules", str(rules)],
                            capture_output=True, text=True, check=False)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "4 rules found" in result.stdout
    used = set(SERIES.findall(rules.read_text()))
    assert used <= known_series(), used - known_series()
    for detector in ("auth_failures", "model_scan", "malformed"):
        assert f'detector="{detector}"' in rules.read_text()
