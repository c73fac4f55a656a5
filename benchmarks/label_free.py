"""Label-free evidence that the map changed, not the content (issue 15, item 5: research).

For each candidate statistic and each data set of ``benchmarks/harm.py`` (same bundles,
same scenarios, same embedding cache): fit it on the bundle's training rows (the rows
the head was fitted on, from which the bundle's reference is drawn), calibrate a
threshold at ``alpha`` (1%) per window on windows of the bundle's held-out rows (as the
sidecar's suite does: the ``1 - alpha`` quantile, widened around the null median by
``sqrt(1 + n / pool)``), then count the share of each scenario's windows it flags.
A scenario's windows are ``--windows`` draws of ``window`` rows (without replacement
within a window) from its stream; the stream's disjoint windows are counted too.

A candidate passes only if it is quiet on every traffic shift (and the control) whose
measured |dAUC| < 0.01 (<= ``2 alpha`` of windows: the calibration's own noise,
docs/detection.md) and flags most windows (>= 50%) of every embedder change whose
dAUC <= -0.02. Embedder changes the head survives (|dAUC| < 0.01) and traffic shifts that
cost AUC are reported beside it, not scored: the first are a changed map without harm,
the second a change of content that only labels can call.

Candidates (one statistic per window of rows ``x``, scores ``p``):

(a) ``constant_dims``: the dimensions constant on every training row (MiniLM-L6 has three);
    the largest |x - reference value| over them in the window (bound floored at 1e-4).
    ``outlier_dims_z``: the reference's 8 dimensions with the largest |mean| (MiniLM's
    "rogue" dimensions); max over them of |window mean - reference mean| / (sd / sqrt(n)).
    ``lowvar_dims``: the 8 dimensions with the smallest reference variance; |mean over
    them of log(window variance / reference variance)|.
(b) ``subspace_share``: the share of the window's own variance (centred on the window's
    mean, so a shift of the mean alone does not count) inside the reference's top-32
    principal directions; low alarms. ``effective_rank``: exp(entropy) of the window
    covariance's normalised eigenvalues; two-sided. ``spectrum_l1``: L1 distance between
    the window's top-32 normalised eigenvalues and their median on held-out windows.
(c) ``raw_norm_ks``: KS distance between the window's raw (pre-normalisation) row norms
    and the reference's, for a caller that sends raw vectors (``--raw``; re-embeds every
    text once without the normalisation, cached as ``pooling=mean-raw``).
(d) ``panel_boot`` / ``panel_halves``: 8 heads (paper A's recipe) on bootstrap resamples of
    the training rows / on 8 random halves of the dimensions; the share of window rows on
    which they do not all agree on the flag (p > 0.5); high alarms.
(e) ``atc_drop``: ATC (Garg et al. 2022, max-confidence score): the threshold t with
    mean(conf > t) = accuracy on the held-out rows; the window's estimate is
    mean(conf > t); the statistic is held-out accuracy - estimate (one-sided: a drop).

    python benchmarks/label_free.py            # after (or without) harm.py: shares its cache
    python benchmarks/label_free.py --quick    # 512 rows per scenario, 100 windows
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from harm import (
    ALPHA,
    BENIGN_MAX,
    CACHE,
    HARMFUL_MIN,
    Dataset,
    auc_ci,
    build_datasets,
    parse_args,
    verdict,
)
from harness import machine, markdown_table, write_json
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from silentwatch.monitor.scoring import confidence

QUIET, LOUD = 2 * ALPHA, 0.5  # benign: at most this share of windows; harmful: at least
K_DIMS, K_PCS, PANEL = 8, 32, 8
CONSTANT_TOLERANCE = 1e-4  # constant_dims: float32 noise is ~1e-8, any model change ~1e-2


# -- candidates ---------------------------------------------------------------------------
@dataclass
class Fitted:
    """What a candidate learnt from the training rows (and held-out rows, for ATC)."""

    name: str
    family: str
    stat: Callable[[np.ndarray, np.ndarray], float]  # (window rows, window scores) -> value
    side: str = "high"  # high: large values alarm; low: small ones; two: far from the median
    needs_raw: bool = False


def outlier_dims(ref: np.ndarray) -> list[Fitted]:
    mu, sd = ref.mean(0), ref.std(0)
    top = np.argsort(-np.abs(mu))[:K_DIMS]
    # MiniLM-L6 has dimensions that are constant (zero) on every text: kept apart.
    dead = np.flatnonzero(sd <= 1e-6 * np.median(sd))
    low = np.setdiff1d(np.argsort(sd), dead, assume_unique=True)[:K_DIMS]
    var_low = sd[low] ** 2

    def z(x: np.ndarray, _p: np.ndarray) -> float:
        return float(np.max(np.abs(x[:, top].mean(0) - mu[top]) / (sd[top] / np.sqrt(len(x)))))

    def lowvar(x: np.ndarray, _p: np.ndarray) -> float:
        return float(abs(np.mean(np.log(x[:, low].var(0) / var_low))))

    def constant(x: np.ndarray, _p: np.ndarray) -> float:
        return float(np.abs(x[:, dead] - mu[dead]).max()) if dead.size else 0.0

    return [
        Fitted("outlier_dims_z", "a", z),
        Fitted("lowvar_dims", "a", lowvar),
        Fitted("constant_dims", "a", constant),
    ]


_EIG: list[Any] = [None, None]  # (window array, its eigenvalues): the three share one


def _eig(x: np.ndarray) -> np.ndarray:
    """Eigenvalues (descending) of the window's covariance, via its rows' Gram matrix."""
    if _EIG[0] is x:
        return _EIG[1]
    c = x - x.mean(0)
    e = np.clip(np.linalg.eigvalsh(c @ c.T)[::-1], 0.0, None) / max(len(x) - 1, 1)
    _EIG[0], _EIG[1] = x, e
    return e


def spectrum(ref: np.ndarray, held: np.ndarray, window: int, seed: int) -> list[Fitted]:
    mu = ref.mean(0)
    _, _, vt = np.linalg.svd(ref - mu, full_matrices=False)
    v = vt[:K_PCS]
    rng = np.random.default_rng(seed)
    curves = []
    for _ in range(200):
        w = held[rng.choice(len(held), window, replace=False)]
        e = _eig(w)[:K_PCS]
        curves.append(e / e.sum())
    median_curve = np.median(curves, axis=0)

    def share(x: np.ndarray, _p: np.ndarray) -> float:
        c = x - x.mean(0)
        return float(((c @ v.T) ** 2).sum() / (c**2).sum())

    def erank(x: np.ndarray, _p: np.ndarray) -> float:
        e = _eig(x)
        q = e / e.sum()
        q = q[q > 0]
        return float(np.exp(-(q * np.log(q)).sum()))

    def l1(x: np.ndarray, _p: np.ndarray) -> float:
        e = _eig(x)[:K_PCS]
        return float(np.abs(e / e.sum() - median_curve).sum())

    return [
        Fitted("subspace_share", "b", share, "low"),
        Fitted("effective_rank", "b", erank, "two"),
        Fitted("spectrum_l1", "b", l1),
    ]


def raw_norm(ref_norms: np.ndarray) -> list[Fitted]:
    ref_sorted = np.sort(ref_norms)

    def ks(x: np.ndarray, _p: np.ndarray) -> float:
        # x carries the raw norm in its last column (see Window.raw)
        w = np.sort(x[:, -1])
        grid = np.concatenate([w, ref_sorted])
        fw = np.searchsorted(w, grid, side="right") / w.size
        fr = np.searchsorted(ref_sorted, grid, side="right") / ref_sorted.size
        return float(np.max(np.abs(fw - fr)))

    return [Fitted("raw_norm_ks", "c", ks, needs_raw=True)]


def _head(x: np.ndarray, y: np.ndarray, seed: int) -> tuple[np.ndarray, float]:
    """Paper A's recipe (StandardScaler + balanced logistic regression, C=1), folded."""
    sc = StandardScaler().fit(x)
    lr = LogisticRegression(C=1.0, class_weight="balanced", max_iter=2000, random_state=seed)
    lr.fit(sc.transform(x), y)
    w = lr.coef_.reshape(-1) / sc.scale_
    return w, float(lr.intercept_[0] - w @ sc.mean_)


