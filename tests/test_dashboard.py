"""The Grafana dashboard and its provisioning (deploy/grafana, docs/dashboard.md).

Three kinds of check:

* structure: ids, titles, descriptions, the datasource variable, grid, the ``$job`` filter on
  every selector, provisioning paths and uids;
* heads: the ``$head`` variable, the ``$head`` filter on every per-head selector, no panel
  that adds heads together, and a panel per head for the silent failure, labelled ROC-AUC,
  canary ROC-AUC and flagged share;
* every metric a panel names exists: exported by a live sidecar after real traffic, recorded by
  a rule in ``deploy/prometheus/rules/*.yml``, or a Prometheus built-in;
* every panel query is valid PromQL, according to ``promtool check rules``.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from silentwatch.monitor.serving.server import Sidecar

from .prometheus_bin import prometheus_binary
from .promql import (
    PROMETHEUS_BUILTINS,
    live_metric_names,
    metric_names,
    metric_selectors,
    paired_canary_metric_names,
    recording_rule_names,
)
from .test_alert_rules import head_mixing, per_head_metric_names

ROOT = Path(__file__).resolve().parents[1]
GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "silentwatch.json"
DATASOURCES = GRAFANA / "provisioning" / "datasources" / "prometheus.yaml"
PROVIDERS = GRAFANA / "provisioning" / "dashboards" / "silentwatch.yaml"
RULES_DIR = ROOT / "deploy" / "prometheus" / "rules"

DATASOURCE_REF = {"type": "prometheus", "uid": "${datasource}"}
ROWS = [
    "Silent failure (page)",
    "Input drift (ticket)",
    "Traffic",
    "Scores and confidence",
    "Labelled (delayed ground truth)",
    "Identity and health",
]
# Grafana's built-in interval variables, and what promtool sees in their place.
GRAFANA_DURATIONS = {
    "__rate_interval": "1m",
    "__interval": "1m",
    "__range": "1h",
    "__range_s": "3600",
    "__interval_ms": "60000",
}

_JOB_FILTER = re.compile(r'(?:^|[\s,])job\s*=~\s*"\$(?:job|\{job\})"')
_HEAD_FILTER = re.compile(r'(?:^|[\s,])head\s*=~\s*"\$(?:head|\{head\})"')
_VARIABLE = re.compile(r"\$(?:\{(\w+)(?::\w+)?\}|(\w+))")


# --------------------------------------------------------------------------------------------
# The dashboard.


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def all_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel, rows included, and the panels inside collapsed rows."""
    for p in panels:
        yield p
        yield from all_panels(p.get("panels", []))


def query_panels(dash: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in all_panels(dash["panels"]) if p["type"] != "row"]


def panel_queries(dash: dict[str, Any]) -> list[tuple[dict[str, Any], int, str]]:
    """``(panel, index of the target, expr)`` for every target of every panel."""
    return [
        (p, k, t.get("expr", "")) for p in query_panels(dash) for k, t in enumerate(p["targets"])
    ]


def variables(dash: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in dash["templating"]["list"]}


def variable_selectors(dash: dict[str, Any]) -> dict[str, str]:
    """The series selector inside each ``label_values(selector, label)`` variable query."""
    out = {}
    for name, v in variables(dash).items():
        if v["type"] != "query":
            continue
        q = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
        m = re.fullmatch(r"\s*label_values\((.+),\s*(\w+)\s*\)\s*", q)
        assert m, f"variable {name}: expected label_values(selector, label), got {q!r}"
        out[name] = m.group(1)
    return out


def where(panel: dict[str, Any]) -> str:
    return f"panel {panel['id']} {panel.get('title', '')!r}"


def test_dashboard_identity_time_and_variables(dashboard: dict[str, Any]) -> None:
    assert dashboard["uid"] == "silentwatch-overview"
    assert dashboard["title"] == "silentwatch — classifier health"
    assert dashboard["schemaVersion"] >= 39
    assert dashboard["refresh"] == "10s"
    assert dashboard["time"] == {"from": "now-1h", "to": "now"}
    v = variables(dashboard)
    assert v["datasource"]["type"] == "datasource" and v["datasource"]["query"] == "prometheus"
    job = v["job"]
    assert job["type"] == "query" and job["multi"] and job["includeAll"]
    assert variable_selectors(dashboard)["job"] == "silentwatch_classifier_info"
    for name, var in v.items():
        if var["type"] == "query":
            assert var["datasource"] == DATASOURCE_REF, name
    # heads: the bundle's categories, listed from the page's own family
    head = v["head"]
    assert head["type"] == "query" and head["multi"] and head["includeAll"]
    assert head["allValue"] == ".*"
    m = re.fullmatch(r"\s*label_values\((.+),\s*(\w+)\s*\)\s*", head["query"]["query"])
    assert m and m.group(2) == "head"
    assert metric_names(m.group(1)) == {"silentwatch_silent_failure"}


