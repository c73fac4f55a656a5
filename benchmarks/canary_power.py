"""Which paired canary statistic has the power to see a harmful embedder change at K=256?

The sidecar's paired canaries (docs/detection.md, "Paired canaries") page when the frozen
head's ROC-AUC on the canaries, reference vs live embeddings of the same texts, dropped by
more than 0.01 (one-sided paired DeLong, alpha 0.005). This script compares that test with
other paired tests on the same (p_ref, p_live, y), on harm.py's two data sets and bundles:

* ``auc``      paired DeLong AUC drop (monitor/evaluation/paired.py), margin m;
* ``brier``    mean of d_i = (p_live_i - y_i)^2 - (p_ref_i - y_i)^2, one-sided normal
               lower bound (and a sign-flip permutation p-value on the bundle's canaries);
* ``logloss``  the same on log loss (p clipped to [1e-6, 1 - 1e-6]);
* ``acc``      paired accuracy drop at 0.5 (Wald lower bound on discordant pairs) and
               McNemar's exact one-sided test (margin 0);
* ``margin``   mean drop of the signed logit margin (2y - 1) * logit(p);
* ``binormal`` drop of the binormal AUC Phi((mu1 - mu0) / sqrt(s1^2 + s0^2)) on the
               logits, paired SE by its influence function (stratified by class).

Live embedders: every embedder scenario of harm.py (``sc.live_embed``), plus bfloat16
inference of the same model and an uncached re-run of the same model (another batch size).
The held-out rows of each bundle are embedded once per live embedder; the bundle's own 256
canaries are a subset of them. Power: stratified bootstrap draws (with replacement) of K
held-out rows, half of each class, B times.

    OMP_NUM_THREADS=1 python benchmarks/canary_power.py            # embeds once, then tests
"""

from __future__ import annotations

import argparse
import math
import os
import time
from pathlib import Path
from statistics import NormalDist

import harm  # benchmarks/ is on sys.path when this runs as a file, as harm.py's harness
import numpy as np

from silentwatch.monitor.bundle import load_bundle
from silentwatch.monitor.evaluation.paired import (
    auc_drop_paired_test,
    delong_paired,
    paired_angles_degrees,
)

Z = NormalDist().inv_cdf
EPS = 1e-6
WORK = Path(os.environ.get("CANARY_POWER_DIR", "/tmp/canary_power"))


# -- stage 1: scores of the held-out rows under every live embedder ----------------------
def stage1() -> dict[str, dict]:
    out = {}
    cached = {n: WORK / f"{n}.npz" for n in ("civil_comments", "instructions")}
    if all(p.exists() for p in cached.values()):
        for name, p in cached.items():
            z = np.load(p, allow_pickle=True)
            out[name] = {k: z[k] for k in z.files}
        return out
    WORK.mkdir(parents=True, exist_ok=True)
    args = harm.parse_args(["--quick", "--no-sidecar"])
    for ds in harm.build_datasets(args):
        b = load_bundle(ds.bundle_dir)
        h = ds.holdout
        texts = [ds.texts.text[i] for i in h]
        y = ds.y[h].astype(np.int8)
        x_ref = harm.embed(harm.VALIDATED, texts)
        can = b.canaries
        pos = {t: i for i, t in enumerate(texts)}
        canary_idx = np.array([pos[t] for t in can.texts])
        assert np.array_equal(y[canary_idx], can.labels)
        dev = float(np.abs(x_ref[canary_idx] - can.embeddings).max())
        print(f"[{ds.name}] {len(texts)} held out ({int(y.sum())} unsafe); canaries "
              f"{len(can.texts)} ({int(can.labels.sum())} unsafe), max |ref - bundle| {dev:.1e}",
              flush=True)  # fmt: skip
        p_ref = ds.scorer.predict_proba(x_ref).astype(np.float64)
        rec = {"y": y, "canary_idx": canary_idx, "p_ref": p_ref}
        names, cands, deltas = [], [], []
        lives = [(sc.name, sc.candidate, sc.live) for sc in ds.scenarios if sc.kind == "embedder"]
        lives.append(("bfloat16 inference (same model)", "benign",
                      harm.LiveEmbedder("variant", "minilm-bf16")))  # fmt: skip
        for name, cand, live in lives:
            t0 = time.perf_counter()
            x = live.embed(texts)
            rec[f"p_{len(names)}"] = ds.scorer.predict_proba(x).astype(np.float64)
            rec[f"a_{len(names)}"] = paired_angles_degrees(x_ref, x)
            names.append(name)
            cands.append(cand)
            sc = next((s for s in ds.scenarios if s.name == name), None)
            deltas.append(np.nan if sc is None else _traffic_delta(ds, sc))
            print(f"  {name}: {time.perf_counter() - t0:.0f} s", flush=True)
        # The same model re-run outside the cache, another batch size.
        from silentwatch.offline.embedders import open_embedder

        t0 = time.perf_counter()
        e = open_embedder("minilm", batch_size=17)
        x = np.asarray(e.embed(texts), dtype=np.float32)
        rec[f"p_{len(names)}"] = ds.scorer.predict_proba(x).astype(np.float64)
        rec[f"a_{len(names)}"] = paired_angles_degrees(x_ref, x)
        names.append("same model re-run (batch 17, uncached)")
        cands.append("benign")
        deltas.append(0.0)
        print(f"  same model: {time.perf_counter() - t0:.0f} s", flush=True)
        rec["names"] = np.array(names)
        rec["cands"] = np.array(cands)
        rec["traffic_delta"] = np.array(deltas)
        np.savez(WORK / f"{ds.name}.npz", **rec)
        out[ds.name] = rec
    return out


