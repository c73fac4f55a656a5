"""End to end against a real Prometheus: two signals, two meanings. Drift that does not
hurt the classifier opens the input-drift ticket and never pages; a broken embedder
pages through the paired canaries, and the delayed labels confirm it.

`silentwatch serve` runs as a process on loopback; Debian's `prometheus` binary scrapes it
every second with the project's own rule file (deploy/prometheus/rules) and evaluates the
rules every second. The bundle carries 256 canary texts with their reference embeddings
(tests/prometheus_stack.py). Traffic, with delayed labels for half of it:

1. clean: no alert at all;
2. a topic shift the classifier is blind to (its ROC-AUC does not move): every drift
   detector sees it, ``SilentwatchInputDrift`` fires, ``SilentwatchSilentFailure`` stays
   quiet while the canaries (same embedder) and the labels (same ROC-AUC) keep checking;
3. a broken embedder (a random rotation of the space): the moderation service's next
   canary submission fires ``SilentwatchSilentFailure{source="paired_canaries"}``, and the
   labels of the rotated traffic then fire ``source="label_confirmation"`` too. Both name
   the bundle's one head (``head="default"``) and quote its numbers: the annotations'
   head-filtered queries find the sidecar's real series.

The test reads everything from Prometheus' HTTP API.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from silentwatch.client import CanaryClient

from .prometheus_bin import prometheus_binary
from .prometheus_stack import (
    WINDOW,
    Prometheus,
    Replay,
    Scenario,
    Sidecar,
    artifacts_dir,
    build_scenario,
)

PAGE = "SilentwatchSilentFailure"
TICKET = "SilentwatchInputDrift"
CANARIES = "paired_canaries"
LABELS = "label_confirmation"
CLEAN_WINDOWS = 80
SHIFTED_WINDOWS = 32  # harmless traffic sent after the ticket fired, for the labels to judge
RATE = 800.0  # rows/s: ~12 windows/s, so each 1 s scrape sees a few windows
WAIT_S = 90.0  # bound on each wait for an alert

# Series drawn in the README figure (benchmarks/alerts_e2e_figure.py).
FIGURE_SERIES = {
    "input_drift_recent": "silentwatch_input_drift_recent_windows",
    "canary_auc_live": 'silentwatch_paired_canary_roc_auc{embeddings="live", bound="estimate"}',
    "canary_auc_live_low": 'silentwatch_paired_canary_roc_auc{embeddings="live", bound="low"}',
    "canary_auc_live_high": 'silentwatch_paired_canary_roc_auc{embeddings="live", bound="high"}',
    "canary_auc_reference": 'silentwatch_paired_canary_roc_auc{embeddings="reference"}',
    "labelled_auc": 'silentwatch_labelled_roc_auc{window="rolling"}',
    "holdout_auc": 'silentwatch_bundle_holdout_roc_auc{head="default"}',
    "alert_ticket": f'ALERTS{{alertname="{TICKET}", alertstate="firing"}}',
    "alert_page_canaries": f'ALERTS{{alertname="{PAGE}", source="{CANARIES}", alertstate="firing"}}',  # noqa: E501
    "alert_page_labels": f'ALERTS{{alertname="{PAGE}", source="{LABELS}", alertstate="firing"}}',
}


@pytest.fixture
def stack(tmp_path: Path):
    prom_bin = prometheus_binary("prometheus")
    scenario = build_scenario(tmp_path / "bundle")
    sidecar = Sidecar(scenario.bundle)
    prom = None
    try:
        prom = Prometheus(prom_bin, tmp_path / "prometheus", sidecar.metrics_address)
        yield scenario, sidecar, prom
    finally:
        if prom is not None:
            prom.stop()
        sidecar.stop()


def _wait_for(predicate, timeout: float, what: str, prom: Prometheus) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if predicate():
            return time.monotonic() - start
        time.sleep(0.25)
    log = Path(prom.log.name).read_text()[-2000:]
    raise AssertionError(
        f"timed out after {timeout:.0f} s waiting for {what}; prometheus log:\n{log}"
    )


def _scalar(prom: Prometheus, expr: str) -> float:
    res = prom.query(expr)
    assert res, f"no series for {expr}"
    return float(res[0]["value"][1])


def _page(prom: Prometheus, source: str) -> list[dict]:
    return prom.query(f'ALERTS{{alertname="{PAGE}", source="{source}", alertstate="firing"}}')


def _page_annotations(prom: Prometheus, source: str) -> dict[str, str]:
    """The firing page's annotations for ``source`` (the alerts API, templates rendered)."""
    (alert,) = [
        a
        for a in prom.api("alerts")["alerts"]
        if a["labels"]["alertname"] == PAGE
        and a["labels"]["source"] == source
        and a["state"] == "firing"
    ]
    return alert["annotations"]


