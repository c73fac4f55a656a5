"""``silentwatch gate``: may this embedder (and classifier) update ship?

Steps, all on the same seeded rows (paper A's balanced sample and 70/10/20 split):

1. embed the texts with the old and the new embedder (cached by weights hash);
2. the real drift between versions: per-text angle (same space only) and linear CKA;
3. the old classifier (the deployed bundle, or paper A's head fitted on the old train
   split) on old test embeddings, the same head *frozen* on the new ones, and a head
   retrained on the new train split; decision flip rate between old and frozen;
4. paper A's synthetic stress sweep on the old embeddings, and where the real update's
   angle sits on it;
5. separability of both spaces;
6. a verdict from the thresholds; on a pass, a new bundle for the sidecar (the frozen head
   re-issued for the new embedder, or the retrained head when ``allow_retrain``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel

from silentwatch.monitor.bundle import EmbedderSpec, LoadedBundle, load_bundle
from silentwatch.monitor.bundle.manifest import DEFAULT_HEAD
from silentwatch.monitor.evaluation.classification import labelled_metrics
from silentwatch.monitor.evaluation.paired import delong_paired
from silentwatch.monitor.scoring import HIGH_CONFIDENCE, LinearScorer
from silentwatch.monitor.training import fit_classifier, train_bundle
from silentwatch.offline.audit.run import AuditReport
from silentwatch.offline.evalset import EvalSet, load_evalset
from silentwatch.offline.execution.embedding import open_embedder_for
from silentwatch.offline.gate.config import GateConfig
from silentwatch.offline.progress import Reporter
from silentwatch.offline.separability import Separability, separability
from silentwatch.offline.similarity import linear_cka, row_angles_degrees
from silentwatch.offline.splits import Split
from silentwatch.offline.stress.sweep import StressModel, StressResult, cells, run_stress

#: Two-sided 95% normal quantile, for the DeLong intervals.
_Z95 = 1.959963984540054


class GateError(Exception):
    """The gate could not run (bad config, data, bundle or model): exit code 2."""


class Check(BaseModel):
    name: str
    value: float | None
    limit: float
    passed: bool
    detail: str


class SideMetrics(BaseModel):
    roc_auc: float
    accuracy: float
    balanced_accuracy: float
    mean_confidence: float
    ece: float
    silent_failure_ratio: float | None
    high_confidence_error_ratio: float | None
    brier: float
    reliability: list[tuple[float, float, int]]  # (mean confidence, accuracy, count) per bin


class RealDrift(BaseModel):
    same_space: bool
    mean_angle_degrees: float | None
    median_angle_degrees: float | None
    p95_angle_degrees: float | None
    linear_cka: float


class StressPosition(BaseModel):
    kind: str
    failure_angle_degrees: float | None
    synthetic_auc_at_real_angle: float | None
    real_over_failure_angle: float | None


class HeadResult(BaseModel):
    """One classifier head's judgement (multi-head bundles: one per head).

    ``verdict`` is ``not_enough_positives`` when the test split holds fewer than
    ``thresholds.min_positives`` rows of either class for this head: the checks are still
    computed and reported with their intervals, but they cannot vouch for the head.
    """

    name: str
    test_positives: int
    test_negatives: int
    verdict: Literal["pass", "fail", "not_enough_positives"]
    route: Literal["frozen", "retrained"] | None
    old_on_old: SideMetrics
    frozen_on_new: SideMetrics | None
    retrained_on_new: SideMetrics
    # 95% DeLong intervals of each ROC-AUC, and of the paired drop old -> frozen.
    roc_auc_ci: dict[str, tuple[float, float]]
    frozen_auc_drop: float | None
    frozen_auc_drop_ci: tuple[float, float] | None
    flip_rate: float | None
    checks: list[Check]
    retrained_checks: list[Check]
    summary: str


class GateReport(BaseModel):
    verdict: Literal["pass", "fail"]
    route: Literal["frozen", "retrained"] | None
    summary: str
    old_embedder: dict[str, Any]
    new_embedder: dict[str, Any]
    data: dict[str, Any]
    real_drift: RealDrift
    old_on_old: SideMetrics
    frozen_on_new: SideMetrics | None
    retrained_on_new: SideMetrics
    flip_rate: float | None
    retrained_flip_rate: float
    checks: list[Check]
    retrained_checks: list[Check]
    stress_position: list[StressPosition]
    separability: dict[str, Separability]
    stress: StressResult
    bundle: str | None
    timings_seconds: dict[str, float]
    representation: AuditReport | None = None
    # Effective embedding settings per side (the shared block with each side's own on top)
    # and what differs between them, e.g. "max_length: 256 -> 32".
    embedding_settings: dict[str, dict[str, Any]] = {}
    settings_changed: list[str] = []
    configuration_only: bool = False  # same weights, other settings
    # Where it ran: {"engine": "local"} or the Ray address, replicas and resources.
    execution: dict[str, Any] = {"engine": "local"}
    # Every head judged, the default first (the fields above are the default head's).
    heads: list[HeadResult] = []


@dataclass
class GateArrays:
    """What the plots need besides the report."""

    test_rows: np.ndarray  # indices into the used (sampled) rows
    y_test: np.ndarray
    p_old: np.ndarray
    p_frozen: np.ndarray | None
    p_retrained: np.ndarray


def reliability(p: np.ndarray, y: np.ndarray, n_bins: int = 10) -> list[tuple[float, float, int]]:
    """Top-label reliability bins: (mean confidence, accuracy, count) for non-empty bins."""
    conf = np.maximum(p, 1 - p)
    right = (p >= 0.5) == (y == 1)
    # Confidence lives in [0.5, 1]; bins over that range.
    b = np.clip(((conf - 0.5) * 2 * n_bins).astype(int), 0, n_bins - 1)
    out = []
    for k in range(n_bins):
        m = b == k
        if m.any():
            out.append((float(conf[m].mean()), float(right[m].mean()), int(m.sum())))
    return out


def side_metrics(
    p: np.ndarray, y: np.ndarray, high_confidence: float = HIGH_CONFIDENCE
) -> SideMetrics:
    m = labelled_metrics(p, y, high_confidence=high_confidence)

    def opt(v: float) -> float | None:
        return None if np.isnan(v) else float(v)

    return SideMetrics(
        roc_auc=float(m["roc_auc"]),
        accuracy=float(m["accuracy"]),
        balanced_accuracy=float(m["balanced_accuracy"]),
        mean_confidence=float(m["mean_confidence"]),
        ece=float(m["ece"]),
        silent_failure_ratio=opt(m["silent_failure_ratio"]),
        high_confidence_error_ratio=opt(m["high_confidence_error_ratio"]),
        brier=float(m["brier"]),
        reliability=reliability(p, y),
    )


def _bound(
    name: str,
    value: float | None,
    limit: float,
    detail: str,
    *,
    at_least: bool = False,
    missing_passes: bool = False,
) -> Check:
    """``value <= limit`` (or ``>=`` with ``at_least``); a missing value passes only when
    ``missing_passes`` (e.g. no errors at all, so no silent-failure ratio)."""
    if value is None:
        return Check(name=name, value=None, limit=limit, passed=missing_passes, detail=detail)
    passed = value >= limit if at_least else value <= limit
    return Check(name=name, value=value, limit=limit, passed=passed, detail=detail)


def evaluate_checks(
    old: SideMetrics,
    new: SideMetrics | None,
    flip_rate: float | None,
    drift: RealDrift,
    cfg: GateConfig,
    label: str,
    *,
    retrained: bool = False,
) -> list[Check]:
    """The thresholds against one candidate (the frozen or the retrained head).

    The flip-rate limit is ``thresholds.max_flip_rate`` for the frozen head and
    ``thresholds.max_retrained_flip_rate`` for a retrained one (``None``: a better head
    flips decisions by design, so churn is reported, not judged).
    """
    t = cfg.thresholds
    if new is None:
        return [
            Check(
                name="frozen_head_applies",
                value=None,
                limit=0,
                passed=False,
                detail="the new embedder's dimension differs: the frozen head cannot score it",
            )
        ]
    checks = [
        _bound(
            "auc_drop",
            old.roc_auc - new.roc_auc,
            t.max_auc_drop,
            f"ROC-AUC {old.roc_auc:.3f} -> {new.roc_auc:.3f} ({label})",
        ),
        _bound(
            "ece_increase",
            new.ece - old.ece,
            t.max_ece_increase,
            f"ECE (5 bins) {old.ece:.3f} -> {new.ece:.3f} ({label})",
        ),
    ]
    flip_limit = t.max_retrained_flip_rate if retrained else t.max_flip_rate
    if flip_rate is not None and flip_limit is not None:
        detail = f"{flip_rate:.1%} of test decisions change ({label} vs old)"
        checks.append(_bound("flip_rate", flip_rate, flip_limit, detail))
    if t.max_silent_failure_ratio is not None:
        detail = f"errors with confidence > 0.8 / all errors ({label})"
        checks.append(
            _bound(
                "silent_failure_ratio",
                new.silent_failure_ratio,
                t.max_silent_failure_ratio,
                detail,
                missing_passes=True,
            )
        )
    if t.max_mean_angle_degrees is not None:
        detail = "mean angle between old and new embeddings of the same texts"
        checks.append(
            _bound("mean_angle_degrees", drift.mean_angle_degrees, t.max_mean_angle_degrees, detail)
        )
    if t.min_cka is not None:
        detail = "linear CKA between old and new embeddings (at least)"
        checks.append(_bound("linear_cka", drift.linear_cka, t.min_cka, detail, at_least=True))
    return checks


def _frozen_arrays(scorer: LinearScorer) -> dict[str, np.ndarray]:
    """A loaded bundle's folded head as classifier arrays (identity scaler)."""
    d = scorer.dim
    return {
        "scaler_mean": np.zeros(d),
        "scaler_scale": np.ones(d),
        "coef": scorer.weights.astype(np.float64),
        "intercept": np.array([scorer.bias]),
    }