def _traffic_delta(ds: harm.Dataset, sc: harm.Scenario) -> float:
    """The scenario's traffic ROC-AUC minus the iid stream's (quick run: 512 rows)."""
    from silentwatch.monitor.evaluation.classification import roc_auc

    c = ds.scenarios[0]
    return float(
        roc_auc(ds.scorer.predict_proba(sc.x), sc.y) - roc_auc(ds.scorer.predict_proba(c.x), c.y)
    )


# -- the tests -----------------------------------------------------------------------------
def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, EPS, 1 - EPS)
    return np.log(p) - np.log1p(-p)


def per_case(y: np.ndarray, pr: np.ndarray, pl: np.ndarray) -> dict[str, np.ndarray]:
    """Per-canary harm differences, positive = live worse."""
    prc, plc = np.clip(pr, EPS, 1 - EPS), np.clip(pl, EPS, 1 - EPS)
    s = 2.0 * y - 1.0
    ll = lambda p: -(y * np.log(p) + (1 - y) * np.log1p(-p))  # noqa: E731
    return {
        "brier": (pl - y) ** 2 - (pr - y) ** 2,
        "logloss": ll(plc) - ll(prc),
        "acc": ((pr >= 0.5) == (y == 1)).astype(float) - ((pl >= 0.5) == (y == 1)),
        "margin": s * (logit(pr) - logit(pl)),
    }


