"""`silentwatch demo` end to end, in a short mode."""

from __future__ import annotations

import numpy as np
from rich.console import Console

from silentwatch.cli import main
from silentwatch.demo.run import run_demo
from silentwatch.monitor.simulate.drift import gaussian_drift
from silentwatch.monitor.simulate.world import SyntheticWorld


def test_demo_shows_the_silent_failure(tmp_path):
    console = Console(record=True, width=120)
    res = run_demo(out_dir=tmp_path, requests=1200, console=console)
    clean, updated = res.phases
    assert clean.rows == updated.rows == 600
    assert clean.true_auc > 0.78  # near paper A's 0.85 baseline
    assert updated.true_auc < 0.62  # collapsed towards chance
    # ... while confidence does not fall: the failure is silent.
    assert updated.mean_confidence >= clean.mean_confidence - 0.05
    assert clean.labels_joined > 100 and updated.labels_joined > 100
    text = console.export_text()
    assert "Silent failure" in text and "clean" in text and "updated" in text
    assert (tmp_path / "bundle" / "manifest.json").is_file()


def test_demo_cli_exit_code(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--requests", "400", "--seed", "1"]) == 0


def test_world_drift_keeps_vectors_on_the_sphere():
    w = SyntheticWorld(dim=64)
    x, y = w.sample(500)
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)
    assert 0.3 < y.mean() < 0.7
    xd = gaussian_drift(x, 0.02, np.random.default_rng(0))
    np.testing.assert_allclose(np.linalg.norm(xd, axis=1), 1.0, atol=1e-5)
    angle = np.degrees(np.arccos(np.clip((x * xd).sum(1), -1, 1))).mean()
    # Per-dimension s in d dims moves a unit vector by about atan(s * sqrt(d)).
    assert abs(angle - np.degrees(np.arctan(0.02 * 8))) < 1.5


def test_keep_serving_stays_up_for_prometheus_and_stops_on_ctrl_c(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    from silentwatch.scrape import scrape

    proc = subprocess.Popen(
        [sys.executable, "-m", "silentwatch", "demo", "--out", str(tmp_path), "--requests", "300",
         "--keep-serving", "--port", "0", "--metrics-port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        url = None
        deadline = time.monotonic() + 120
        for line in proc.stdout:
            if "metrics http" in line:
                url = line.split("metrics ")[-1].strip()
            if "keeping the sidecar up" in line or time.monotonic() > deadline:
                break
        assert url, "the demo never reported its metrics URL"
        m = scrape(url)  # still up after the replay
        assert m.get_value("silentwatch_prediction_score_count", source="classify") == 300
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_the_table_fits_80_columns_without_ellipses():
    """Piped output (rich assumes 80 columns) shows every cell whole: on one line at ten times
    the default traffic, folded (never cut) beyond that."""
    import io

    from rich.console import Console

    from silentwatch.demo.run import PhaseResult, _table

    def render(rows: int, labels: int, windows: int) -> str:
        phases = [
            PhaseResult("clean", rows, 0.5, 0.757, 0.422, 0.4, labels, 1.0, 0.854, 0.776,
                        windows, 0, 0, 0.865),
            PhaseResult("updated", rows, 0.6, 0.973, 0.947, 0.5, labels, 1.0, 0.532, 0.527,
                        windows, windows, windows, 0.546),
        ]  # fmt: skip
        out = io.StringIO()
        Console(file=out, width=80, color_system=None).print(_table(phases))
        return out.getvalue()

    text = render(40_000, 12_345, 160)
    assert "…" not in text and "12,345" in text and "160/160" in text, text
    assert max(len(line) for line in text.splitlines()) <= 80
    huge = render(4_000_000, 1_234_567, 16_000)
    assert "…" not in huge and max(len(line) for line in huge.splitlines()) <= 80, huge