def panels(ref: np.ndarray, y: np.ndarray, seed: int) -> list[Fitted]:
    rng = np.random.default_rng(seed)
    d = ref.shape[1]
    boot_w, boot_b = [], []
    for k in range(PANEL):
        i = rng.integers(0, len(ref), len(ref))
        w, b = _head(ref[i], y[i], seed + k)
        boot_w.append(w)
        boot_b.append(b)
    half_w, half_b = [], []
    for k in range(PANEL):
        dims = rng.permutation(d)[: d // 2]
        w_sub, b = _head(ref[:, dims], y, seed + k)
        w = np.zeros(d)
        w[dims] = w_sub
        half_w.append(w)
        half_b.append(b)

    def disagreement(ws: list[np.ndarray], bs: list[float]) -> Callable:
        wm, bv = np.stack(ws, 1), np.asarray(bs)

        def stat(x: np.ndarray, _p: np.ndarray) -> float:
            flags = (x[:, :d] @ wm + bv) > 0
            return float(np.mean(flags.any(1) & ~flags.all(1)))

        return stat

    return [
        Fitted("panel_boot", "d", disagreement(boot_w, boot_b)),
        Fitted("panel_halves", "d", disagreement(half_w, half_b)),
    ]


def atc(p_held: np.ndarray, y_held: np.ndarray) -> list[Fitted]:
    c = confidence(p_held)
    acc = float(np.mean((p_held > 0.5) == (y_held == 1)))
    # t such that mean(c > t) = acc: the (1 - acc) quantile of the held-out confidences.
    t = float(np.quantile(c, 1.0 - acc))

    def drop(_x: np.ndarray, p: np.ndarray) -> float:
        return acc - float(np.mean(confidence(p) > t))

    return [Fitted("atc_drop", "e", drop)]


# -- calibration and counting ----------------------------------------------------------------
def threshold(null: np.ndarray, side: str, n: int, pool: int) -> tuple[float, float]:
    """(lower, upper) alarm bounds at ALPHA, widened by sqrt(1 + n / pool) as the suite."""
    mid, widen = float(np.median(null)), np.sqrt(1.0 + n / pool)
    if side == "high":
        top = float(np.quantile(null, 1 - ALPHA, method="higher"))
        return -np.inf, mid + (top - mid) * widen
    if side == "low":
        bot = float(np.quantile(null, ALPHA, method="lower"))
        return mid - (mid - bot) * widen, np.inf
    bot = float(np.quantile(null, ALPHA / 2, method="lower"))
    top = float(np.quantile(null, 1 - ALPHA / 2, method="higher"))
    return mid - (mid - bot) * widen, mid + (top - mid) * widen


def windows(n_rows: int, window: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` windows of ``window`` row indices, without replacement within a window."""
    return np.argsort(rng.random((count, n_rows)), axis=1)[:, :window]


def stats(cands: list[Fitted], x: np.ndarray, p: np.ndarray, wins: Any, dim: int) -> np.ndarray:
    """(windows, candidates) statistics; each window's rows are gathered once. Columns
    past ``dim`` (the raw norm) are shown only to the candidates that need them."""
    out = []
    for w in wins:
        xw, pw = x[w], p[w]
        xe = xw[:, :dim] if xw.shape[1] > dim else xw
        out.append([c.stat(xw if c.needs_raw else xe, pw) for c in cands])
    return np.asarray(out, dtype=np.float64)


def evaluate(ds: Dataset, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every candidate on every scenario of ``ds``: the share of windows it flags."""
    rng = np.random.default_rng(args.seed)
    fit, held = ds.fit_rows, ds.holdout
    ref, y_ref = ds.x[fit], ds.y[fit]
    t0 = time.perf_counter()
    cands = (
        outlier_dims(ref)
        + spectrum(ref, ds.x[held], ds.window, args.seed)
        + panels(ref, y_ref, args.seed)
        + atc(ds.scorer.predict_proba(ds.x[held]), ds.y[held])
    )
    raw: dict[int, np.ndarray] = {}
    if args.raw:
        from harm import LiveEmbedder

        base = LiveEmbedder()
        texts = ds.texts.text
        ref_raw = base.embed([texts[i] for i in fit], raw=True)
        held_raw = base.embed([texts[i] for i in held], raw=True)
        cands += raw_norm(np.linalg.norm(ref_raw, axis=1))
        raw[-1] = np.linalg.norm(held_raw, axis=1)
        for k, sc in enumerate(ds.scenarios):
            raw[k] = np.linalg.norm(sc.live.embed(sc.texts, raw=True), axis=1)
    print(f"[{ds.name}] candidates fitted in {time.perf_counter() - t0:.1f} s", flush=True)

    def frame(x: np.ndarray, norms: np.ndarray | None) -> np.ndarray:
        return x if norms is None else np.concatenate([x, norms[:, None]], axis=1)

    # Calibration: windows of the held-out rows.
    hx = frame(ds.x[held], raw.get(-1))
    hp = ds.scorer.predict_proba(ds.x[held])
    cal = windows(len(held), ds.window, args.calibration_windows, rng)
    cands = [c for c in cands if raw or not c.needs_raw]
    null = stats(cands, hx, hp, cal, ds.x.shape[1])
    bounds = {}
    for j, c in enumerate(cands):
        bounds[c.name] = threshold(null[:, j], c.side, ds.window, len(held))
        if c.name == "constant_dims":
            # Calibrated, the bound sits at float32 rounding (~1e-8), which other batches
            # or hardware exceed: floor it at a numerical tolerance far below any change.
            print(f"  constant dims: {null[:, j].max():.3g} at most on held-out windows")
            bounds[c.name] = (-np.inf, max(bounds[c.name][1], CONSTANT_TOLERANCE))
    control = ds.scenarios[0]
    p0 = ds.scorer.predict_proba(control.x)
    out = []
    for k, sc in enumerate(ds.scenarios):
        p = ds.scorer.predict_proba(sc.x)
        truth = auc_ci(p, sc.y, p0, control.y, sc.paired, args.bootstrap, args.seed + k)
        x = frame(sc.x, raw.get(k))
        draws = windows(len(sc.y), ds.window, args.windows, rng)
        disjoint = [
            np.arange(s, s + ds.window) for s in range(0, len(sc.y) - ds.window + 1, ds.window)
        ]
        row: dict[str, Any] = {
            "dataset": ds.name,
            "scenario": sc.name,
            "kind": sc.kind,
            "candidate": sc.candidate,
            "verdict": verdict(sc.candidate, truth["delta"]),
            "delta": truth["delta"],
            "delta_lo": truth["delta_lo"],
            "delta_hi": truth["delta_hi"],
            "flagged": {},
            "flagged_disjoint": {},
        }
        dim = ds.x.shape[1]
        v, vd = stats(cands, x, p, draws, dim), stats(cands, x, p, disjoint, dim)
        for j, c in enumerate(cands):
            lo, hi = bounds[c.name]
            row["flagged"][c.name] = float(np.mean((v[:, j] < lo) | (v[:, j] > hi)))
            flagged = int(np.sum((vd[:, j] < lo) | (vd[:, j] > hi)))
            row["flagged_disjoint"][c.name] = [flagged, len(disjoint)]
        out.append(row)
        print(
            f"  [{ds.name}] {sc.name} ({row['verdict']}, dAUC {row['delta']:+.3f}): "
            + " ".join(f"{n} {v:.2f}" for n, v in row["flagged"].items()),
            flush=True,
        )
    return out


def group(r: dict[str, Any]) -> str:
    """benign traffic (must be quiet), harmful model change (must be flagged); the other two
    are reported only: a content shift that costs AUC is the labels' to find, and a model
    change the head survives is a changed map, not harm."""
    model = r["kind"] == "embedder"
    if r["verdict"] in ("benign", "control"):
        return "harmless model change" if model else "benign traffic"
    if r["verdict"] == "harmful":
        return "harmful model change" if model else "harmful traffic"
    return "neither"


def summary(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per candidate: benign traffic quiet, harmful model changes flagged, and whether it
    passes (both, every one)."""
    names = list(results[0]["flagged"])
    out = []
    for n in names:
        benign = [r for r in results if group(r) == "benign traffic"]
        harmful = [r for r in results if group(r) == "harmful model change"]
        quiet = [r for r in benign if r["flagged"][n] <= QUIET]
        loud = [r for r in harmful if r["flagged"][n] >= LOUD]
        worst = max(benign, key=lambda r: r["flagged"][n])
        others = {
            g: [r for r in results if group(r) == g]
            for g in ("harmless model change", "harmful traffic")
        }
        out.append(
            {
                "candidate": n,
                "benign_quiet": f"{len(quiet)}/{len(benign)}",
                "harmful_flagged": f"{len(loud)}/{len(harmful)}",
                "worst_benign": f"{worst['flagged'][n]:.2f} "
                f"({worst['dataset']}: {worst['scenario']})",
                "missed": ", ".join(
                    f"{r['dataset'][:5]}: {r['scenario']}" for r in harmful if r not in loud
                ),
                **{
                    g: f"{sum(r['flagged'][n] >= LOUD for r in rs)}/{len(rs)}"
                    for g, rs in others.items()
                },
                "passes_benign": len(quiet) == len(benign),
                "passes": len(quiet) == len(benign) and len(loud) == len(harmful),
            }
        )
    return out


def main() -> int:
    import sys

    argv = sys.argv[1:]
    extra = argparse.ArgumentParser(add_help=False)
    extra.add_argument("--windows", type=int, default=None, help="windows per scenario (200)")
    extra.add_argument("--calibration-windows", type=int, default=500)
    extra.add_argument("--raw", action="store_true", help="measure raw norms (re-embeds)")
    mine, rest = extra.parse_known_args(argv)
    args = parse_args(rest)
    args.__dict__.update(vars(mine))
    args.windows = args.windows or (100 if args.quick else 200)
    args.bootstrap = min(args.bootstrap, 200)
    args.out = CACHE / "label_free.json" if args.out == CACHE / "results.json" else args.out
    t_start = time.perf_counter()
    datasets = build_datasets(args)
    results = []
    for ds in datasets:
        results += evaluate(ds, args)
    names = list(results[0]["flagged"])
    cols = ["dataset", "scenario", "measured", "ΔAUC [95% CI]", *names]
    rows = [
        [
            r["dataset"],
            r["scenario"],
            r["verdict"],
            f"{r['delta']:+.3f} [{r['delta_lo']:+.3f}, {r['delta_hi']:+.3f}]",
            *(f"{r['flagged'][n]:.2f}" for n in names),
        ]
        for r in results
    ]
    line = machine(("numpy", "scikit-learn", "torch", "onnxruntime"))
    wall = time.perf_counter() - t_start
    print(
        f"\nMachine: {line}\n{args.rows} rows per scenario, {args.windows} windows per "
        f"scenario, calibration {args.calibration_windows} held-out windows, alpha {ALPHA}; "
        f"windows: " + ", ".join(f"{ds.name} {ds.window}" for ds in datasets) + "\n"
    )
    print(markdown_table(cols, rows, "lll" + "r" * (len(cols) - 3)))
    summ = summary(results)
    print()
    print(
        markdown_table(
            ["candidate", "benign traffic quiet (≤ 2α)", "harmful model changes flagged (≥ 50%)",
             "worst benign traffic", "passes", "missed harmful", "harmless model changes flagged",
             "harmful traffic flagged"],
            [[s["candidate"], s["benign_quiet"], s["harmful_flagged"], s["worst_benign"],
              "yes" if s["passes"] else ("benign side only" if s["passes_benign"] else "no"),
              s["missed"], s["harmless model change"], s["harmful traffic"]] for s in summ],
            "lrrllrrr",
        )
    )  # fmt: skip
    print(f"\nwall time {wall:.0f} s")
    write_json(
        args.out,
        {
            "machine": line,
            "args": {k: str(v) for k, v in vars(args).items()},
            "benign_max": BENIGN_MAX,
            "harmful_min": HARMFUL_MIN,
            "results": results,
            "summary": summ,
            "wall_seconds": wall,
        },
    )
    print(f"results: {args.out}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    raise SystemExit(main())