def scorer_from_arrays(arrays: dict[str, np.ndarray], normalize: bool = True) -> LinearScorer:
    """A scorer for classifier arrays; ``normalize`` as the sidecar will for that embedder
    (a bundle whose spec says ``normalized=False`` scores raw rows)."""
    return LinearScorer.from_standardized(
        arrays["scaler_mean"],
        arrays["scaler_scale"],
        arrays["coef"],
        float(arrays["intercept"][0]),
        normalize=normalize,
    )


def _position(stress: StressResult, model: str, angle: float | None) -> list[StressPosition]:
    out = []
    for cliff in stress.cliffs:
        if cliff.model != model:
            continue
        curve = stress.curve(model, cliff.kind)
        angles = np.array([p.angle_degrees for p in curve])
        aucs = np.array([p.roc_auc for p in curve])
        order = np.argsort(angles, kind="stable")
        auc_at = None
        if angle is not None and angle <= angles.max():
            auc_at = float(np.interp(angle, angles[order], aucs[order]))
        fa = cliff.failure_angle_degrees
        out.append(
            StressPosition(
                kind=cliff.kind,
                failure_angle_degrees=fa,
                synthetic_auc_at_real_angle=auc_at,
                real_over_failure_angle=(angle / fa if angle is not None and fa else None),
            )
        )
    return out


