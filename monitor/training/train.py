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
    DEFAULT_HEAD,
    MAX_HEADS,
    DetectorSettings,
    EmbedderSpec,
    HeadManifest,
    Thresholds,
    TrainingSummary,
    check_head_name,
    head_file,
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
# A head's training split must keep this many of each class (the whole file already has
# MIN_PER_CLASS): only an explicit hold-out, or a rare head whose positives mostly fell into
# the hold-out, gets below it.
MIN_TRAIN_PER_CLASS = 5
# Paired canaries (docs/detection.md): held-out texts kept with their reference embeddings.
# 256, half of each class where the held-out rows allow: the paired AUC test's power grows
# with the smaller class, and a submission of 256 rows is one small request.
DEFAULT_CANARY_COUNT = 256
log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    path: Path
    classifier_version: str
    holdout_metrics: dict[str, float] = field(default_factory=dict)  # the default head's
    # Every head's held-out metrics by head name, in the bundle's order (default first).
    head_metrics: dict[str, dict[str, float]] = field(default_factory=dict)


_FIX = "drop the head (--label-column), lower --label-threshold, or add labelled rows"


def check_head_labels(
    y: np.ndarray, head_names: Sequence[str] | None = None
) -> tuple[np.ndarray, tuple[str, ...]]:
    """Labels as an (n, k) int8 0/1 matrix and the heads' names, checked before any fit.

    Parameters
    ----------
    y : numpy.ndarray
        (n,) labels of one head, or (n, k) labels of k heads (column 0: the default head).
    head_names : sequence of str, optional
        One name per column; default: ``("default",)`` for one head. Required for k > 1.

    Returns
    -------
    labels : numpy.ndarray
        (n, k) int8.
    names : tuple of str
        Valid, unique head names, at most ``MAX_HEADS``.

    Raises
    ------
    ValueError
        Labels that are not 0/1, names that do not fit the columns, or a head with fewer
        than ``MIN_PER_CLASS`` examples of a class (named, with its counts).

    Examples
    --------
    >>> y = np.array([[0, 1]] * 10 + [[1, 0]] * 10)
    >>> labels, names = check_head_labels(y, ["toxicity", "threat"])
    >>> labels.shape, names
    ((20, 2), ('toxicity', 'threat'))
    """
    y = np.asarray(y)
    if y.ndim > 2 or (y.ndim == 2 and y.shape[1] == 0):
        raise ValueError(f"labels must be (n,) or (n, heads), got shape {y.shape}")
    y2 = y.reshape(-1, 1) if y.ndim <= 1 else y
    k = y2.shape[1]
    if head_names is None:
        if k > 1:
            raise ValueError(
                f"labels have {k} columns (heads) but no head names; name them "
                "(head_names=..., CLI --head-names)"
            )
        head_names = (DEFAULT_HEAD,)
    names = tuple(head_names)
    if len(names) != k:
        raise ValueError(f"{len(names)} head names {list(names)} for {k} label columns")
    if k > MAX_HEADS:
        raise ValueError(f"{k} heads; a bundle has at most {MAX_HEADS}")
    for name in names:
        check_head_name(name)
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"duplicate head names {dup}: each head needs a name of its own")
    values = set(np.unique(y2).tolist())
    if not values <= {0, 1}:
        raise ValueError(f"labels must be 0/1 (1 = unsafe), found values {sorted(values)[:10]}")
    y2 = y2.astype(np.int8)
    for j, name in enumerate(names):
        pos = int(np.count_nonzero(y2[:, j]))
        neg = y2.shape[0] - pos
        if min(pos, neg) < MIN_PER_CLASS:
            if k == 1:
                raise ValueError(
                    f"need at least {MIN_PER_CLASS} examples of each class, have {neg} safe "
                    f"and {pos} unsafe"
                )
            raise ValueError(
                f"head {name!r} has {pos} unsafe and {neg} safe rows; need at least "
                f"{MIN_PER_CLASS} examples of each class to fit it: {_FIX}"
            )
    return y2, names


