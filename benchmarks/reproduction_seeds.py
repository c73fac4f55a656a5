"""Paper A's headline numbers over several train/test splits (mean ± sd), for the reproduction.

The balanced sample is fixed (seed 42, as in docs/reproduction-paper-a.md), so the
embeddings come from the gate's cache (`.cache/embeddings`) after the first run; only the
70/10/20 split changes. For each model and split seed: the head is refitted on the train
split and frozen, and paper A's sweep runs on the test split.

    .venv/bin/python benchmarks/reproduction_seeds.py [--seeds 42 1 2 3 4] [--model minilm smollm2]
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from harness import ROOT, SHARED_DATA, table_header, table_row

from silentwatch.monitor.training import fit_classifier
from silentwatch.offline.embedders import embed_cached, open_embedder
from silentwatch.offline.evalset import DataSettings, load_evalset
from silentwatch.offline.gate.run import scorer_from_arrays
from silentwatch.offline.splits import stratified_split
from silentwatch.offline.stress import StressModel, StressSettings, run_stress

DATA = SHARED_DATA / "civil_comments"


def _at(points, kind: str, s: float):
    return next(
        p
        for p in points
        if p.kind == kind and p.sweep == "checkpoint" and abs(p.magnitude - s) < 1e-12
    )


def _fmt(values: list[float | None], spec: str = ".3f") -> str:
    vals = [v for v in values if v is not None]
    if not vals:
        return "never"
    mean = statistics.fmean(vals)
    sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
    missing = f" ({len(values) - len(vals)} never)" if len(vals) < len(values) else ""
    return f"{format(mean, spec)} ± {format(sd, spec)}{missing}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[42, 1, 2, 3, 4])
    ap.add_argument("--model", nargs="+", default=["minilm", "smollm2"])
    ap.add_argument("--cache-dir", type=Path, default=ROOT / ".cache" / "embeddings")
    args = ap.parse_args()

    data = DataSettings(
        path=[DATA / "autolabel_civil_comments_1k.csv", DATA / "cody140_civil_comments_4900.csv"],
        label_column="toxicity",
    )
    ev = load_evalset(data)
    settings = StressSettings(fine_steps=16)
    rows = []
    for name in args.model:
        x = embed_cached(open_embedder(name), ev.texts, args.cache_dir)
        per_seed = []
        for seed in args.seeds:
            split = stratified_split(ev.y, data.fractions, seed=seed)
            head = scorer_from_arrays(fit_classifier(x[split.train], ev.y[split.train], seed=seed))
            r = run_stress({name: StressModel(x[split.test], ev.y[split.test], head)}, settings)
            g0 = _at(r.points, "gaussian_per_dimension", 0.0)
            g2 = _at(r.points, "gaussian_per_dimension", 0.02)
            cliff = {c.kind: c for c in r.cliffs}
            per_seed.append(
                {
                    "clean_auc": g0.roc_auc,
                    "auc_002": g2.roc_auc,
                    "angle_002": g2.angle_degrees,
                    "conf_change": g2.mean_confidence / g0.mean_confidence - 1.0,
                    "sfr_clean": g0.silent_failure_ratio,
                    "sfr_002": g2.silent_failure_ratio,
                    "total_norm_auc_002": _at(r.points, "gaussian_total_norm", 0.02).roc_auc,
                    "gauss_fail_deg": cliff["gaussian_per_dimension"].failure_angle_degrees,
                    "rot_fail_deg": cliff["rotation"].failure_angle_degrees,
                }
            )
        rows.append((name, per_seed))

    print(f"{len(ev.texts):,} balanced Civil Comments rows; split seeds {args.seeds}\n")
    labels = [
        ("clean ROC-AUC", "clean_auc", ".3f"),
        ("ROC-AUC at Gaussian s = 0.02 (per dimension)", "auc_002", ".3f"),
        ("measured angle at s = 0.02 (deg)", "angle_002", ".1f"),
        ("mean confidence change, clean -> s = 0.02", "conf_change", "+.1%"),
        ("silent-failure rate, clean", "sfr_clean", ".3f"),
        ("silent-failure rate at s = 0.02", "sfr_002", ".3f"),
        ("ROC-AUC at s = 0.02, total-norm", "total_norm_auc_002", ".3f"),
        ("Gaussian failure angle (AUC < 0.6, deg)", "gauss_fail_deg", ".1f"),
        ("rotation failure angle (deg)", "rot_fail_deg", ".1f"),
    ]
    print(table_header(["", *(name for name, _ in rows)], "l" * (1 + len(rows))))
    for label, key, spec in labels:
        cells = [_fmt([s[key] for s in per_seed], spec) for _, per_seed in rows]
        print(table_row([label, *cells]))


if __name__ == "__main__":
    main()
