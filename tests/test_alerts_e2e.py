"""End to end against a real Prometheus: the silent-failure alert fires after a simulated
embedding-model update, and not before.

`silentwatch serve` runs as a process on loopback; Debian's `prometheus` binary scrapes it
every second with the project's own rule file (deploy/prometheus/rules) and evaluates the
rules every second. Traffic: clean embeddings with delayed labels, then the same world
under paper A's Gaussian drift. The test reads everything from Prometheus' HTTP API.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from .prometheus_bin import prometheus_binary
from .prometheus_stack import (
    WINDOW,
    Prometheus,
    Replay,
    Sidecar,
    artifacts_dir,
    train_scenario_bundle,
    updated,
    world,
)

SUSPECTED = "SilentwatchSilentFailureSuspected"
CONFIRMED = "SilentwatchSilentFailureConfirmed"
CLEAN_WINDOWS = 80
RATE = 800.0  # rows/s: ~12 windows/s, so each 1 s scrape sees a few windows
WAIT_S = 90.0  # bound on each wait for an alert

# Series drawn in the README figure (benchmarks/alerts_e2e_figure.py).
FIGURE_SERIES = {
    "suspected_recent": "silentwatch_silent_failure_suspected_recent_windows",
    "confidence_window": 'silentwatch_confidence_mean{sample="window"}',
    "confidence_reference": 'silentwatch_confidence_mean{sample="reference"}',
    "labelled_auc": 'silentwatch_labelled_roc_auc{window="rolling"}',
    "holdout_auc": "silentwatch_bundle_holdout_roc_auc",
    "pca_statistic": 'silentwatch_drift_statistic{detector="pca_reconstruction"}',
    "pca_threshold": 'silentwatch_drift_threshold{detector="pca_reconstruction"}',
    "alert_suspected": f'ALERTS{{alertname="{SUSPECTED}", alertstate="firing"}}',
    "alert_confirmed": f'ALERTS{{alertname="{CONFIRMED}", alertstate="firing"}}',
}


@pytest.fixture
def stack(tmp_path: Path):
    prom_bin = prometheus_binary("prometheus")
    w = world()
    bundle = train_scenario_bundle(tmp_path / "bundle", w)
    sidecar = Sidecar(bundle)
    prom = None
    try:
        prom = Prometheus(prom_bin, tmp_path / "prometheus", sidecar.metrics_address)
        yield w, sidecar, prom
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


def test_silent_failure_alert_fires_after_the_update_and_not_before(stack):
    w, sidecar, prom = stack
    _wait_for(
        lambda: any(r["value"][1] == "1" for r in prom.query('up{job="silentwatch"}')),
        30,
        "the first successful scrape",
        prom,
    )
    replay = Replay(sidecar.grpc_target, rows_per_second=RATE, seed=1)
    seen_during_clean: list[dict] = []
    last_poll = [0.0]

    def poll_clean() -> None:
        if time.monotonic() - last_poll[0] > 0.5:
            last_poll[0] = time.monotonic()
            seen_during_clean.extend(prom.query(f'ALERTS{{alertname=~"{SUSPECTED}|{CONFIRMED}"}}'))

    # -- clean phase ---------------------------------------------------------------------
    t_clean = time.time()
    x, y = w.sample(CLEAN_WINDOWS * WINDOW)
    replay.send(x, y, every_batch=poll_clean)
    replay.flush_labels()
    time.sleep(3.0)  # two more scrapes and rule evaluations over the clean traffic's end
    poll_clean()
    last_poll[0] = 0.0
    poll_clean()
    t_update = time.time()
    assert seen_during_clean == [], f"alert pending/firing on clean traffic: {seen_during_clean}"
    evaluated = prom.query("silentwatch_drift_windows_evaluated_total")
    assert evaluated and float(evaluated[0]["value"][1]) >= CLEAN_WINDOWS - 1
    # The whole clean interval as Prometheus recorded it, not only what the polls saw.
    rng = prom.query_range(
        "max(silentwatch_silent_failure_suspected_recent_windows) or vector(0)", t_clean, t_update
    )
    clean_max_recent = max(float(v) for _, v in rng[0]["values"])
    assert clean_max_recent < 5
    clean_alerts = prom.query_range(f'ALERTS{{alertname="{SUSPECTED}"}}', t_clean, t_update)
    assert clean_alerts == []

    # -- the embedding model changes under the classifier -------------------------------
    fired: dict[str, float] = {}

    def send_until(alertname: str) -> None:
        t0 = time.monotonic()
        while time.monotonic() - t0 < WAIT_S:
            xu, yu = w.sample(10 * WINDOW)
            replay.send(updated(xu, seed=int(t0 * 1000) % 2**31), yu)
            replay.flush_labels()
            for name in (SUSPECTED, CONFIRMED):
                if name not in fired and prom.firing(name):
                    fired[name] = time.time() - t_update
            if alertname in fired:
                return
        recent = prom.query("silentwatch_silent_failure_suspected_recent_windows")
        raise AssertionError(
            f"{alertname} did not fire within {WAIT_S:.0f} s of drifted traffic; "
            f"recent suspected windows: {recent}"
        )

    send_until(SUSPECTED)
    alert = prom.firing(SUSPECTED)[0]["metric"]
    assert alert["severity"] == "critical"
    assert alert["instance"] == sidecar.metrics_address
    # The label-confirmed alert follows once enough drifted predictions got their labels.
    send_until(CONFIRMED)

    out = artifacts_dir()
    if out is not None:
        # For the figure: a few more seconds of the updated traffic, alerts standing.
        xu, yu = w.sample(int(6 * RATE))
        replay.send(updated(xu, seed=99), yu)
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
                    "t_update": t_update,
                    "t_end": t_end,
                    "fired_after_update_s": fired,
                    "clean_windows": CLEAN_WINDOWS,
                    "window": WINDOW,
                    "rows_per_second": RATE,
                    "clean_max_recent_suspected": clean_max_recent,
                    "series": series,
                },
                indent=1,
            )
        )
    replay.close()
    assert np.isfinite(fired[SUSPECTED]) and np.isfinite(fired[CONFIRMED])
