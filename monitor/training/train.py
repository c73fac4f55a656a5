"""Fit the classifier as paper A does, and build the reference the monitor compares against."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

from silentwatch.monitor.bundle.io import write_bundle
from silentwatch.monitor.bundle.manifest import (
    DetectorSettings,
    EmbedderSpec,
    Thresholds,
    TrainingSummary,
)
from silentwatch.monitor.detection.detectors.base import ReferenceSample
from silentwatch.monitor.detection.suite import (
    MIN_WINDOW,
    POOL_FRACTION,
    DetectorSuite,
    max_window_size,
)
from silentwatch.monitor.evaluation.classification import (
    accuracy,
    expected_calibration_error,
    mean_confidence,
)
from silentwatch.monitor.scoring import LinearScorer, row_norms

MIN_PER_CLASS = 10
# Paired canaries (docs/detection.md): held-out texts kept with their reference embeddings.
# 256, half of each class where the held-out rows allow: the paired AUC test's power grows
# with the smaller class, and a submission of 256 rows is one small request.
DEFAULT_CANARY_COUNT = 256
log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    path: Path
    classifier_version: str
    holdout_metrics: dict[str, float] = field(default_factory=dict)


def _validate(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"embeddings must be a 2-D (n, d) array, got shape {x.shape}")
    if x.dtype.kind not in "fiu":
        raise ValueError(f"embeddings must be numeric, got dtype {x.dtype}")
    x = x.astype(np.float32, copy=False)
    y = np.asarray(y).reshape(-1)
    if y.shape[0] != x.shape[0]:
        raise ValueError(f"{x.shape[0]} embeddings but {y.shape[0]} labels")
    values = set(np.unique(y).tolist())
    if not values <= {0, 1}:
        raise ValueError(f"labels must be 0/1 (1 = unsafe), found values {sorted(values)[:10]}")
    y = y.astype(np.int8)
    counts = np.bincount(y, minlength=2)
    if counts.min() < MIN_PER_CLASS:
        raise ValueError(
            f"need at least {MIN_PER_CLASS} examples of each class, have {counts[0]} safe "
            f"and {counts[1]} unsafe"
        )
    bad = ~np.isfinite(x).all(axis=1)
    if bad.any():
        raise ValueError(
            f"{int(bad.sum())} embeddings contain NaN/Inf (first row {int(np.argmax(bad))})"
        )
    return x, y


# A feature whose spread is below this fraction of the median feature's is treated as
# constant (scale 1). sklearn only does that for exactly-zero variance, but
# all-MiniLM-L6-v2 has three dead dimensions (values ~1e-33, std ~1e-33): dividing by that
# std gives weights of ~1e32, and then a 0.05-degree drift, or float rounding alone,
# sends the frozen head to chance.
DEAD_FEATURE_RATIO = 1e-6


def fit_classifier(x: np.ndarray, y: np.ndarray, *, seed: int = 42) -> dict[str, np.ndarray]:
    """Paper A's head (section 3.2): StandardScaler + LogisticRegression(C=1,
    class_weight="balanced", max_iter=2000), as the bundle's classifier arrays.

    Features with a standard deviation below ``DEAD_FEATURE_RATIO`` times the median one
    are left unscaled (scale 1), as sklearn does for exactly-constant features.

    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=(200, 3)); x[:, 2] = 1e-33 * rng.normal(size=200)
    >>> y = (x[:, 0] > 0).astype(int)
    >>> float(fit_classifier(x, y)["scaler_scale"][2])
    1.0
    """
    x = np.asarray(x, dtype=np.float64)
    scaler = StandardScaler().fit(x)
    scale = scaler.scale_.astype(np.float64)
    scale[scale < DEAD_FEATURE_RATIO * np.median(scale)] = 1.0
    mean = scaler.mean_.astype(np.float64)
    lr = LogisticRegression(C=1.0, class_weight="balanced", max_iter=2000, random_state=seed)
    lr.fit((x - mean) / scale, y)
    return {
        "scaler_mean": mean,
        "scaler_scale": scale,
        "coef": lr.coef_.reshape(-1).astype(np.float64),
        "intercept": np.asarray(lr.intercept_, dtype=np.float64).reshape(1),
    }


def _check_classifier(classifier: dict[str, np.ndarray], dim: int) -> dict[str, np.ndarray]:
    out = {}
    for key in ("scaler_mean", "scaler_scale", "coef"):
        if key not in classifier:
            raise ValueError(f"classifier arrays lack {key!r}")
        v = np.asarray(classifier[key], dtype=np.float64).reshape(-1)
        if v.shape[0] != dim:
            raise ValueError(f"classifier {key} has {v.shape[0]} values, embeddings have {dim}")
        out[key] = v
    out["intercept"] = np.asarray(classifier["intercept"], dtype=np.float64).reshape(1)
    if not all(np.isfinite(v).all() for v in out.values()) or (out["scaler_scale"] <= 0).any():
        raise ValueError("classifier arrays must be finite with a positive scale")
    return out


def train_bundle(
    x: np.ndarray,
    y: np.ndarray,
    out_dir: str | Path,
    *,
    embedder: EmbedderSpec,
    classifier_version: str | None = None,
    thresholds: Thresholds | None = None,
    holdout_fraction: float = 0.2,
    reference_size: int = 2000,
    seed: int = 42,
    detectors: DetectorSettings | Literal["auto"] | None = "auto",
    canaries: tuple[list[str], np.ndarray] | tuple[list[str], np.ndarray, np.ndarray] | None = None,
    texts: Sequence[str] | None = None,
    canary_count: int = DEFAULT_CANARY_COUNT,
    classifier: dict[str, np.ndarray] | None = None,
    holdout_rows: np.ndarray | None = None,
    overwrite: bool = False,
) -> TrainResult:
    """Train StandardScaler + LogisticRegression(C=1, class_weight="balanced", max_iter=2000).

    As paper A (section 3.2): rows are put on the unit sphere first when
    ``embedder.normalized``; a stratified ``holdout_fraction`` is kept out for the
    held-out metrics written into the manifest; the reference sample is drawn from
    the training rows.

    The drift detectors are fitted on the reference sample and their thresholds
    calibrated on windows of the held-out rows at ``detectors.false_alarm_rate``
    (:mod:`silentwatch.monitor.detection.suite`); ``detectors=None`` skips that, and
    the sidecar then calibrates at start-up on a split of the reference. ``"auto"``
    uses the default settings with the window shrunk (to a power of two, at least 16)
    until the held-out rows can calibrate it, and skips calibration when they cannot.

    ``classifier`` (keys ``scaler_mean``, ``scaler_scale``, ``coef``, ``intercept``)
    skips fitting and keeps that head frozen: the gate uses it to re-issue a validated
    classifier for a new embedder, with the reference and thresholds of the new space.

    Canaries (paired canaries, docs/detection.md): ``canaries=(texts, labels)`` or
    ``(texts, labels, embeddings)`` ships those; otherwise, given ``texts`` (one per row
    of ``x``), up to ``canary_count`` held-out rows are picked, half of each class where
    possible, and kept with their embeddings. ``canary_count=0`` ships none.
    """
    x, y = _validate(x, y)
    if texts is not None and len(texts) != x.shape[0]:
        raise ValueError(f"{len(texts)} texts but {x.shape[0]} embeddings; send one per row")
    if embedder.normalized:
        norms = row_norms(x)
        if (norms == 0).any():
            raise ValueError("some embeddings are all zeros and cannot be normalised")
        x = x / norms[:, None]
    thresholds = thresholds or Thresholds()
    idx = np.arange(x.shape[0])
    if holdout_rows is not None:
        ho = np.unique(np.asarray(holdout_rows, dtype=np.int64))
        if ho.size and (ho[0] < 0 or ho[-1] >= x.shape[0]):
            raise ValueError(f"holdout_rows must index the {x.shape[0]} embeddings")
        tr = np.setdiff1d(idx, ho)
    elif holdout_fraction > 0:
        tr, ho = train_test_split(idx, test_size=holdout_fraction, stratify=y, random_state=seed)
    else:
        tr, ho = idx, idx[:0]
    if classifier is None:
        classifier = fit_classifier(x[tr], y[tr], seed=seed)
    else:
        classifier = _check_classifier(classifier, x.shape[1])
    scorer = LinearScorer.from_standardized(
        classifier["scaler_mean"],
        classifier["scaler_scale"],
        classifier["coef"],
        float(classifier["intercept"][0]),
        normalize=embedder.normalized,
    )

    metrics: dict[str, float] = {}
    if ho.size:
        p_ho = scorer.predict_proba(x[ho])
        metrics = {
            "roc_auc": float(roc_auc_score(y[ho], p_ho)),
            "accuracy": accuracy(p_ho, y[ho], thresholds.flag),
            "mean_confidence": mean_confidence(p_ho),
            "ece_5bin": expected_calibration_error(p_ho, y[ho], 5),
            # Label confirmation needs the held-out AUC's class counts for its error.
            "positives": float(np.count_nonzero(y[ho] == 1)),
        }

    rng = np.random.default_rng(seed)
    ref_idx = np.sort(rng.choice(tr, size=min(reference_size, tr.size), replace=False))
    ref_x = x[ref_idx]
    reference = {
        "embeddings": ref_x.astype(np.float32),
        "scores": scorer.predict_proba(ref_x).astype(np.float32),
        "labels": y[ref_idx],
        "mean": x[tr].mean(axis=0).astype(np.float32),
    }
    calibration = None
    if detectors == "auto":
        size, cap = DetectorSettings().window_size, max_window_size(ho.size)
        while size > cap and size > MIN_WINDOW:
            size //= 2
        if size <= cap:
            detectors = DetectorSettings(window_size=size, seed=seed)
        else:
            log.warning(
                "%d held-out rows are too few to calibrate drift thresholds (need %d); the "
                "sidecar will calibrate at start-up on a split of the reference",
                ho.size,
                MIN_WINDOW * POOL_FRACTION,
            )
            detectors = None
    if detectors is not None:
        if ho.size == 0:
            raise ValueError(
                "calibrating the drift detectors needs held-out rows: set holdout_fraction > 0 "
                "(CLI --holdout-fraction) or skip calibration (--no-calibration)"
            )
        suite = DetectorSuite.calibrate(
            detectors,
            ReferenceSample(reference["embeddings"], reference["scores"]),
            ReferenceSample(x[ho], scorer.predict_proba(x[ho]).astype(np.float32)),
            flag=thresholds.flag,
            high_confidence=thresholds.high_confidence,
        )
        calibration = suite.calibration
        reference.update(suite.arrays())
    if classifier_version is None:
        h = hashlib.sha256()
        for k in sorted(classifier):
            h.update(classifier[k].tobytes())
        classifier_version = f"lr-{h.hexdigest()[:12]}"
    manifest_fields = {
        "classifier_version": classifier_version,
        "created_at": datetime.now(UTC),
        "embedding_dim": int(x.shape[1]),
        "embedder": embedder,
        "thresholds": thresholds,
        "training": TrainingSummary(
            n_train=int(tr.size),
            n_holdout=int(ho.size),
            positive_rate=float(y.mean()),
            seed=seed,
            holdout_metrics=metrics,
        ),
        "detectors": calibration,
    }
    canary_arrays = None
    if canaries is not None:
        canary_arrays = _canary_arrays(canaries, x.shape[1])
    elif texts is not None and canary_count > 0 and ho.size:
        pick = pick_canaries(y[ho], canary_count, seed=seed)
        rows = ho[pick]
        canary_arrays = {
            "texts": np.asarray([texts[i] for i in rows], dtype=str),
            "labels": y[rows].astype(np.int8),
            "embeddings": x[rows].astype(np.float32),
        }
    path = write_bundle(
        out_dir, manifest_fields, classifier, reference, canaries=canary_arrays, overwrite=overwrite
    )
    return TrainResult(path=path, classifier_version=classifier_version, holdout_metrics=metrics)


def pick_canaries(y: np.ndarray, count: int, *, seed: int = 0) -> np.ndarray:
    """Indices of up to ``count`` rows, half of each class where ``y`` has enough.

    A class short of its half gives the rest to the other one. Sorted, seeded.

    >>> y = np.array([0] * 10 + [1] * 3)
    >>> np.bincount(y[pick_canaries(y, 4)]).tolist(), np.bincount(y[pick_canaries(y, 8)]).tolist()
    ([2, 2], [5, 3])
    """
    y = np.asarray(y).reshape(-1)
    rng = np.random.default_rng(seed)
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    count = min(count, y.size)
    n_pos = min(pos.size, max(count // 2, count - neg.size))
    n_neg = min(neg.size, count - n_pos)
    out = np.concatenate(
        [rng.choice(pos, n_pos, replace=False), rng.choice(neg, n_neg, replace=False)]
    )
    return np.sort(out)


def _canary_arrays(canaries: tuple, dim: int) -> dict[str, np.ndarray]:
    texts, labels = canaries[0], np.asarray(canaries[1]).reshape(-1)
    if len(texts) == 0 or len(texts) != labels.shape[0]:
        raise ValueError(f"{len(texts)} canary texts but {labels.shape[0]} labels")
    if not np.isin(labels, (0, 1)).all():
        raise ValueError("canary labels must be 0 (safe) or 1 (unsafe)")
    out = {"texts": np.asarray(texts, dtype=str), "labels": labels.astype(np.int8)}
    if len(canaries) > 2 and canaries[2] is not None:
        emb = np.asarray(canaries[2], dtype=np.float32)
        if emb.shape != (len(texts), dim) or not np.isfinite(emb).all():
            raise ValueError(
                f"canary embeddings must be {len(texts)} finite rows of dimension {dim}, "
                f"got shape {emb.shape}"
            )
        out["embeddings"] = emb
    return out