def test_drift_opens_a_ticket_and_only_a_broken_embedder_pages(stack):
    sc: Scenario
    sc, sidecar, prom = stack
    _wait_for(
        lambda: any(r["value"][1] == "1" for r in prom.query('up{job="silentwatch"}')),
        30,
        "the first successful scrape",
        prom,
    )
    replay = Replay(sidecar.grpc_target, rows_per_second=RATE, seed=1)
    canaries = CanaryClient(sidecar.grpc_target, embedder_version="v1")
    w = sc.world
    seen: dict[str, list[dict]] = {"clean": [], "shift": []}
    last_poll = [0.0]

    def poller(phase: str, expr: str):
        def poll(force: bool = False) -> None:
            if force or time.monotonic() - last_poll[0] > 0.5:
                last_poll[0] = time.monotonic()
                seen[phase].extend(prom.query(expr))

        return poll

    # -- clean: the validated embedder, clean traffic -----------------------------------
    t_clean = time.time()
    assert not canaries.check(sc.embed).failure  # the moderation service's first round
    poll_clean = poller("clean", f'ALERTS{{alertname=~"{PAGE}|{TICKET}"}}')
    x, y = w.sample(CLEAN_WINDOWS * WINDOW)
    replay.send(x, y, every_batch=poll_clean)
    replay.flush_labels()
    time.sleep(3.0)  # two more scrapes and rule evaluations over the clean traffic's end
    poll_clean(force=True)
    t_shift = time.time()
    assert seen["clean"] == [], f"alert pending/firing on clean traffic: {seen['clean']}"
    assert _scalar(prom, "silentwatch_drift_windows_evaluated_total") >= CLEAN_WINDOWS - 1
    assert _scalar(prom, "silentwatch_paired_canary_submissions_total") == 1
    # The whole clean interval as Prometheus recorded it, not only what the polls saw.
    rng = prom.query_range(
        "max(silentwatch_input_drift_recent_windows) or vector(0)", t_clean, t_shift
    )
    clean_max_recent = max(float(v) for _, v in rng[0]["values"])
    assert clean_max_recent < 5
    assert prom.query_range(f'ALERTS{{alertname=~"{PAGE}|{TICKET}"}}', t_clean, t_shift) == []

    # -- drift without harm: a topic shift the classifier is blind to -------------------
    fired: dict[str, float] = {}
    poll_shift = poller("shift", f'ALERTS{{alertname="{PAGE}"}}')
    checks_before = _scalar(prom, "silentwatch_label_confirmation_checks_total")
    assert not canaries.check(sc.embed).failure  # same embedder: the canaries say so
    t0 = time.monotonic()
    while not prom.firing(TICKET):
        if time.monotonic() - t0 > WAIT_S:
            recent = prom.query("silentwatch_input_drift_recent_windows")
            raise AssertionError(f"{TICKET} did not fire within {WAIT_S:.0f} s: {recent}")
        xs, ys = w.sample(10 * WINDOW)
        replay.send(sc.topic_shift(xs), ys, every_batch=poll_shift)
    fired[TICKET] = time.time() - t_shift
    ticket = prom.firing(TICKET)[0]["metric"]
    assert ticket["severity"] == "warning"
    assert ticket["instance"] == sidecar.metrics_address
    # More shifted traffic, so that label confirmation judges labels of shifted rows only.
    xs, ys = w.sample(SHIFTED_WINDOWS * WINDOW)
    replay.send(sc.topic_shift(xs), ys, every_batch=poll_shift)
    replay.flush_labels()
    time.sleep(2.0)  # a scrape and a rule evaluation over the last labels' checks
    poll_shift(force=True)
    t_broken = time.time()
    assert seen["shift"] == [], f"{PAGE} pending/firing on harmless drift: {seen['shift']}"
    assert prom.query_range(f'ALERTS{{alertname="{PAGE}"}}', t_shift, t_broken) == []
    page_max = prom.query_range("max(silentwatch_silent_failure)", t_shift, t_broken)
    assert max(float(v) for _, v in page_max[0]["values"]) == 0
    assert prom.firing(TICKET), f"{TICKET} stopped while the shift lasted"
    # The labels were checked on the shifted traffic, and found nothing.
    checks = _scalar(prom, "silentwatch_label_confirmation_checks_total") - checks_before
    assert checks >= 4, f"only {checks:g} label-confirmation checks during the shift"
    assert _scalar(prom, "silentwatch_label_degradation_confirmed") == 0

    # -- a broken embedder: the canaries page, the labels confirm -----------------------
    reading = canaries.check(sc.embed_broken)
    assert reading.failure, reading
    _wait_for(lambda: _page(prom, CANARIES), 30, f"{PAGE}{{source={CANARIES}}}", prom)
    fired[f"{PAGE}:{CANARIES}"] = time.time() - t_broken
    page = _page(prom, CANARIES)[0]["metric"]
    assert page["severity"] == "critical"
    assert page["instance"] == sidecar.metrics_address
    # A one-head bundle's head is "default": the page names it and quotes its canary numbers.
    assert page["head"] == "default"
    notes = _page_annotations(prom, CANARIES)
    assert "classifier head default got worse on its paired canaries" in notes["summary"]
    assert "(canary ROC-AUC " in notes["description"], notes["description"]
    t0 = time.monotonic()
    while not _page(prom, LABELS):
        if time.monotonic() - t0 > WAIT_S:
            drop = prom.query("silentwatch_label_auc_drop_lower_bound")
            raise AssertionError(f"{PAGE}{{source={LABELS}}} did not fire: {drop}")
        xb, yb = w.sample(10 * WINDOW)
        replay.send(sc.broken(xb), yb)
        replay.flush_labels()
    fired[f"{PAGE}:{LABELS}"] = time.time() - t_broken
    assert _page(prom, LABELS)[0]["metric"]["head"] == "default"
    notes = _page_annotations(prom, LABELS)
    assert "classifier head default got worse on its delayed labels" in notes["summary"]
    assert "the rolling ROC-AUC (" in notes["description"], notes["description"]
    # The page and the ticket, nothing else.
    firing = {r["metric"]["alertname"] for r in prom.query('ALERTS{alertstate="firing"}')}
    assert firing == {PAGE, TICKET}, firing

    out = artifacts_dir()
    if out is not None:
        # For the figure: a few more seconds of the broken traffic, alerts standing.
        xb, yb = w.sample(int(4 * RATE))
        replay.send(sc.broken(xb), yb)
        replay.flush_labels()
        time.sleep(2.0)
        t_end = time.time()
        out.mkdir(parents=True, exist_ok=True)
        series = {
            key: prom.query_range(expr, t_clean - 2, t_end + 1)
            for key, expr in FIGURE_SERIES.items()
        }
        (out / "alerts-e2e.json").write_text(
            json.dumps(
                {
                    "t_clean": t_clean,
                    "t_shift": t_shift,
                    "t_broken": t_broken,
                    "t_end": t_end,
                    "fired_s": fired,
                    "clean_windows": CLEAN_WINDOWS,
                    "window": WINDOW,
                    "rows_per_second": RATE,
                    "clean_max_recent_input_drift": clean_max_recent,
                    "series": series,
                },
                indent=1,
            )
        )
    canaries.stop()
    replay.close()
    assert all(np.isfinite(t) for t in fired.values())
