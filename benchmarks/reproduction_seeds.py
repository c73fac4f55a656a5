"""Paper A's headline numbers over several train/test splits and several drift seeds
(mean ± sd), for the reproduction.

The balanced sample is fixed (seed 42, repeated texts dropped, as in
docs/reproduction-paper-a.md), so the embeddings come from the gate's cache
(`.cache/embeddings`) after the first run. Two tables: (1) the 70/10/20 split changes
(``--seeds``; the drift operators' seed stays 42): the head is refitted on each train split
and frozen, and paper A's sweep runs on its test split; (2) the split stays seed 42 and the
drift operators' seed changes (``--noise-seeds``: the Gaussian noise, the directional
vector and the rotation's orthogonal matrix are redrawn).

    .venv/bin/python benchmarks/reproduction_seeds.py [--seeds 42 1 2 3 4] \
        [--noise-seeds 42 1 2 3 4] [--model minilm smollm2]
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


def sweep_once(name: str, x, ev, fractions, split_seed: int, drift_seed: int) -> dict:
    """One head (fitted on split ``split_seed``) swept with drift seed ``drift_seed``."""
    split = stratified_split(ev.y, fractions, seed=split_seed)
    head = scorer_from_arrays(fit_classifier(x[split.train], ev.y[split.train], seed=split_seed))
    settings = StressSettings(fine_steps=16, bootstrap=0, seed=drift_seed)
    r = run_stress({name: StressModel(x[split.test], ev.y[split.test], head)}, settings)
    g0 = _at(r.points, "gaussian_per_dimension", 0.0)
    g2 = _at(r.points, "gaussian_per_dimension", 0.02)
    cliff = {c.kind: c for c in r.cliffs}
    return {
        "clean_auc": g0.roc_auc,
        "auc_002": g2.roc_auc,
        "angle_002": g2.angle_degrees,
        "conf_change": g2.mean_confidence / g0.mean_confidence - 1.0,
        "sfr_clean": g0.silent_failure_ratio,
        "sfr_002": g2.silent_failure_ratio,
        "total_norm_auc_002": _at(r.points, "gaussian_total_norm", 0.02).roc_auc,
        "gauss_fail_deg": cliff["gaussian_per_dimension"].failure_angle_degrees,
        "gauss_cliff_width": cliff["gaussian_per_dimension"].cliff_width_magnitude,
        "rot_fail_deg": cliff["rotation"].failure_angle_degrees,
        "rot_minus_gauss_015": _at(r.points, "rotation", 0.15).roc_auc
        - _at(r.points, "gaussian_per_dimension", 0.15).roc_auc,
    }


LABELS = [
    ("clean ROC-AUC", "clean_auc", ".3f"),
    ("ROC-AUC at Gaussian s = 0.02 (per dimension)", "auc_002", ".3f"),
    ("measured angle at s = 0.02 (deg)", "angle_002", ".1f"),
    ("mean confidence change, clean -> s = 0.02", "conf_change", "+.1%"),
    ("silent-failure rate, clean", "sfr_clean", ".3f"),
    ("silent-failure rate at s = 0.02", "sfr_002", ".3f"),
    ("ROC-AUC at s = 0.02, total-norm", "total_norm_auc_002", ".3f"),
    ("Gaussian failure angle (AUC < 0.6, deg)", "gauss_fail_deg", ".1f"),
    ("Gaussian cliff width (s, 10% to 90% of the margin lost)", "gauss_cliff_width", ".4f"),
    ("rotation failure angle (deg)", "rot_fail_deg", ".1f"),
    ("ROC-AUC at s = 0.15: rotation minus Gaussian", "rot_minus_gauss_015", "+.3f"),
]


def _table(rows: list[tuple[str, list[dict]]]) -> None:
    print(table_header(["", *(name for name, _ in rows)], "l" * (1 + len(rows))))
    for label, key, spec in LABELS:
        cells = [_fmt([s[key] for s in per_seed], spec) for _, per_seed in rows]
        print(table_row([label, *cells]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[42, 1, 2, 3, 4])
    ap.add_argument("--noise-seeds", type=int, nargs="+", default=[42, 1, 2, 3, 4])
    ap.add_argument("--model", nargs="+", default=["minilm", "smollm2"])
    ap.add_argument("--cache-dir", type=Path, default=ROOT / ".cache" / "embeddings")
    args = ap.parse_args()

    data = DataSettings(
        path=[DATA / "autolabel_civil_comments_1k.csv", DATA / "cody140_civil_comments_4900.csv"],
        label_column="toxicity",
    )
    ev = load_evalset(data)
    by_split, by_noise = [], []
    for name in args.model:
        x = embed_cached(open_embedder(name), ev.texts, args.cache_dir)
        by_split.append(
            (name, [sweep_once(name, x, ev, data.fractions, s, 42) for s in args.seeds])
        )
        by_noise.append(
            (name, [sweep_once(name, x, ev, data.fractions, 42, s) for s in args.noise_seeds])
        )
    print(
        f"{len(ev.texts):,} balanced Civil Comments rows ({ev.duplicates_dropped:,} repeated "
        f"texts dropped of {ev.rows_loaded:,})\n"
    )
    print(f"Split seeds {args.seeds}, drift seed 42:\n")
    _table(by_split)
    print(f"\nSplit seed 42, drift seeds {args.noise_seeds}:\n")
    _table(by_noise)


if __name__ == "__main__":
    main()