def test_rows_are_the_on_call_questions_in_order(dashboard: dict[str, Any]) -> None:
    rows = [p for p in dashboard["panels"] if p["type"] == "row"]
    assert [r["title"] for r in rows] == ROWS
    assert dashboard["panels"][0]["type"] == "row"


def test_panels_have_unique_ids_titles_descriptions_and_the_datasource_variable(
    dashboard: dict[str, Any],
) -> None:
    panels = list(all_panels(dashboard["panels"]))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), f"duplicate panel ids: {sorted(ids)}"
    for p in panels:
        assert p.get("title", "").strip(), f"panel {p['id']} has no title"
    for p in query_panels(dashboard):
        assert p.get("description", "").strip(), f"{where(p)} has no description"
        assert p.get("datasource") == DATASOURCE_REF, f"{where(p)}: datasource {p['datasource']}"
        assert p["targets"], f"{where(p)} has no query"
        ref_ids = [t["refId"] for t in p["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), f"{where(p)}: duplicate refIds {ref_ids}"
        for t in p["targets"]:
            assert t.get("expr", "").strip(), f"{where(p)} target {t['refId']} has no expr"
            assert t.get("datasource", DATASOURCE_REF) == DATASOURCE_REF, where(p)


def test_panels_fit_the_grid_without_overlapping(dashboard: dict[str, Any]) -> None:
    placed: list[tuple[str, tuple[int, int, int, int]]] = []
    for p in dashboard["panels"]:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["w"] > 0 and g["h"] > 0 and g["x"] + g["w"] <= 24, where(p)
        box = (g["x"], g["y"], g["x"] + g["w"], g["y"] + g["h"])
        for other, (x0, y0, x1, y1) in placed:
            overlap = box[0] < x1 and x0 < box[2] and box[1] < y1 and y0 < box[3]
            assert not overlap, f"{where(p)} overlaps {other}"
        placed.append((where(p), box))


def test_every_selector_filters_by_job(dashboard: dict[str, Any]) -> None:
    missing = [
        f"{where(p)} target {k}: {name}{{{matchers}}}"
        for p, k, expr in panel_queries(dashboard)
        for name, matchers in metric_selectors(expr)
        if not _JOB_FILTER.search(matchers)
    ]
    for name, selector in variable_selectors(dashboard).items():
        if name != "job":  # the job variable itself lists the jobs
            missing += [
                f"variable {name}: {metric}{{{matchers}}}"
                for metric, matchers in metric_selectors(selector)
                if not _JOB_FILTER.search(matchers)
            ]
    assert not missing, 'selectors without job=~"$job":\n' + "\n".join(missing)


def test_queries_use_defined_variables_and_rate_interval_only_on_raw_counters(
    dashboard: dict[str, Any],
) -> None:
    defined = set(variables(dashboard)) | set(GRAFANA_DURATIONS)
    problems = []
    for p, k, expr in panel_queries(dashboard):
        for m in _VARIABLE.finditer(expr):
            name = m.group(1) or m.group(2)
            if not name[0].isdigit() and name not in defined:  # $1 is a regex back-reference
                problems.append(f"{where(p)} target {k}: undefined variable ${name}")
        uses = expr.count("$__rate_interval")
        on_counters = re.findall(
            r"\b(?:rate|irate|increase)\(\s*([A-Za-z_][A-Za-z0-9_]*)\s*(?:\{[^}]*\})?\s*"
            r"\[\$__rate_interval\]\s*\)",
            expr,
        )
        if uses != len(on_counters):
            problems.append(f"{where(p)} target {k}: $__rate_interval outside rate()/increase()")
    for p in query_panels(dashboard):
        for m in _VARIABLE.finditer(p["title"]):
            if (m.group(1) or m.group(2)) not in defined:
                problems.append(f"{where(p)}: undefined variable in title")
    assert not problems, "\n".join(problems)


def test_provisioning_points_at_the_dashboard_and_the_datasource(
    dashboard: dict[str, Any],
) -> None:
    ds_file = yaml.safe_load(DATASOURCES.read_text(encoding="utf-8"))
    assert ds_file["apiVersion"] == 1
    (ds,) = ds_file["datasources"]
    assert (ds["name"], ds["uid"], ds["type"]) == ("Prometheus", "prometheus", "prometheus")
    assert ds["url"] == "http://prometheus:9090" and ds["isDefault"] is True
    # The dashboard's datasource variable defaults to the provisioned datasource.
    assert variables(dashboard)["datasource"]["current"]["value"] == ds["uid"]

    prov_file = yaml.safe_load(PROVIDERS.read_text(encoding="utf-8"))
    assert prov_file["apiVersion"] == 1
    (prov,) = prov_file["providers"]
    assert prov["type"] == "file" and prov["folder"] == "silentwatch"
    assert prov["options"]["path"] == "/var/lib/grafana/dashboards"
    # Grafana reads every *.json under the path: the repository's dashboards directory.
    assert DASHBOARD.parent.name == "dashboards" and DASHBOARD.suffix == ".json"


# --------------------------------------------------------------------------------------------
# The tokenizer.


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        (
            'histogram_quantile(0.99, sum by (le) (rate(silentwatch_request_duration_seconds_bucket{job=~"$job", rpc="Classify"}[$__rate_interval])))',  # noqa: E501
            {"silentwatch_request_duration_seconds_bucket"},
        ),
        (
            'silentwatch_prediction_store_entries{job="a"} / on(instance) '
            'group_left(classifier_version) silentwatch_classifier_info{embedder_name="not_a_metric_total"}',  # noqa: E501
            {"silentwatch_prediction_store_entries", "silentwatch_classifier_info"},
        ),
        (
            "sum without (instance) (x_total offset 5m) > bool 0 and on() vector(1) unless "
            "y:ratio5m or z != Inf and w > nan",
            {"x_total", "y:ratio5m", "z", "w"},
        ),
        (
            'label_replace(up, "dst", "$1", "src", "(fake_metric_total)") * on (job) '
            "group_left ALERTS{alertname='Silentwatch \\'x\\''}",
            {"up", "ALERTS"},
        ),
        (
            "sum(rate(foo_bucket[5m:1m] @ start())) by (le) / 1e-3 + 0x1F # bar_total\n- baz",
            {"foo_bucket", "baz"},
        ),
        ('{__name__="only_a_matcher"}', set()),
    ],
)
def test_tokenizer_finds_metric_names(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


def test_tokenizer_returns_each_selectors_matchers() -> None:
    sel = metric_selectors('a{job=~"$job", x="}"} / ignoring (x) b{job="y"}[5m]')
    assert sel == [("a", 'job=~"$job", x="}"'), ("b", 'job="y"')]
    assert _JOB_FILTER.search(sel[0][1]) and not _JOB_FILTER.search(sel[1][1])


# --------------------------------------------------------------------------------------------
# Every metric a panel names exists.


def test_panel_queries_name_only_existing_metrics(
    dashboard: dict[str, Any], sidecar: Sidecar
) -> None:
    live = live_metric_names(sidecar)
    assert "silentwatch_requests_total" in live and "silentwatch_drift_statistic" in live
    # The paired-canary families exist only on a sidecar whose bundle carries canaries.
    live |= paired_canary_metric_names()
    known = live | recording_rule_names(RULES_DIR) | PROMETHEUS_BUILTINS
    unknown = [
        f"{where(p)} target {k}: unknown metric {name}"
        for p, k, expr in panel_queries(dashboard)
        for name in sorted(metric_names(expr) - known)
    ]
    unknown += [
        f"variable {var}: unknown metric {name}"
        for var, selector in variable_selectors(dashboard).items()
        for name in sorted(metric_names(selector) - known)
    ]
    assert not unknown, (
        "not exported by a live sidecar, not recorded by deploy/prometheus/rules/*.yml, "
        "not a Prometheus built-in:\n" + "\n".join(unknown)
    )


# --------------------------------------------------------------------------------------------
# Every panel query is valid PromQL.


def substitute_variables(expr: str, names: Iterable[str]) -> str:
    """Grafana variables replaced by what Prometheus would see: durations, or ``.*``."""
    names = set(names)

    def value(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        if name in GRAFANA_DURATIONS:
            return GRAFANA_DURATIONS[name]
        return ".*" if name in names else m.group(0)

    return _VARIABLE.sub(value, expr)


def test_substitute_variables() -> None:
    got = substitute_variables(
        'rate(x{job=~"$job", d=~"${detector}"}[$__rate_interval]) + label_replace(y, "a", "$1")',
        ["job", "detector"],
    )
    assert got == 'rate(x{job=~".*", d=~".*"}[1m]) + label_replace(y, "a", "$1")'


def test_panel_queries_are_valid_promql(dashboard: dict[str, Any], tmp_path: Path) -> None:
    promtool = prometheus_binary("promtool")
    names = variables(dashboard)
    rules = [
        {"record": f"dashboard:panel_{p['id']}_{k}", "expr": substitute_variables(expr, names)}
        for p, k, expr in panel_queries(dashboard)
    ]
    rules += [
        {"record": f"dashboard:variable_{var}", "expr": substitute_variables(selector, names)}
        for var, selector in variable_selectors(dashboard).items()
    ]
    path = tmp_path / "dashboard.rules.yml"
    path.write_text(
        yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}, sort_keys=False)
    )
    proc = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, f"promtool check rules:\n{proc.stdout}\n{proc.stderr}"
    assert f"SUCCESS: {len(rules)} rules found" in proc.stdout


