"""The Prometheus rules (deploy/prometheus/rules): promtool's checks and unit tests, the
metrics they name, their runbook links, the false-alarm rate of the k-of-n input-drift
ticket, the split between the two signals (input drift never pages), and heads kept apart
(every rule on a per-head family keeps the ``head`` label and every alert names it)."""

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
from silentwatch.monitor.detection.paired_canaries import PairedCanaryStatus
from silentwatch.monitor.detection.verdict import silent_failure
from silentwatch.monitor.serving.server import Sidecar
from silentwatch.monitor.telemetry.families import FAMILIES
from silentwatch.monitor.telemetry.prometheus import PREFIX, TrafficSink

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


@pytest.mark.parametrize("heads", [1, 2, 8])
def test_the_bundle_false_alarm_rate_does_not_grow_with_heads(heads: int) -> None:
    """docs/alerts.md: each source splits its alpha over the heads, so the page (one alert
    per failing head) keeps the bundle's per-round bound however many heads there are.
    The canary source's split, read from the verdict itself (label confirmation's split is
    the engine's; tests/test_multihead_serving.py checks it on a served 3-head bundle)."""
    names = tuple(f"h{j}" for j in range(heads))
    canaries = PairedCanaryStatus(
        True, "", "set", 256, 0, 0, None, 0.01, 0.005, 1.0, head_names=names
    )
    verdict = silent_failure(None, canaries, "detection off", head_names=names)
    assert [h.status.false_alarm_rate for h in verdict.heads] == [
        pytest.approx(0.005 / heads)
    ] * heads
    assert verdict.false_alarm_rate == pytest.approx(0.005)


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


# ---- heads: categories are never summed, every alert names its head --------------------


def per_head_metric_names() -> set[str]:
    """Sample names of the families that carry a ``head`` label (monitor/telemetry), and of
    the recording rules built on them."""
    names = set()
    for f in FAMILIES:
        if "head" in f.labels:
            base = f"{PREFIX}_{f.name}"
            names |= {base, f"{base}_total"} if f.kind == "counter" else {base}
    sink = TrafficSink(0.5, ("default",))
    for h in (sink.scores, sink.confidence):
        if "head" in h.labels:
            names |= {f"{h.name}_{suffix}" for suffix in ("bucket", "sum", "count")}
    # recording rules: in file order, so a rule built on a recorded per-head series counts
    for r in rules():
        if "record" in r and metric_names(r["expr"]) & names:
            names.add(r["record"])
    return names


def test_the_per_head_families_are_the_ones_issue_19_names() -> None:
    names = per_head_metric_names()
    for expected in (
        "silentwatch_silent_failure",
        "silentwatch_silent_failure_evidence",
        "silentwatch_labelled_roc_auc",
        "silentwatch_labelled_ece",
        "silentwatch_labelled_samples",
        "silentwatch_label_confirmation_reference_auc",
        "silentwatch_paired_canary_roc_auc",
        "silentwatch_predictions_flagged_total",
        "silentwatch_prediction_score_bucket",
        "job:silentwatch_predictions_flagged:ratio_rate5m",
        "job:silentwatch_prediction_score_bucket:rate5m",
    ):
        assert expected in names, expected
    # embedding-level: one per sidecar, whatever the heads
    for embedding_level in ("silentwatch_input_drift", "silentwatch_drift_alarm"):
        assert embedding_level not in names


# `sum by (a, b) (`, `max without (c) (`, and the by-after form `sum (x) by (a)` is not used.
_AGGREGATION = re.compile(
    r"\b(sum|avg|min|max|count|group|stddev|stdvar|topk|bottomk|quantile|count_values)"
    r"\s*(by|without)\s*\(([^)]*)\)",
    re.IGNORECASE,
)
_BARE_AGGREGATION = re.compile(
    r"\b(sum|avg|min|max|group|stddev|stdvar|topk|bottomk|quantile)\s*\(", re.IGNORECASE
)
_AND_ON = re.compile(r"\band\s+on\s*\(([^)]*)\)", re.IGNORECASE)