def _validate(
    x: np.ndarray, y: np.ndarray, head_names: Sequence[str] | None
) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"embeddings must be a 2-D (n, d) array, got shape {x.shape}")
    if x.dtype.kind not in "fiu":
        raise ValueError(f"embeddings must be numeric, got dtype {x.dtype}")
    x = x.astype(np.float32, copy=False)
    n_labels = np.asarray(y).shape[0] if np.asarray(y).ndim else 1
    if n_labels != x.shape[0]:
        raise ValueError(f"{x.shape[0]} embeddings but {n_labels} labels")
    y2, names = check_head_labels(y, head_names)
    bad = ~np.isfinite(x).all(axis=1)
    if bad.any():
        raise ValueError(
            f"{int(bad.sum())} embeddings contain NaN/Inf (first row {int(np.argmax(bad))})"
        )
    return x, y2, names


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
    head_names: Sequence[str] | None = None,
    classifier_version: str | None = None,
    thresholds: Thresholds | Sequence[Thresholds] | None = None,
    holdout_fraction: float = 0.2,
    reference_size: int = 2000,
    seed: int = 42,
    detectors: DetectorSettings | Literal["auto"] | None = "auto",
    canaries: tuple[list[str], np.ndarray] | tuple[list[str], np.ndarray, np.ndarray] | None = None,
    texts: Sequence[str] | None = None,
    canary_count: int = DEFAULT_CANARY_COUNT,
    classifier: dict[str, np.ndarray] | Sequence[dict[str, np.ndarray] | None] | None = None,
    holdout_rows: np.ndarray | None = None,
    overwrite: bool = False,
) -> TrainResult:
    """Train StandardScaler + LogisticRegression(C=1, class_weight="balanced", max_iter=2000).

    As paper A (section 3.2): rows are put on the unit sphere first when
    ``embedder.normalized``; a stratified ``holdout_fraction`` is kept out for the
    held-out metrics written into the manifest; the reference sample is drawn from
    the training rows.

    Multi-head bundles: ``y`` of shape (n, k) with ``head_names`` of length k fits one
    head per column, each with paper A's recipe, on the same train / hold-out split
    (stratified on column 0, the default head). Each head gets its own held-out metrics
    and ``thresholds`` (one :class:`Thresholds` for all, or one per head). An (n,) ``y``
    is one head, called ``head_names[0]`` if given, else "default".

    The drift detectors are fitted on the reference sample and their thresholds
    calibrated on windows of the held-out rows at ``detectors.false_alarm_rate``
    (:mod:`silentwatch.monitor.detection.suite`); ``detectors=None`` skips that, and
    the sidecar then calibrates at start-up on a split of the reference. ``"auto"``
    uses the default settings with the window shrunk (to a power of two, at least 16)
    until the held-out rows can calibrate it, and skips calibration when they cannot.
    The reference sample and the calibration use the default head's scores.

    ``classifier`` (keys ``scaler_mean``, ``scaler_scale``, ``coef``, ``intercept``)
    skips fitting and keeps that head frozen: the gate uses it to re-issue a validated
    classifier for a new embedder, with the reference and thresholds of the new space.
    For k heads it is a sequence of k such dicts, ``None`` where that head is fitted.

    Canaries (paired canaries, docs/detection.md): ``canaries=(texts, labels)`` or
    ``(texts, labels, embeddings)`` ships those (labels (m,) or (m, k)); otherwise, given
    ``texts`` (one per row of ``x``), up to ``canary_count`` held-out rows are picked
    (:func:`pick_head_canaries`: positives for every head where the hold-out has them,
    the rest half of each class of the default head) and kept with their embeddings.
    ``canary_count=0`` ships none.
    """
    x, y, names = _validate(x, y, head_names)
    k = len(names)
    y0 = y[:, 0]  # the default head: split, reference and calibration are its, as ever
    if texts is not None and len(texts) != x.shape[0]:
        raise ValueError(f"{len(texts)} texts but {x.shape[0]} embeddings; send one per row")
    if embedder.normalized:
        norms = row_norms(x)
        if (norms == 0).any():
            raise ValueError("some embeddings are all zeros and cannot be normalised")
        x = x / norms[:, None]
    head_thresholds = _per_head(thresholds, k, "thresholds") or [Thresholds()] * k
    head_thresholds = [t or Thresholds() for t in head_thresholds]
    given = _per_head(classifier, k, "classifier") or [None] * k
    idx = np.arange(x.shape[0])
    if holdout_rows is not None:
        ho = np.unique(np.asarray(holdout_rows, dtype=np.int64))
        if ho.size and (ho[0] < 0 or ho[-1] >= x.shape[0]):
            raise ValueError(f"holdout_rows must index the {x.shape[0]} embeddings")
        tr = np.setdiff1d(idx, ho)
    elif holdout_fraction > 0:
        tr, ho = train_test_split(idx, test_size=holdout_fraction, stratify=y0, random_state=seed)
    else:
        tr, ho = idx, idx[:0]

    classifiers: list[dict[str, np.ndarray]] = []
    for j, name in enumerate(names):
        if given[j] is not None:
            classifiers.append(_check_classifier(given[j], x.shape[1]))
            continue
        if k > 1:
            # A fit needs both classes; the whole-file check cannot see what the split left.
            pos = int(np.count_nonzero(y[tr, j]))
            if min(pos, tr.size - pos) < MIN_TRAIN_PER_CLASS:
                raise ValueError(
                    f"head {name!r} has {pos} unsafe and {tr.size - pos} safe rows in the "
                    f"training split ({int(np.count_nonzero(y[:, j]))} unsafe in all); need "
                    f"at least {MIN_TRAIN_PER_CLASS} of each to fit it: {_FIX}"
                )
        classifiers.append(fit_classifier(x[tr], y[tr, j], seed=seed))
    scorers = [
        LinearScorer.from_standardized(
            c["scaler_mean"],
            c["scaler_scale"],
            c["coef"],
            float(c["intercept"][0]),
            normalize=embedder.normalized,
        )
        for c in classifiers
    ]
    scorer = scorers[0]

    head_metrics: dict[str, dict[str, float]] = {}
    for j, name in enumerate(names):
        head_metrics[name] = (
            _holdout_metrics(scorers[j].predict_proba(x[ho]), y[ho, j], head_thresholds[j].flag)
            if ho.size
            else {}
        )
    metrics = head_metrics[names[0]]

    rng = np.random.default_rng(seed)
    ref_idx = np.sort(rng.choice(tr, size=min(reference_size, tr.size), replace=False))
    ref_x = x[ref_idx]
    reference = {
        "embeddings": ref_x.astype(np.float32),
        "scores": scorer.predict_proba(ref_x).astype(np.float32),
        "labels": y0[ref_idx],
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
            flag=head_thresholds[0].flag,
            high_confidence=head_thresholds[0].high_confidence,
        )
        calibration = suite.calibration
        reference.update(suite.arrays())
    if classifier_version is None:
        h = hashlib.sha256()
        for j, c in enumerate(classifiers):
            if j:  # one head hashes exactly as before multi-head bundles
                h.update(names[j].encode())
            for key in sorted(c):
                h.update(c[key].tobytes())
        classifier_version = f"lr-{h.hexdigest()[:12]}"

    def summary(j: int) -> TrainingSummary:
        return TrainingSummary(
            n_train=int(tr.size),
            n_holdout=int(ho.size),
            positive_rate=float(y[:, j].mean()),
            seed=seed,
            holdout_metrics=head_metrics[names[j]],
        )

    manifest_fields = {
        "classifier_version": classifier_version,
        "created_at": datetime.now(UTC),
        "embedding_dim": int(x.shape[1]),
        "embedder": embedder,
        "thresholds": head_thresholds[0],
        "training": summary(0),
        "detectors": calibration,
        "default_head": names[0],
        "heads": tuple(
            HeadManifest(
                name=names[j],
                file=head_file(names[j]),
                thresholds=head_thresholds[j],
                training=summary(j),
            )
            for j in range(1, k)
        ),
    }
    canary_arrays = None
    if canaries is not None:
        canary_arrays = _canary_arrays(canaries, x.shape[1], k)
    elif texts is not None and canary_count > 0 and ho.size:
        rows = ho[pick_head_canaries(y[ho], canary_count, seed=seed)]
        canary_arrays = {
            "texts": np.asarray([texts[i] for i in rows], dtype=str),
            "labels": y0[rows].astype(np.int8),
            "embeddings": x[rows].astype(np.float32),
        }
        if k > 1:
            canary_arrays["head_labels"] = y[rows].astype(np.int8)
    path = write_bundle(
        out_dir,
        manifest_fields,
        classifiers[0],
        reference,
        canaries=canary_arrays,
        head_classifiers={names[j]: classifiers[j] for j in range(1, k)},
        overwrite=overwrite,
    )
    return TrainResult(
        path=path,
        classifier_version=classifier_version,
        holdout_metrics=metrics,
        head_metrics=head_metrics,
    )


