"""The README's alert figure: the end-to-end test's key series, read from Prometheus' API.

Runs tests/test_alerts_e2e.py (a real `silentwatch serve` and Debian's `prometheus` on
loopback) with SILENTWATCH_E2E_ARTIFACTS set, so the test saves the query_range results
it read; then draws them and prints the timings.

    .venv/bin/python benchmarks/alerts_e2e_figure.py [--out docs/images/alerts-e2e.png]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from harness import ROOT


def run_test(artifacts: Path) -> dict:
    env = {**os.environ, "SILENTWATCH_E2E_ARTIFACTS": str(artifacts)}
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "tests/test_alerts_e2e.py",
        ],
        cwd=ROOT,
        env=env,
        check=True,
    )
    return json.loads((artifacts / "alerts-e2e.json").read_text())


def _xy(result: list[dict], t0: float) -> tuple[list[float], list[float]]:
    if not result:
        return [], []
    values = result[0]["values"]
    return [float(t) - t0 for t, _ in values], [float(v) for _, v in values]


def draw(d: dict, out: Path) -> None:
    from silentwatch.offline.stress.plots import headless_pyplot

    plt = headless_pyplot()
    s, t0 = d["series"], d["t_update"]
    fig, axes = plt.subplots(3, 1, figsize=(8, 7.5), sharex=True)

    def shade(ax, key: str, color: str, label: str) -> None:
        x, _ = _xy(s[key], t0)
        if x:
            ax.axvspan(min(x), max(x), color=color, alpha=0.15, label=label)

    ax = axes[0]
    ax.step(*_xy(s["suspected_recent"], t0), where="post", label="suspected, of last 10 windows")
    ax.axhline(5, color="crimson", ls="--", lw=1, label="alert threshold (5 of 10)")
    shade(ax, "alert_suspected", "crimson", "SilentFailureSuspected firing")
    ax.set_ylabel("windows")
    ax.set_ylim(-0.3, 10.5)
    ax.legend(loc="upper left", fontsize=8)

    ax = axes[1]
    ax.plot(*_xy(s["confidence_window"], t0), label="mean confidence, latest window")
    ax.plot(*_xy(s["confidence_reference"], t0), ls="--", label="held-out reference")
    ax.set_ylabel("confidence")
    ax.legend(loc="upper left", fontsize=8)

    ax = axes[2]
    ax.plot(*_xy(s["labelled_auc"], t0), label="ROC-AUC on delayed labels (rolling)")
    ax.plot(*_xy(s["holdout_auc"], t0), ls="--", label="bundle held-out ROC-AUC")
    shade(ax, "alert_confirmed", "darkorange", "SilentFailureConfirmed firing")
    ax.set_ylabel("ROC-AUC")
    ax.set_xlabel("seconds since the simulated embedding-model update")
    ax.legend(loc="lower left", fontsize=8)
    for ax in axes:
        ax.axvline(0, color="grey", lw=1)
    fired = d["fired_after_update_s"]
    fig.suptitle(
        "End-to-end: a real Prometheus scraping silentwatch every 1 s "
        f"(clean: {d['clean_windows']} windows of {d['window']}; "
        f"suspected fired +{fired['SilentwatchSilentFailureSuspected']:.1f} s)",
        fontsize=9,
    )
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "images" / "alerts-e2e.png")
    ap.add_argument("--json", type=Path, help="an alerts-e2e.json saved earlier")
    args = ap.parse_args()
    if args.json:
        d = json.loads(args.json.read_text())
    else:
        d = run_test(Path(tempfile.mkdtemp(prefix="silentwatch-e2e-")))
    draw(d, args.out)
    fired = d["fired_after_update_s"]
    print(f"clean phase: {d['clean_windows']} windows of {d['window']} rows")
    print(f"most suspected windows of 10 during clean traffic: {d['clean_max_recent_suspected']:g}")
    for name, t in fired.items():
        print(f"{name}: firing {t:.1f} s after the update")
    print(f"figure: {args.out}")


if __name__ == "__main__":
    main()