def head_mixing(expr: str) -> list[str]:
    """Where ``expr`` would add, average or compare one head's series with another's.

    ``count`` may drop ``head``: it counts heads (how many a sidecar serves), it mixes no
    values."""
    problems = []
    for m in _AGGREGATION.finditer(expr):
        op, mode, labels = m.group(1).lower(), m.group(2).lower(), m.group(3)
        listed = {x.strip() for x in labels.split(",")}
        if mode == "without" and "head" in listed:
            problems.append(m.group(0))
        if mode == "by" and "head" not in listed and op != "count":
            problems.append(m.group(0))
    problems += [m.group(0) for m in _BARE_AGGREGATION.finditer(expr)]
    for m in _AND_ON.finditer(expr):
        if "head" not in {x.strip() for x in m.group(1).split(",")}:
            problems.append(m.group(0))
    return problems


@pytest.mark.parametrize(
    ("expr", "mixes"),
    [
        ("sum by (job, source) (rate(x[5m]))", True),
        ("sum by (job, source, head) (rate(x[5m]))", False),
        ("max without (head) (x)", True),
        ("sum(x)", True),
        ("count by (job, instance) (x) > 1", False),
        ("x >= 1 and on (job, instance) y >= 500", True),
        ("x >= 1 and on (job, instance, head) y >= 500", False),
    ],
)
def test_head_mixing_sees_aggregations_and_matches(expr: str, mixes: bool) -> None:
    assert bool(head_mixing(expr)) == mixes


def test_no_rule_on_a_per_head_family_mixes_heads() -> None:
    per_head = per_head_metric_names()
    offending = {
        r.get("alert") or r.get("record"): head_mixing(r["expr"])
        for r in rules()
        if metric_names(r["expr"]) & per_head
    }
    assert {k: v for k, v in offending.items() if v} == {}


def per_head_alerts() -> list[dict[str, Any]]:
    per_head = per_head_metric_names()
    return [a for a in alerts() if metric_names(a["expr"]) & per_head]


def test_every_alert_on_a_per_head_family_names_the_head() -> None:
    names = {a["alert"] for a in per_head_alerts()}
    assert {
        "SilentwatchSilentFailure",
        "SilentwatchCalibrationDegraded",
        "SilentwatchOverconfident",
    } <= names
    for a in per_head_alerts():
        for key in ("summary", "description"):
            assert "{{ $labels.head }}" in a["annotations"][key], f"{a['alert']} {key}"
        # the numbers a page quotes are the failing head's own
        for q in template_queries(a):
            if metric_names(q) & per_head_metric_names() and "== 0" not in q:
                assert "head='%s'" in q, f"{a['alert']}: {q}"


def _case_heads(case: dict[str, Any]) -> dict[str, set[str]]:
    """Per instance, the heads a unit-test case's input series carry."""
    out: dict[str, set[str]] = {}
    for series in case.get("input_series", []):
        labels = dict(re.findall(r'(\w+)="([^"]*)"', series["series"]))
        if "head" in labels:
            out.setdefault(labels.get("instance", ""), set()).add(labels["head"])
    return out


def test_every_per_head_alert_has_a_two_head_case_naming_only_the_failing_head() -> None:
    """A case with two heads on one sidecar where the alert fires for one of them and
    not for the other: the page names the category that broke, and only that one."""
    doc = yaml.safe_load(RULE_TESTS.read_text(encoding="utf-8"))
    shown = set()
    for case in doc["tests"]:
        heads = _case_heads(case)
        for t in case.get("alert_rule_test", []):
            fired: dict[str, set[str]] = {}
            for a in t.get("exp_alerts") or []:
                lab = a["exp_labels"]
                assert "head" in lab or t["alertname"] not in {
                    x["alert"] for x in per_head_alerts()
                }, f"{case['name']}: {t['alertname']} expected without a head label"
                fired.setdefault(lab.get("instance", ""), set()).add(str(lab.get("head")))
                # the annotations name the head the labels name
                if "head" in lab:
                    assert str(lab["head"]) in a["exp_annotations"]["summary"]
            for inst, got in fired.items():
                if len(heads.get(inst, ())) >= 2 and got < heads[inst]:
                    shown.add(t["alertname"])
    missing = {a["alert"] for a in per_head_alerts()} - shown
    assert missing == set(), "per-head alerts without a two-head case where one head fails"