def _per_head(value: object, k: int, what: str) -> list | None:
    """``value`` for each of k heads: a single one (a dict or Thresholds) serves one head
    (thresholds: every head); a sequence must have one entry per head."""
    if value is None:
        return None
    if isinstance(value, (dict, Thresholds)):
        if isinstance(value, dict) and k > 1:
            raise ValueError(
                f"one classifier for {k} heads; give a sequence of {k} (None: fit that head)"
            )
        return [value] * k
    items = list(value)  # type: ignore[call-overload]
    if len(items) != k:
        raise ValueError(f"{len(items)} {what} for {k} heads; give one per head")
    return items


def _holdout_metrics(p: np.ndarray, y: np.ndarray, flag: float) -> dict[str, float]:
    """A head's held-out figures, as ``TrainingSummary.holdout_metrics`` records them.

    ROC-AUC is left out when the hold-out holds one class only (a rare head): label
    confirmation then has no reference for that head, rather than a meaningless one.
    """
    out: dict[str, float] = {}
    if 0 < np.count_nonzero(y) < y.size:
        out["roc_auc"] = float(roc_auc_score(y, p))
    out.update(
        {
            "accuracy": accuracy(p, y, flag),
            "mean_confidence": mean_confidence(p),
            "ece_5bin": expected_calibration_error(p, y, 5),
            # Label confirmation needs the held-out AUC's class counts for its error
            # (negatives: n_holdout - positives).
            "positives": float(np.count_nonzero(y == 1)),
        }
    )
    return out


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