def mean_se(d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean of d along the last axis and its standard error."""
    return d.mean(-1), d.std(-1, ddof=1) / math.sqrt(d.shape[-1])


def binormal(y: np.ndarray, pr: np.ndarray, pl: np.ndarray) -> tuple[float, float]:
    """Drop of the binormal AUC on logits, with the paired influence-function SE."""
    vals, ifs = [], []
    for p in (pr, pl):
        lg = logit(p)
        a, b = lg[y == 1], lg[y == 0]
        m1, m0, v1, v0 = a.mean(), b.mean(), a.var(), b.var()
        s = math.sqrt(v1 + v0)
        z = (m1 - m0) / s
        f = NormalDist().pdf(z)
        if1 = f * ((a - m1) / s - z / (2 * s * s) * ((a - m1) ** 2 - v1))
        if0 = f * (-(b - m0) / s - z / (2 * s * s) * ((b - m0) ** 2 - v0))
        vals.append(NormalDist().cdf(z))
        ifs.append((if1, if0))
    drop = vals[0] - vals[1]
    d1, d0 = ifs[0][0] - ifs[1][0], ifs[0][1] - ifs[1][1]
    return drop, math.sqrt(d1.var(ddof=1) / d1.size + d0.var(ddof=1) / d0.size)


def mcnemar_p(acc_d: np.ndarray) -> float:
    """One-sided exact McNemar: P(X >= b | b + c, 1/2), b = ref right & live wrong."""
    from scipy.stats import binom

    b, c = int((acc_d > 0).sum()), int((acc_d < 0).sum())
    return float(binom.sf(b - 1, b + c, 0.5)) if b + c else 1.0


def signflip_p(d: np.ndarray, margin: float, n: int = 20000, seed: int = 0) -> float:
    """Sign-flip permutation p-value of H0: d - margin symmetric about 0 (mean <= margin)."""
    e = d - margin
    rng = np.random.default_rng(seed)
    signs = rng.choice([-1.0, 1.0], size=(n, e.size))
    stat = (signs * np.abs(e)).mean(1)
    return float((1 + (stat >= e.mean()).sum()) / (n + 1))


TESTS = ["auc", "brier", "logloss", "acc", "margin", "binormal"]


def all_stats(y, pr, pl) -> dict[str, tuple[float, float]]:
    """(statistic, standard error) per test for one canary set; positive = live worse."""
    t = auc_drop_paired_test(y, pr, pl, margin=0.0)
    out = {"auc": (t.drop, t.standard_error)}
    for k, d in per_case(y, pr, pl).items():
        out[k] = tuple(float(v) for v in mean_se(d))
    out["binormal"] = binormal(y, pr, pl)
    return out


def draws(y: np.ndarray, k: int, b: int, seed: int) -> np.ndarray:
    """(b, k) stratified bootstrap draws (with replacement) of held-out indices, half per class."""
    rng = np.random.default_rng(seed)
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    return np.concatenate([rng.choice(pos, (b, k // 2)), rng.choice(neg, (b, k - k // 2))], axis=1)


def boot_stats(y, pr, pl, k, b, seed) -> dict[str, np.ndarray]:
    """(b, 2) statistic and SE of every test over b bootstrap canary sets of size k."""
    idx = draws(y, k, b, seed)
    res: dict[str, np.ndarray] = {}
    for name, d in per_case(y, pr, pl).items():
        res[name] = np.stack(mean_se(d[idx]), axis=1)
    res["auc"] = np.array(
        [
            (lambda t: (t.drop, t.standard_error))(
                auc_drop_paired_test(y[idx[r]], pr[idx[r]], pl[idx[r]], margin=0.0)
            )
            for r in range(b)
        ]
    )
    res["binormal"] = np.array([binormal(y[idx[r]], pr[idx[r]], pl[idx[r]]) for r in range(b)])
    return res


# -- the report -----------------------------------------------------------------------------
#: Margins tried per test (the statistic's units: AUC, Brier, nats, accuracy, logit).
MARGINS = {
    "auc": (0.01, 0.005, 0.0),
    "brier": (0.02, 0.01, 0.005),
    "logloss": (0.1, 0.05, 0.02),
    "acc": (0.02, 0.01),
    "margin": (0.5, 0.25),
    "binormal": (0.01, 0.005),
}
#: The rules compared in the power table: (label, [(test, margin, alpha), ...]) pages when any
#: part confirms (Bonferroni: the parts' alphas add up to 0.005).
RULES = [
    ("AUC m.01 (now)", [("auc", 0.01, 0.005)]),
    ("AUC m.005", [("auc", 0.005, 0.005)]),
    ("Brier m.01", [("brier", 0.01, 0.005)]),
    ("Brier m.005", [("brier", 0.005, 0.005)]),
    ("LogL m.05", [("logloss", 0.05, 0.005)]),
    ("Acc m.02", [("acc", 0.02, 0.005)]),
    ("Binorm m.01", [("binormal", 0.01, 0.005)]),
    ("AUC.01|Brier.01 Bonf", [("auc", 0.01, 0.0025), ("brier", 0.01, 0.0025)]),
]


def confirmed(st: np.ndarray, margin: float, alpha: float) -> np.ndarray:
    """``st``: (..., 2) statistic and SE -> lower bound > margin."""
    return st[..., 0] - Z(1 - alpha) * st[..., 1] > margin


def report(ks: list[int]) -> None:
    for name in ("civil_comments", "instructions"):
        r = dict(np.load(WORK / f"{name}.npz", allow_pickle=True))
        print(f"\n## {name}\n")
        print("### the bundle's canaries (K=256): statistic / lower bound (alpha 0.005)\n")
        head = (
            "| scenario | traffic dAUC | angle | "
            + " | ".join(TESTS)
            + " | McNemar p | sign-flip p (Brier) |"
        )
        print(head)
        print("|" + "---|" * (head.count("|") - 1))
        rows = []
        for j, sname in enumerate(r["names"]):
            z = np.load(WORK / f"stats_{name}_{j}.npz")
            can = z["can"]
            cells = [
                f"{can[i, 0]:+.4f} / {can[i, 0] - Z(0.995) * can[i, 1]:+.4f}"
                for i in range(len(TESTS))
            ]
            print(
                f"| {sname} | {float(z['delta']):+.3f} | {float(z['angle']):.1f} | "
                + " | ".join(cells)
                + f" | {float(z['mcnemar']):.2g} | {float(z['signflip_brier']):.3f} |"
            )
            rows.append((sname, z))
        print("\n### held-out (all rows): statistic per test (the population value)\n")
        print("| scenario | " + " | ".join(TESTS) + " | Brier / AUC drop |")
        print("|" + "---|" * (len(TESTS) + 2))
        for sname, z in rows:
            f = z["full"]
            ratio = f[1, 0] / f[0, 0] if abs(f[0, 0]) > 0.003 else float("nan")
            vals = " | ".join(f"{v:+.4f}" for v in f[:, 0])
            print(f"| {sname} | {vals} | {ratio:.2f} |")
        for k in ks:
            print(f"\n### bootstrap power at K={k} (share of draws that page)\n")
            print("| scenario | " + " | ".join(lbl for lbl, _ in RULES) + " |")
            print("|" + "---|" * (len(RULES) + 1))
            for sname, z in rows:
                cells = []
                for _, parts in RULES:
                    hit = np.zeros(z[f"auc_{k}"].shape[0], dtype=bool)
                    for t, m, al in parts:
                        hit |= confirmed(z[f"{t}_{k}"], m, al)
                    cells.append(f"{hit.mean():.2f}")
                print(f"| {sname} | " + " | ".join(cells) + " |")
        print("\n### canaries for 80% power (normal approximation, balanced population "
              f"value = bootstrap mean at K={ks[-1]}, per-canary SD from K=256)\n")  # fmt: skip
        print("| scenario | " + " | ".join(f"{lbl} (delta)" for lbl, _ in RULES[:7]) + " |")
        print("|" + "---|" * 8)
        z80 = Z(0.995) + Z(0.80)
        for sname, z in rows:
            cells = []
            for _, parts in RULES[:7]:
                t, m, _al = parts[0]
                delta = float(z[f"{t}_{ks[-1]}"][:, 0].mean())
                sd = float(np.median(z[f"{t}_{ks[0]}"][:, 1])) * math.sqrt(ks[0])
                if delta <= m or sd == 0:
                    cells.append(f"never ({delta:+.4f})")
                else:
                    cells.append(f"{math.ceil((z80 * sd / (delta - m)) ** 2):,} ({delta:+.4f})")
            print(f"| {sname} | " + " | ".join(cells) + " |")
        print("\n### benign: largest lower bound over the bootstrap draws (alpha 0.005)\n")
        print("| scenario | K | " + " | ".join(TESTS) + " |")
        print("|" + "---|" * (len(TESTS) + 2))
        for sname, z in rows:
            if "int8" not in sname and "bfloat16" not in sname and "same model" not in sname:
                continue
            for k in ks:
                lb = [z[f"{t}_{k}"][:, 0] - Z(0.995) * z[f"{t}_{k}"][:, 1] for t in TESTS]
                print(f"| {sname} | {k} | " + " | ".join(f"{v.max():+.4f}" for v in lb) + " |")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--boot", type=int, default=400)
    ap.add_argument("--ks", default="256,512,1024,2048")
    ap.add_argument("--report", action="store_true", help="only print the tables")
    a = ap.parse_args()
    ks = [int(v) for v in a.ks.split(",")]
    if a.report:
        report(ks)
        return 0
    data = stage1()
    ks = [int(v) for v in a.ks.split(",")]
    for name, r in data.items():
        y, pr = r["y"].astype(float), r["p_ref"]
        ci = r["canary_idx"]
        print(f"\n=== {name}: {y.size} held out ({int(y.sum())} unsafe), bundle canaries "
              f"{ci.size}; AUC ref holdout {delong_paired(y, pr, pr).auc_a:.3f} canaries "
              f"{delong_paired(y[ci], pr[ci], pr[ci]).auc_a:.3f}; Brier ref holdout "
              f"{np.mean((pr - y) ** 2):.4f} canaries {np.mean((pr[ci] - y[ci]) ** 2):.4f}; "
              f"acc ref holdout {np.mean((pr >= 0.5) == (y == 1)):.3f}; "
              f"acc ref canaries {np.mean((pr[ci] >= 0.5) == (y[ci] == 1)):.3f}")  # fmt: skip
        for j, sname in enumerate(r["names"]):
            pl = r[f"p_{j}"]
            t0 = time.perf_counter()
            full = all_stats(y, pr, pl)
            can = all_stats(y[ci], pr[ci], pl[ci])
            dcan = per_case(y[ci], pr[ci], pl[ci])
            boots = {k: boot_stats(y, pr, pl, k, a.boot, 7 + k) for k in ks}
            np.savez(
                WORK / f"stats_{name}_{j}.npz",
                **{f"{t}_{k}": boots[k][t] for k in ks for t in TESTS},
                full=np.array([full[t] for t in TESTS]),
                can=np.array([can[t] for t in TESTS]),
                signflip_brier=signflip_p(dcan["brier"], 0.0),
                mcnemar=mcnemar_p(dcan["acc"]),
                angle=r[f"a_{j}"].mean(),
                delta=r["traffic_delta"][j],
            )
            print(f"  {sname}: {time.perf_counter() - t0:.0f} s", flush=True)
    report(ks)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    raise SystemExit(main())
