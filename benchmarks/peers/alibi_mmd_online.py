"""Run alibi-detect's MMDDriftOnline over streams; the peer for benchmarks/detection.py.

Runs in the peer's own venv (``.peer-alibi``: alibi-detect needs numpy < 2), so data
arrives as files: ``--reference ref.npy`` and ``--streams *.npz`` (each with ``x``, the
samples in arrival order, and ``change_at``, -1 for none). One detector is configured
per call (configuration is the slow part) and ``reset_state()`` between streams;
configure a fresh one per seed by calling this once per seed.

Output JSON: configuration seconds, then per stream the first false alarm before the
change, the first detection at or after it, the delay in samples and ms per update.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--reference", type=Path, required=True)
    ap.add_argument("--streams", type=Path, nargs="+", required=True)
    ap.add_argument("--ert", type=float, required=True, help="expected run time in samples")
    ap.add_argument("--window-size", type=int, default=64)
    ap.add_argument("--n-bootstraps", type=int, default=5000)
    ap.add_argument("--max-after", type=int, default=1024)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()

    import torch
    from alibi_detect.cd import MMDDriftOnline

    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    x_ref = np.load(args.reference).astype(np.float32)
    t0 = time.perf_counter()
    cd = MMDDriftOnline(
        x_ref,
        ert=args.ert,
        window_size=args.window_size,
        n_bootstraps=args.n_bootstraps,
        backend="pytorch",
        device="cpu",
        verbose=False,
    )
    config_s = time.perf_counter() - t0
    results = []
    for path in args.streams:
        d = np.load(path)
        x, change = d["x"].astype(np.float32), int(d["change_at"])
        cd.reset_state()
        false_at = detected_at = None
        stop = x.shape[0] if change < 0 else min(x.shape[0], change + args.max_after)
        t1 = time.perf_counter()
        n = 0
        for t in range(stop):
            n += 1
            if cd.predict(x[t])["data"]["is_drift"]:
                if change < 0 or t < change:
                    if false_at is None:
                        false_at = t
                    cd.reset_state()  # count the first false alarm, keep watching
                    continue
                detected_at = t
                break
        results.append(
            {
                "name": path.stem,
                "change_at": change,
                "false_alarm_at": false_at,
                "detected_at": detected_at,
                "delay": None if detected_at is None else detected_at - change,
                "ms_per_update": (time.perf_counter() - t1) / max(n, 1) * 1e3,
            }
        )
    args.out.write_text(
        json.dumps(
            {
                "peer": "alibi-detect 0.13.0 MMDDriftOnline (pytorch, CPU)",
                "ert": args.ert,
                "window_size": args.window_size,
                "n_bootstraps": args.n_bootstraps,
                "config_seconds": config_s,
                "streams": results,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
