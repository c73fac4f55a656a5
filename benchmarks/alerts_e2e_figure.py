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
    s, t0 = d["series"], d["t_shift"]
    fig, axes = plt.subplots(3, 1, figsize=(8, 7.5), sharex=True)

    def shade(ax, key: str, color: str, label: str) -> None:
        x, _ = _xy(s[key], t0)
        if x:
            ax.axvspan(min(x), max(x), color=color, alpha=0.15, label=label)

    ax = axes[0]
    recent = _xy(s["input_drift_recent"], t0)
    ax.step(*recent, where="post", label="input drift, of the last 10 windows")
    ax.axhline(5, color="darkorange", ls="--", lw=1, label="ticket threshold (5 of 10)")
    shade(ax, "alert_ticket", "darkorange", "SilentwatchInputDrift firing (ticket)")
    ax.set_ylabel("windows")
    ax.set_ylim(-0.3, 10.5)
    ax.legend(loc="upper left", fontsize=8)

    ax = axes[1]
    x, low = _xy(s["canary_auc_live_low"], t0)
    _, high = _xy(s["canary_auc_live_high"], t0)
    if x:
        ax.fill_between(x, low, high, step="post", alpha=0.2, label="live 99.5% CI")
    ax.step(*_xy(s["canary_auc_live"], t0), where="post", label="canary ROC-AUC, live embedder")
    reference = _xy(s["canary_auc_reference"], t0)
    ax.step(*reference, where="post", ls="--", label="same texts, reference embeddings")
    shade(ax, "alert_page_canaries", "crimson", "SilentFailure{paired_canaries} firing")
    ax.set_ylabel("ROC-AUC")
    ax.legend(loc="lower left", fontsize=8)

    ax = axes[2]
    ax.plot(*_xy(s["labelled_auc"], t0), label="ROC-AUC on delayed labels (rolling)")
    ax.plot(*_xy(s["holdout_auc"], t0), ls="--", label="bundle held-out ROC-AUC")
    shade(ax, "alert_page_labels", "crimson", "SilentFailure{label_confirmation} firing")
    ax.set_ylabel("ROC-AUC")
    ax.set_xlabel("seconds since the harmless topic shift")
    ax.legend(loc="lower left", fontsize=8)
    broken = d["t_broken"] - t0
    for ax in axes:
        ax.axvline(0, color="grey", lw=1)
        ax.axvline(broken, color="black", lw=1)
    top = axes[0].get_xaxis_transform()  # x in data, y in axes fraction
    axes[0].text(0, 1.02, " topic shift (harmless)", transform=top, fontsize=7, color="grey")
    axes[0].text(broken, 1.02, " broken embedder", transform=top, fontsize=7)
    fired = d["fired_s"]
    fig.suptitle(
        "End-to-end: a real Prometheus scraping silentwatch every 1 s "
        f"(clean: {d['clean_windows']} windows of {d['window']} rows)\n"
        f"ticket +{fired['SilentwatchInputDrift']:.1f} s after the shift; page +"
        f"{fired['SilentwatchSilentFailure:paired_canaries']:.1f} s (canaries), +"
        f"{fired['SilentwatchSilentFailure:label_confirmation']:.1f} s (labels) after the "
        "broken embedder",
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
    print(f"clean phase: {d['clean_windows']} windows of {d['window']} rows")
    most = d["clean_max_recent_input_drift"]
    print(f"most input-drift windows of 10 during clean traffic: {most:g}")
    for name, t in d["fired_s"].items():
        phase = "the topic shift" if name == "SilentwatchInputDrift" else "the broken embedder"
        print(f"{name}: firing {t:.1f} s after {phase}")
    print(f"figure: {args.out}")


if __name__ == "__main__":
    main()