def _check_bundle_embedder(
    bundle: LoadedBundle, cfg: GateConfig, dim: int, spec: EmbedderSpec
) -> None:
    """The deployed bundle must be the one validated for the old embedder."""
    if bundle.dim != dim:
        raise GateError(
            f"old bundle {cfg.old.bundle} expects {bundle.dim}-d embeddings but the old "
            f"embedder gives {dim}-d: is old.embedder the bundle's embedder?"
        )
    want, got = bundle.manifest.embedder.weights_sha256, spec.weights_sha256
    if want and got and want != got:
        raise GateError(
            f"old bundle {cfg.old.bundle} was validated for embedder weights {want[:12]}, "
            f"old.embedder has {got[:12]}: name the bundle's own embedder as old.embedder"
        )


def run_gate(
    cfg: GateConfig,
    *,
    reporter: Reporter | None = None,
    open_embedder: Callable[..., Any] | None = None,
) -> tuple[GateReport, GateArrays]:
    """Run every step; raises :class:`GateError` when the gate cannot judge.

    ``reporter`` prints steps and progress bars (silent by default); ``open_embedder``
    replaces :func:`silentwatch.offline.embedders.open_embedder` (tests).
    """
    from silentwatch.offline.embedders import embed_cached

    rep = reporter or Reporter(enabled=False)
    say = rep.step
    timings: dict[str, float] = {}
    t0 = time.perf_counter()

    say("loading data")
    d = cfg.data
    missing = [p for p in d.paths if not p.exists()]
    if missing:
        # Say what to fix, not only what is wrong: an example copied without its data,
        # or run from a checkout without the sample, lands here.
        raise GateError(
            f"data file {missing[0]} does not exist: point data.path at your labelled "
            "CSV/JSONL/parquet file (relative paths resolve against the config's folder)"
        )
    try:
        ev = load_evalset(d)
    except ValueError as err:
        raise GateError(str(err)) from None
    texts, y, split = ev.texts, ev.y, ev.split
    bundle = None
    if cfg.old.bundle is not None:  # before any embedding: a bad bundle fails in seconds
        try:
            bundle = load_bundle(cfg.old.bundle)
        except Exception as err:  # BundleError and friends: one clear line
            raise GateError(f"old bundle {cfg.old.bundle}: {err}") from None
    timings["data"] = time.perf_counter() - t0

    e = cfg.embedding
    # Each side is opened, cached and recorded with its own effective settings.
    eff = {side: cfg.side_settings(side) for side in ("old", "new")}
    xs: dict[str, np.ndarray] = {}
    infos: dict[str, dict[str, Any]] = {}
    specs: dict[str, EmbedderSpec] = {}
    for side in ("old", "new"):
        t = time.perf_counter()
        name = getattr(cfg, side).embedder
        say(f"embedding {len(texts):,} texts with the {side} embedder ({name})")
        try:
            emb = open_embedder_for(cfg.execution, eff[side], name, open_embedder)
        except (ValueError, ImportError, OSError) as err:
            raise GateError(f"{side} embedder {name!r}: {err}") from None
        infos[side] = emb.info().model_dump(mode="json")
        specs[side] = emb.spec()
        if side == "old" and bundle is not None:
            _check_bundle_embedder(bundle, cfg, infos["old"]["dim"], specs["old"])
        with rep.bar(f"{side} embedder", len(texts)) as advance:
            xs[side] = embed_cached(emb, texts, e.cache_dir, progress=advance)
        timings[f"embed_{side}"] = time.perf_counter() - t
    x_old, x_new = xs["old"], xs["new"]

    say("measuring the real drift")
    same_space = x_old.shape[1] == x_new.shape[1]
    angles = row_angles_degrees(x_old[split.test], x_new[split.test]) if same_space else None
    drift = RealDrift(
        same_space=same_space,
        mean_angle_degrees=None if angles is None else float(angles.mean()),
        median_angle_degrees=None if angles is None else float(np.median(angles)),
        p95_angle_degrees=None if angles is None else float(np.percentile(angles, 95)),
        linear_cka=linear_cka(x_old[split.test], x_new[split.test]),
    )

    say("scoring the old, frozen and retrained heads")
    t = time.perf_counter()
    # Each head scores as the sidecar would for that side's embedder spec.
    old_spec = bundle.manifest.embedder if bundle is not None else specs["old"]
    old_norm = old_spec.normalized
    new_norm = specs["new"].normalized
    old_by_head = _old_heads(bundle, cfg, ev, x_old, split)
    judged = [
        _judge_head(
            name,
            ev.y_heads[:, j],
            old_by_head[j],
            x_old,
            x_new,
            split,
            drift,
            cfg,
            old_norm=old_norm,
            new_norm=new_norm,
        )
        for j, name in enumerate(ev.heads)
    ]
    h0 = judged[0]
    old_arrays, y_test = h0.old_arrays, y[split.test]
    old_scorer = scorer_from_arrays(old_arrays, old_norm)
    p_old, p_frozen, p_retrained = h0.p_old, h0.p_frozen, h0.p_retrained
    old_metrics = h0.result.old_on_old
    frozen_metrics, retrained_metrics = h0.result.frozen_on_new, h0.result.retrained_on_new
    flip = h0.result.flip_rate
    retrained_flip = h0.retrained_flip
    timings["heads"] = time.perf_counter() - t

    say("stress sweep on the old embeddings")
    t = time.perf_counter()
    with rep.bar("stress cells", cells(cfg.stress, 1)) as advance:
        stress = run_stress(
            {"old": StressModel(x_old[split.test], y_test, old_scorer)},
            cfg.stress,
            device=eff["old"].device,
            progress=advance,
            execution=cfg.execution,
        )
    timings["stress"] = time.perf_counter() - t

    say("separability")
    sep = {
        "old": separability(x_old, y, seed=d.seed),
        "new": separability(x_new, y, seed=d.seed),
    }

    checks, retrained_checks = h0.result.checks, h0.result.retrained_checks
    route = _overall_route([h.result for h in judged], cfg)
    if len(judged) == 1 and judged[0].result.verdict != "not_enough_positives":
        summary = _summary(route, all(c.passed for c in retrained_checks), checks)
    else:
        summary = _heads_summary(route, [h.result for h in judged], cfg)
    changed = cfg.settings_changes()
    config_only = (
        infos["old"].get("weights_sha256") is not None
        and infos["old"].get("weights_sha256") == infos["new"].get("weights_sha256")
        and infos["old"].get("backend") == infos["new"].get("backend")
    )
    if config_only:
        summary = f"Configuration-only update ({'; '.join(changed) or 'no change'}). {summary}"

    audit = None
    if cfg.representation is not None:
        from silentwatch.offline.audit.run import AuditError, run_audit

        say("representation audit (paper B)")
        t = time.perf_counter()
        try:
            audit = run_audit(cfg.representation, reporter=rep)
        except AuditError as err:
            raise GateError(f"representation: {err}") from None
        timings["representation"] = time.perf_counter() - t
        summary += f" Representation audit: {audit.summary}"
        if audit.verdict == "fail":
            route = None  # no bundle for a model whose safety signal collapsed
    verdict: Literal["pass", "fail"] = "pass" if route else "fail"

    bundle_path = None
    if route and cfg.output.emit_bundle:
        say("writing the new bundle")
        t = time.perf_counter()
        # Each head ships the route that passed it (an unjudged head, under
        # ``unjudged: warn``, ships frozen: as it was).
        arrays = [h.new_arrays if h.result.route == "retrained" else h.old_arrays for h in judged]
        held_out = np.concatenate([split.val, split.test])
        multi = len(judged) > 1
        try:
            result = train_bundle(
                x_new,
                ev.y_heads if multi else y,
                cfg.output.dir / "bundle",
                embedder=specs["new"],
                head_names=list(ev.heads) if multi else None,
                classifier=arrays if multi else arrays[0],
                holdout_rows=held_out,
                # Paired canaries in the new space: held-out texts with their new embeddings.
                texts=texts,
                classifier_version=cfg.output.classifier_version,
                seed=d.seed,
                overwrite=cfg.output.overwrite,
            )
        except (ValueError, FileExistsError) as err:
            raise GateError(f"writing the bundle: {err}") from None
        bundle_path = str(result.path)
        timings["bundle"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t0

    report = GateReport(
        verdict=verdict,
        route=route,
        summary=summary,
        old_embedder=infos["old"],
        new_embedder=infos["new"],
        data=ev.describe(d),
        real_drift=drift,
        old_on_old=old_metrics,
        frozen_on_new=frozen_metrics,
        retrained_on_new=retrained_metrics,
        flip_rate=flip,
        retrained_flip_rate=retrained_flip,
        checks=checks,
        retrained_checks=retrained_checks,
        stress_position=_position(stress, "old", drift.mean_angle_degrees),
        separability=sep,
        stress=stress,
        bundle=bundle_path,
        timings_seconds=timings,
        representation=audit,
        embedding_settings={side: eff[side].describe() for side in ("old", "new")},
        settings_changed=changed,
        configuration_only=config_only,
        execution=cfg.execution.describe(),
        heads=[h.result for h in judged],
    )
    return report, GateArrays(split.test, y_test, p_old, p_frozen, p_retrained)


@dataclass
class _Judged:
    """A head's judgement and the arrays the bundle and the plots need."""

    result: HeadResult
    old_arrays: dict[str, np.ndarray]
    new_arrays: dict[str, np.ndarray]
    p_old: np.ndarray
    p_frozen: np.ndarray | None
    p_retrained: np.ndarray
    retrained_flip: float


def _old_heads(
    bundle: LoadedBundle | None,
    cfg: GateConfig,
    ev: EvalSet,
    x_old: np.ndarray,
    split: Split,
) -> list[dict[str, np.ndarray]]:
    """The old side's classifier arrays per judged head: the deployed bundle's heads (every
    one of them must be judged, by name), or heads fitted on the old embeddings."""
    names = list(ev.heads)
    if bundle is None:
        seed = cfg.data.seed
        return [
            fit_classifier(x_old[split.train], ev.y_heads[split.train, j], seed=seed)
            for j in range(len(names))
        ]
    have = list(bundle.head_names)
    missing = [n for n in names if n not in have]
    unjudged = [n for n in have if n not in names]
    if missing or unjudged:
        problem = (
            f"has no head {missing[0]!r}"
            if missing
            else f"head {unjudged[0]!r} has no label column in data.label_column"
        )
        raise GateError(
            f"old bundle {cfg.old.bundle} {problem}: its heads are {', '.join(have)}; list one "
            "label column per head in data.label_column (data.head_names names them; one "
            "column is the head 'default'), every deployed head is judged"
        )
    return [_frozen_arrays(bundle.heads[have.index(n)].scorer) for n in names]


def _delong_ci(auc: float, var: float) -> tuple[float, float]:
    half = _Z95 * float(np.sqrt(max(var, 0.0)))
    return (max(0.0, auc - half), min(1.0, auc + half))


def _judge_head(
    name: str,
    y: np.ndarray,
    old_arrays: dict[str, np.ndarray],
    x_old: np.ndarray,
    x_new: np.ndarray,
    split: Split,
    drift: RealDrift,
    cfg: GateConfig,
    *,
    old_norm: bool,
    new_norm: bool,
) -> _Judged:
    """One head: the old head on old embeddings, frozen on new ones, retrained on new ones,
    the checks, DeLong intervals, and whether the test split can judge it at all."""
    hc = cfg.stress.high_confidence
    y_test = y[split.test]
    p_old = scorer_from_arrays(old_arrays, old_norm).predict_proba(x_old[split.test])
    same_space = x_old.shape[1] == x_new.shape[1]
    p_frozen = (
        scorer_from_arrays(old_arrays, new_norm).predict_proba(x_new[split.test])
        if same_space
        else None
    )
    new_arrays = fit_classifier(x_new[split.train], y[split.train], seed=cfg.data.seed)
    p_retrained = scorer_from_arrays(new_arrays, new_norm).predict_proba(x_new[split.test])
    old_m = side_metrics(p_old, y_test, hc)
    frozen_m = None if p_frozen is None else side_metrics(p_frozen, y_test, hc)
    retrained_m = side_metrics(p_retrained, y_test, hc)
    flip = None if p_frozen is None else float(np.mean((p_frozen >= 0.5) != (p_old >= 0.5)))
    retrained_flip = float(np.mean((p_retrained >= 0.5) != (p_old >= 0.5)))
    label = "frozen head" if name == DEFAULT_HEAD else f"frozen {name} head"
    checks = evaluate_checks(old_m, frozen_m, flip, drift, cfg, label)
    retrained_checks = evaluate_checks(
        old_m,
        retrained_m,
        retrained_flip,
        drift,
        cfg,
        label.replace("frozen", "retrained"),
        retrained=True,
    )
    pos = int(y_test.sum())
    neg = int(y_test.size - pos)
    ci: dict[str, tuple[float, float]] = {}
    drop = drop_ci = None
    if min(pos, neg) >= 2:
        d = delong_paired(y_test, p_old, p_retrained)
        ci["old"] = _delong_ci(d.auc_a, d.var_a)
        ci["retrained"] = _delong_ci(d.auc_b, d.var_b)
        if p_frozen is not None:
            f = delong_paired(y_test, p_old, p_frozen)
            ci["frozen"] = _delong_ci(f.auc_b, f.var_b)
            drop = f.auc_a - f.auc_b
            half = _Z95 * f.se_difference
            drop_ci = (drop - half, drop + half)
    t = cfg.thresholds
    frozen_ok = all(c.passed for c in checks)
    retrained_ok = all(c.passed for c in retrained_checks)
    route: Literal["frozen", "retrained"] | None = None
    if frozen_ok:
        route = "frozen"
    elif retrained_ok and t.allow_retrain:
        route = "retrained"
    verdict: Literal["pass", "fail", "not_enough_positives"]
    if min(pos, neg) < t.min_positives:
        verdict, route = "not_enough_positives", None
        summary = (
            f"not enough positives to judge: {pos} unsafe and {neg} safe test rows, "
            f"need {t.min_positives} of each (thresholds.min_positives)"
        )
    else:
        verdict = "pass" if route else "fail"
        failed = ", ".join(c.name for c in checks if not c.passed)
        summary = (
            "frozen head passes"
            if route == "frozen"
            else f"frozen head fails ({failed})"
            + ("; the retrained head passes" if retrained_ok else "; retraining does not fix it")
        )
    if drop is not None and drop_ci is not None:
        summary += f"; ROC-AUC drop {drop:+.3f} (95% CI {drop_ci[0]:+.3f} to {drop_ci[1]:+.3f})"
    result = HeadResult(
        name=name,
        test_positives=pos,
        test_negatives=neg,
        verdict=verdict,
        route=route,
        old_on_old=old_m,
        frozen_on_new=frozen_m,
        retrained_on_new=retrained_m,
        roc_auc_ci=ci,
        frozen_auc_drop=drop,
        frozen_auc_drop_ci=drop_ci,
        flip_rate=flip,
        checks=checks,
        retrained_checks=retrained_checks,
        summary=summary,
    )
    return _Judged(result, old_arrays, new_arrays, p_old, p_frozen, p_retrained, retrained_flip)


def _overall_route(
    heads: list[HeadResult], cfg: GateConfig
) -> Literal["frozen", "retrained"] | None:
    """The gate passes when every head passes (or, under ``unjudged: warn``, cannot be
    judged); it ships retrained when some head needed its retrained route."""
    for h in heads:
        if h.verdict == "fail" or (
            h.verdict == "not_enough_positives" and cfg.thresholds.unjudged == "fail"
        ):
            return None
    return "retrained" if any(h.route == "retrained" for h in heads) else "frozen"


def _heads_summary(route: str | None, heads: list[HeadResult], cfg: GateConfig) -> str:
    """One line for a multi-head gate (or a head that cannot be judged): the verdict, then
    each failing or unjudged head by name."""
    failing = [h for h in heads if h.verdict == "fail"]
    unjudged = [h for h in heads if h.verdict == "not_enough_positives"]
    parts = [f"head {h.name}: {h.summary}" for h in failing + unjudged]
    if route is None:
        names = ", ".join(h.name for h in failing + unjudged if h.verdict == "fail" or
                          cfg.thresholds.unjudged == "fail")  # fmt: skip
        head = f"FAIL: {names} cannot ship on the new embedder. "
    elif route == "retrained":
        head = "PASS (retrained): every head passes, some only retrained on the new embedder. "
    else:
        head = "PASS: every head works frozen on the new embedder; ship them together. "
    if unjudged and cfg.thresholds.unjudged == "warn":
        head += "Unjudged heads ship as they were (thresholds.unjudged: warn). "
    return head + "; ".join(parts) if parts else head.strip()


def _summary(route: str | None, retrained_ok: bool, checks: list[Check]) -> str:
    failed = ", ".join(c.name for c in checks if not c.passed)
    if route == "frozen":
        return "PASS: the deployed head works on the new embedder; ship them together."
    if route == "retrained":
        return (
            f"PASS (retrained): the frozen head fails ({failed}); a head retrained on the new "
            "embedder passes and is the bundle to ship with it."
        )
    if retrained_ok:
        return (
            f"FAIL: the frozen head fails on the new embedder ({failed}). A head retrained on "
            "the new embedder passes: ship both together (set thresholds.allow_retrain) or keep "
            "the old embedder."
        )
    return (
        f"FAIL: the frozen head fails on the new embedder ({failed}) and retraining does not "
        "fix it: keep the old embedder."
    )
