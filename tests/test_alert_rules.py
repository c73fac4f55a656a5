"""The Prometheus rules (deploy/prometheus/rules): promtool's checks and unit tests, the
metrics they name, their runbook links, the false-alarm rate of the k-of-n input-drift
ticket, and the split between the two signals (input drift never pages)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from scipy.stats import binom

from silentwatch.monitor.config import ServeSettings
from silentwatch.monitor.detection.engine import RECENT_WINDOWS
from silentwatch.monitor.serving.server import Sidecar

from .prometheus_bin import prometheus_binary
from .promql import (
    PROMETHEUS_BUILTINS,
    live_metric_names,
    metric_names,
    paired_canary_metric_names,
    recording_rule_names,
)

ROOT = Path(__file__).resolve().parents[1]
RULES_DIR = ROOT / "deploy" / "prometheus" / "rules"
RULES = RULES_DIR / "silentwatch.rules.yml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "tests" / "silentwatch.test.yml"
RUNBOOK = ROOT / "docs" / "runbook.md"
RUNBOOK_URL = "https://github.com/silentwatch/silentwatch/blob/main/docs/runbook.md#"


def rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    return [r for g in doc["groups"] for r in g["rules"]]


def alerts() -> list[dict[str, Any]]:
    return [r for r in rules() if "alert" in r]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [prometheus_binary("promtool"), *args], capture_output=True, text=True, timeout=120
    )


def test_promtool_checks_the_rule_file() -> None:
    res = run("check", "rules", str(RULES))
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"SUCCESS: {len(rules())} rules found" in res.stdout


def test_promtool_unit_tests_pass() -> None:
    res = run("test", "rules", str(RULE_TESTS))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS" in res.stdout


def test_promtool_unit_tests_can_fail(tmp_path: Path) -> None:
    """A rule file with one threshold changed must fail the same unit tests."""
    broken = RULES.read_text(encoding="utf-8").replace(
        "silentwatch_input_drift_recent_windows >= 5",
        "silentwatch_input_drift_recent_windows >= 6",
    )
    assert broken != RULES.read_text(encoding="utf-8")
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "silentwatch.rules.yml").write_text(broken)
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "t.yml").write_text(RULE_TESTS.read_text(encoding="utf-8"))
    res = run("test", "rules", str(tmp_path / "tests" / "t.yml"))
    assert res.returncode != 0
    assert "SilentwatchInputDrift" in res.stdout + res.stderr


def test_every_alert_is_unit_tested_firing_and_quiet() -> None:
    doc = yaml.safe_load(RULE_TESTS.read_text(encoding="utf-8"))
    fires, quiet = set(), set()
    for case in doc["tests"]:
        for a in case.get("alert_rule_test", []):
            (fires if a.get("exp_alerts") else quiet).add(a["alertname"])
    names = {a["alert"] for a in alerts()}
    assert names - fires == set(), "alerts with no case where they fire"
    # Label/absence alerts are quiet in the cases of their neighbours; each has its own too.
    assert names - quiet == set(), "alerts with no case where they must stay quiet"


def _anchor(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_alert_has_severity_summary_description_and_a_runbook_section() -> None:
    headings = {
        _anchor(line.lstrip("#"))
        for line in RUNBOOK.read_text(encoding="utf-8").splitlines()
        if line.startswith("#")
    }
    for a in alerts():
        name = a["alert"]
        assert a["labels"]["severity"] in {"critical", "warning"}, name
        assert a["annotations"]["summary"] and a["annotations"]["description"], name
        url = a["annotations"]["runbook_url"]
        assert url == RUNBOOK_URL + name.lower(), f"{name}: {url}"
        assert name.lower() in headings, f"docs/runbook.md has no section '## {name}'"


# Series an annotation template reads with `query` (the numbers quoted in a page).
_TEMPLATE_QUERY = re.compile(r'printf\s+"([^"]+)"[^}]*\|\s*query\b')


def template_queries(rule: dict[str, Any]) -> list[str]:
    return [
        q for text in rule.get("annotations", {}).values() for q in _TEMPLATE_QUERY.findall(text)
    ]


def test_rules_name_only_metrics_the_sidecar_exports(sidecar: Sidecar) -> None:
    known = (
        live_metric_names(sidecar)
        | paired_canary_metric_names()
        | recording_rule_names(RULES_DIR)
        | PROMETHEUS_BUILTINS
    )
    unknown = {
        f"{r.get('alert') or r.get('record')}: {name}"
        for r in rules()
        for expr in (r["expr"], *template_queries(r))
        for name in metric_names(expr) - known
    }
    assert unknown == set()
    # the page's annotations quote numbers read with `query`: those selectors are checked too
    assert any(template_queries(a) for a in alerts() if a["alert"] == "SilentwatchSilentFailure")


# ---- two signals, two meanings ---------------------------------------------------------

INPUT_DRIFT_METRICS = re.compile(
    r"^silentwatch_(input_drift|drift_|embedding_centroid|confidence_|change_points)"
)


def test_no_page_reads_a_drift_metric() -> None:
    """Drift is not harm: no critical alert may be raised by input drift or by a drift
    detector (the promtool case 'input drift alone never fires SilentwatchSilentFailure'
    shows it on data)."""
    offending = {
        a["alert"]: sorted(m for m in metric_names(a["expr"]) if INPUT_DRIFT_METRICS.match(m))
        for a in alerts()
        if a["labels"]["severity"] == "critical"
    }
    assert {k: v for k, v in offending.items() if v} == {}
    page = next(a for a in alerts() if a["alert"] == "SilentwatchSilentFailure")
    assert metric_names(page["expr"]) == {"silentwatch_silent_failure_evidence"}
    assert page["labels"]["severity"] == "critical" and "for" not in page
    drift = next(a for a in alerts() if a["alert"] == "SilentwatchInputDrift")
    assert drift["labels"]["severity"] == "warning"


def test_silent_failure_false_alarm_rate_is_the_stated_one() -> None:
    """docs/alerts.md and the rule file: per check round the page fires on a classifier no
    worse than the margin at most 0.005 + 0.005 = 0.01 (Bonferroni over the two sources)."""
    default = {k: f.default for k, f in ServeSettings.model_fields.items()}
    assert (default["canary_alpha"], default["confirmation_alpha"]) == (0.005, 0.005)
    assert default["canary_alpha"] + default["confirmation_alpha"] == pytest.approx(0.01)
    assert (default["canary_margin"], default["confirmation_margin"]) == (0.01, 0.01)


# ---- the false-alarm rate of the k-of-n alerts ----------------------------------------


def k_of_n_false_alarm_rate(k: int, n: int, p0: float) -> float:
    """P(at least k of the last n windows alarm) when each does so with probability p0.

    Windows are tumbling by default, so on clean traffic their alarms are independent
    draws: ``P = sum_{j >= k} C(n, j) p0^j (1 - p0)^(n - j)``. While the ring fills
    (fewer than n windows) the probability is smaller, so this is the bound.
    """
    return float(binom.sf(k - 1, n, p0))


def _threshold(alert: str) -> int:
    expr = next(a["expr"] for a in alerts() if a["alert"] == alert)
    m = re.search(r">=\s*(\d+)\s*$", expr.strip())
    assert m, expr
    return int(m.group(1))


@pytest.mark.parametrize(
    ("p0", "stated"),
    # docs/alerts.md and the rule file's comment state these bounds
    [(0.01, 2.5e-8), (0.05, 6.4e-5), (0.10, 1.7e-3)],
)
def test_k_of_n_alerts_keep_the_stated_false_alarm_rate(p0: float, stated: float) -> None:
    for alert in ("SilentwatchInputDrift",):
        k = _threshold(alert)
        rate = k_of_n_false_alarm_rate(k, RECENT_WINDOWS, p0)
        assert rate <= stated, f"{alert}: {rate:.2e} at p0={p0} exceeds the stated {stated:.1e}"


def test_k_of_n_rate_matches_a_simulation() -> None:
    import numpy as np

    rng = np.random.default_rng(0)
    alarms = rng.random((200_000, RECENT_WINDOWS)) < 0.1
    simulated = float((alarms.sum(axis=1) >= 5).mean())
    assert simulated == pytest.approx(k_of_n_false_alarm_rate(5, RECENT_WINDOWS, 0.1), rel=0.15)