def pick_head_canaries(y: np.ndarray, count: int, *, seed: int = 0) -> np.ndarray:
    """Indices of up to ``count`` rows so that every head gets positives where ``y`` has them.

    Each further head (columns 1..k-1, rare categories first in need) gets at least
    ``min(its positives, count // (2k))`` positive rows; the rest is filled half of each
    class of the default head (column 0) where possible, as :func:`pick_canaries` does.
    One head is :func:`pick_canaries` exactly. Sorted, seeded.

    Parameters
    ----------
    y : numpy.ndarray
        (n,) or (n, k) 0/1 labels, column 0 the default head.
    count : int
        Rows wanted (at most n are returned).
    seed : int
        Seeds the draw.

    Returns
    -------
    numpy.ndarray
        Sorted row indices.

    Examples
    --------
    >>> y = np.zeros((100, 2), dtype=int); y[:50, 0] = 1; y[[3, 60, 70], 1] = 1
    >>> rows = pick_head_canaries(y, 20)
    >>> rows.size, int(y[rows, 1].sum()) >= 3, int(y[rows, 0].sum())
    (20, True, 10)
    """
    y = np.asarray(y)
    if y.ndim == 1:
        y = y[:, None]
    n, k = y.shape
    if k == 1:
        return pick_canaries(y[:, 0], count, seed=seed)
    rng = np.random.default_rng(seed)
    count = min(count, n)
    quota = count // (2 * k)  # (k - 1) quotas take at most half of the canaries
    chosen = np.zeros(n, dtype=bool)
    for j in range(1, k):
        # Rows picked for an earlier head may already be positives of this one.
        take = min(int(np.count_nonzero(y[:, j])), quota) - int(np.count_nonzero(y[chosen, j]))
        if take > 0:
            free = np.flatnonzero((y[:, j] == 1) & ~chosen)
            chosen[rng.choice(free, take, replace=False)] = True
    rest = count - int(chosen.sum())
    pos = np.flatnonzero((y[:, 0] == 1) & ~chosen)
    neg = np.flatnonzero((y[:, 0] == 0) & ~chosen)
    have_pos = int(np.count_nonzero(y[chosen, 0]))
    n_pos = min(pos.size, rest, max(count // 2 - have_pos, rest - neg.size, 0))
    n_neg = min(neg.size, rest - n_pos)
    n_pos = min(pos.size, rest - n_neg)  # negatives short: positives fill the rest
    chosen[rng.choice(pos, n_pos, replace=False)] = True
    chosen[rng.choice(neg, n_neg, replace=False)] = True
    return np.flatnonzero(chosen)


def _canary_arrays(canaries: tuple, dim: int, k: int = 1) -> dict[str, np.ndarray]:
    texts, labels = canaries[0], np.asarray(canaries[1])
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if k > 1 and (labels.ndim != 2 or labels.shape[1] != k):
        raise ValueError(
            f"canary labels have shape {labels.shape} but the bundle has {k} heads: give "
            f"(texts, labels) with one label column per head, in head order"
        )
    if labels.ndim > 1 and k == 1:
        raise ValueError(f"canary labels have shape {labels.shape}; one head needs (n,)")
    if len(texts) == 0 or len(texts) != labels.shape[0]:
        raise ValueError(f"{len(texts)} canary texts but {labels.shape[0]} labels")
    if not np.isin(labels, (0, 1)).all():
        raise ValueError("canary labels must be 0 (safe) or 1 (unsafe)")
    out = {"texts": np.asarray(texts, dtype=str)}
    if k > 1:
        out["labels"] = labels[:, 0].astype(np.int8)
        out["head_labels"] = labels.astype(np.int8)
    else:
        out["labels"] = labels.astype(np.int8)
    if len(canaries) > 2 and canaries[2] is not None:
        emb = np.asarray(canaries[2], dtype=np.float32)
        if emb.shape != (len(texts), dim) or not np.isfinite(emb).all():
            raise ValueError(
                f"canary embeddings must be {len(texts)} finite rows of dimension {dim}, "
                f"got shape {emb.shape}"
            )
        out["embeddings"] = emb
    return out