# --------------------------------------------------------------------------------------------
# Heads (issue 19): categories are shown apart, never added together.


def repeats_by_head(panel: dict[str, Any]) -> bool:
    return panel.get("repeat") == "head"


def test_every_per_head_selector_filters_by_head(dashboard: dict[str, Any]) -> None:
    per_head = per_head_metric_names()
    missing = [
        f"{where(p)} target {k}: {name}{{{matchers}}}"
        for p, k, expr in panel_queries(dashboard)
        for name, matchers in metric_selectors(expr)
        if name in per_head and not _HEAD_FILTER.search(matchers)
    ]
    assert not missing, 'per-head selectors without head=~"$head":\n' + "\n".join(missing)


def test_no_panel_adds_heads_together(dashboard: dict[str, Any]) -> None:
    """An aggregation over a per-head series keeps ``head``, or the panel repeats once per
    head (then ``$head`` is one value); every per-head series is told apart, by its legend
    or by its panel's title."""
    per_head = per_head_metric_names()
    problems = []
    for p, k, expr in panel_queries(dashboard):
        if not metric_names(expr) & per_head:
            continue
        if repeats_by_head(p):
            assert "$head" in p["title"], where(p)
        else:
            problems += [f"{where(p)} target {k}: {m}" for m in head_mixing(expr)]
            if "{{head}}" not in p["targets"][k].get("legendFormat", ""):
                problems.append(f"{where(p)} target {k}: legend without {{{{head}}}}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    ("title", "metric"),
    [
        ("Silent failure by head", "silentwatch_silent_failure"),
        ("ROC-AUC by head: labelled (rolling) vs held-out", "silentwatch_labelled_roc_auc"),
        (
            "ROC-AUC by head: labelled (rolling) vs held-out",
            "silentwatch_label_confirmation_reference_auc",
        ),
        ("Canary ROC-AUC by head: live vs reference, $head", "silentwatch_paired_canary_roc_auc"),
        ("Flagged share by head", "job:silentwatch_predictions_flagged:ratio_rate5m"),
    ],
)
def test_the_per_head_panels_are_there(dashboard: dict[str, Any], title: str, metric: str) -> None:
    (panel,) = [p for p in query_panels(dashboard) if p["title"] == title]
    assert any(metric in metric_names(t["expr"]) for t in panel["targets"]), title


def test_labelled_roc_auc_is_compared_with_each_heads_own_reference(
    dashboard: dict[str, Any],
) -> None:
    """The bundle's hold-out ROC-AUC gauge is the default head's: a per-head ROC-AUC panel
    draws each head's own held-out figure (label confirmation's reference) instead."""
    for p in query_panels(dashboard):
        names = set().union(*(metric_names(t["expr"]) for t in p["targets"]))
        if "silentwatch_labelled_roc_auc" in names:
            assert "silentwatch_bundle_holdout_roc_auc" not in names, where(p)
            assert "silentwatch_label_confirmation_reference_auc" in names, where(p)
