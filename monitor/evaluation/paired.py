"""Paired canaries: the same labelled texts under the validated embedder and the live one.

A bundle carries ``K`` labelled canary texts and their *reference* embeddings, made by the
embedder the classifier was validated with. The deployed service re-embeds the same texts
with its *live* embedder; this module compares the two, text by text:

* **has the embedding map changed?** The angle between each text's reference and live
  vector (:func:`paired_angles_degrees`) and the head-free linear CKA of the two matrices
  (:func:`linear_cka`). Re-running the same model on another batch size, thread count or
  in bfloat16 moves a text by a fraction of a degree; a different artefact moves it more
  (docs/benchmarks.md, "Paired canaries: the numerical noise floor").
* **is the frozen head worse?** Its ROC-AUC on the same texts, reference vs live, tested
  one-sided against ``margin`` with DeLong's paired variance (:func:`delong_paired`,
  :func:`auc_drop_paired_test`). Pairing is what makes a few hundred canaries enough: both
  AUCs are computed on the same cases, so their common sampling error cancels in the
  difference (``SE^2 = Var_a + Var_b - 2 Cov``), where label confirmation
  (:mod:`~silentwatch.monitor.evaluation.confirmation`) compares independent samples and
  must add the two variances.

:func:`paired_canary_reading` gathers both into one :class:`PairedCanaryReading`, with the
decision flip rate, accuracy (Wilson intervals), ECE and mean confidence (percentile
bootstrap intervals) for the live and the reference scores, and a second harm test: the
paired Brier-score increase (:func:`brier_increase_paired_test`), which also counts the
calibration damage AUC ignores and has more power where confidence broke (measured in
docs/benchmarks.md, "Paired canaries: which test"). ``failure`` is either test confirming:
a changed embedder that the head survives (the int8 export) is a change, not a failure.

The confidence intervals are two-sided at ``1 - alpha``; the two harm tests are one-sided
at ``alpha / 2`` each (Bonferroni within the source). ``alpha`` defaults to 0.005, half of
the silent-failure family's 1%: the other half goes to label confirmation, so the sources
together raise a false "the classifier got worse" at most 1% of the time per round.

Examples
--------
>>> rng = np.random.default_rng(0)
>>> ref = rng.normal(size=(400, 32)).astype(np.float32)
>>> y = (ref[:, 0] + rng.normal(size=400) > 0).astype(np.int8)
>>> w = np.eye(32, dtype=np.float32)[0]
>>> head = lambda x: 1.0 / (1.0 + np.exp(-3.0 * (x @ w)))
>>> same = paired_canary_reading(ref, ref + 1e-4, y, head)
>>> same.embedder_changed, same.failure
(False, False)
>>> q, _ = np.linalg.qr(rng.normal(size=(32, 32)))  # a new embedding map, the head frozen
>>> rotated = paired_canary_reading(ref, (ref @ q).astype(np.float32), y, head)
>>> rotated.embedder_changed, rotated.failure
(True, True)
>>> round(rotated.reference_auc, 2), round(rotated.live_auc, 2)
(0.82, 0.48)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from statistics import NormalDist
from typing import NamedTuple

import numpy as np

from silentwatch.monitor.evaluation.classification import (
    bin_index,
    check_scores_labels,
    expected_calibration_error,
)
from silentwatch.monitor.evaluation.confirmation import DEFAULT_MARGIN
from silentwatch.monitor.scoring import FLAG_THRESHOLD, HIGH_CONFIDENCE, confidence

__all__ = [
    "DEFAULT_ALPHA",
    "DEFAULT_ANGLE_TOLERANCE",
    "DEFAULT_BOOTSTRAP",
    "DEFAULT_BRIER_MARGIN",
    "DEFAULT_MARGIN",
    "CanaryGeometry",
    "DeLongPaired",
    "PairedAucDropTest",
    "PairedBrierTest",
    "PairedCanaryReading",
    "auc_drop_paired_test",
    "bootstrap_ece_confidence",
    "brier_increase_paired_test",
    "canary_geometry",
    "delong_paired",
    "linear_cka",
    "midranks",
    "paired_angles_degrees",
    "paired_canary_reading",
    "wilson_interval",
]

#: One-sided level of the paired AUC test and two-sided level of every interval: half of
#: the silent-failure family's 1%, the other half being label confirmation's (Bonferroni).
DEFAULT_ALPHA = 0.005
#: Mean paired angle, in degrees, above which the live embedder counts as changed. Running
#: all-MiniLM-L6-v2 itself another way moved 256 Civil Comments texts by at most 9e-5° in
#: float32 (batch size, threads, re-loads) and by a mean of 0.56° (max 0.92°) in bfloat16;
#: its int8 ONNX export, a different artefact that the head survives, by a mean of 1.88°.
#: 1° sits between them, a factor of ~1.8 from each; docs/benchmarks.md, "Paired
#: canaries: the numerical noise floor" (benchmarks/canary_noise.py), has the table.
DEFAULT_ANGLE_TOLERANCE = 1.0
#: A rise of the canaries' mean Brier score up to this is "no worse": 4% of canaries going
#: from sure-and-right to a coin flip. Harmless changes measured at most +0.0007 (lower
#: bound, int8 export, 1,000 bootstrap draws of 256 canaries; benchmarks/canary_power.py).
DEFAULT_BRIER_MARGIN = 0.01
#: Percentile-bootstrap resamples for the ECE and mean-confidence intervals.
DEFAULT_BOOTSTRAP = 1000
#: Below this many canaries of either class DeLong's variance (ddof 1) is undefined.
MIN_PER_CLASS = 2
#: Bins of the top-label ECE (paper A: 5, as ``expected_calibration_error``).
ECE_BINS = 5

_NAN = float("nan")
_NORMAL = NormalDist()


# -- has the embedding map changed? -------------------------------------------------------
def _finite_matrix(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{name} must be a non-empty (K, d) matrix, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} holds NaN or infinite values: re-embed those canary texts")
    return x


def paired_angles_degrees(reference: np.ndarray, live: np.ndarray) -> np.ndarray:
    """Angle between each text's reference and live embedding, in degrees.

    ``theta_i = arccos( <r_i, l_i> / (||r_i|| ||l_i||) )``, evaluated as
    ``2 atan2(||u_i - w_i||, ||u_i + w_i||)`` on the unit rows ``u_i``, ``w_i`` (the same
    angle, exact down to zero where the arccosine is not). Both matrices must share one
    space: the same ``d`` and the same axes (otherwise compare them with
    :func:`linear_cka`).

    Parameters
    ----------
    reference, live
        ``(K, d)`` embeddings of the same ``K`` texts, row ``i`` of each for text ``i``.

    Returns
    -------
    np.ndarray
        ``(K,)`` float64 angles in [0, 180].

    Raises
    ------
    ValueError
        For different shapes, non-finite values or a row of zero norm (an all-zero
        embedding has no direction: the embedder failed on that text).

    >>> paired_angles_degrees(np.array([[1.0, 0.0], [1.0, 1.0]]),
    ...                       np.array([[0.0, 2.0], [1.0, 1.0]])).round(6).tolist()
    [90.0, 0.0]
    """
    r = _finite_matrix(reference, "reference")
    v = _finite_matrix(live, "live")
    if r.shape != v.shape:
        raise ValueError(
            f"reference is {r.shape} but live is {v.shape}: embed the same canary texts, "
            "in the same order, into the same space"
        )
    nr = np.sqrt(np.einsum("ij,ij->i", r, r))
    nv = np.sqrt(np.einsum("ij,ij->i", v, v))
    for norms, name in ((nr, "reference"), (nv, "live")):
        zero = np.flatnonzero(norms == 0.0)
        if zero.size:
            raise ValueError(
                f"{name} rows {zero[:5].tolist()} have zero norm ({zero.size} in all): an "
                "all-zero embedding has no angle; re-embed those texts or drop the canaries"
            )
    u, w = r / nr[:, None], v / nv[:, None]
    # 2 atan2(|u - w|, |u + w|), not arccos(u . w): arccos is flat at cos = 1, so it
    # cannot resolve angles below ~1e-6 degrees in float64, which is where re-runs of the
    # same model land (Kahan, "How futile are mindless assessments of roundoff", 2006).
    diff = np.sqrt(np.einsum("ij,ij->i", u - w, u - w))
    total = np.sqrt(np.einsum("ij,ij->i", u + w, u + w))
    return np.degrees(2.0 * np.arctan2(diff, total))


def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear CKA between two representations of the same ``K`` rows.

    Kornblith, Norouzi, Lee & Hinton (2019), "Similarity of Neural Network Representations
    Revisited", ICML, Eq. 2 for the linear kernel:

    ``CKA(X, Y) = ||Y_c^T X_c||_F^2 / (||X_c^T X_c||_F ||Y_c^T Y_c||_F)``

    with ``X_c``, ``Y_c`` column-centred. 1 when ``Y`` is ``X`` up to an orthogonal map and
    an isotropic scale, near 0 for unrelated representations; the two may have different
    widths. Computed in whichever form is smaller: the feature form above (``d x d``
    cross-products, cost ``K d^2``) or, when ``K`` is below the widths, the equivalent
    Gram form ``<K_x, K_y>_F / (||K_x||_F ||K_y||_F)`` with ``K_x = X_c X_c^T`` (cost
    ``K^2 d``). NaN when either matrix is constant (no variance to compare).

    Parameters
    ----------
    x, y
        ``(K, d_x)`` and ``(K, d_y)``: the same rows under two maps.

    Returns
    -------
    float
        In [0, 1].

    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=(300, 8))
    >>> q, _ = np.linalg.qr(rng.normal(size=(8, 8)))
    >>> round(linear_cka(x, 3 * x @ q), 6)
    1.0
    """
    xc = _finite_matrix(x, "x")
    yc = _finite_matrix(y, "y")
    if xc.shape[0] != yc.shape[0]:
        raise ValueError(f"CKA needs the same rows, got {xc.shape[0]} and {yc.shape[0]}")
    xc = xc - xc.mean(axis=0)
    yc = yc - yc.mean(axis=0)
    if xc.shape[0] < max(xc.shape[1], yc.shape[1]):
        kx, ky = xc @ xc.T, yc @ yc.T
        cross = float(np.vdot(kx, ky))  # <K_x, K_y>_F = ||Y_c^T X_c||_F^2
        denom = float(np.linalg.norm(kx) * np.linalg.norm(ky))
    else:
        cross = float(np.linalg.norm(yc.T @ xc) ** 2)
        denom = float(np.linalg.norm(xc.T @ xc) * np.linalg.norm(yc.T @ yc))
    return cross / denom if denom > 0.0 else _NAN


# -- is the frozen head worse? -------------------------------------------------------------
def midranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks with ties sharing their average rank (``scipy.stats.rankdata``'s
    ``"average"``), by one sort: ``O(n log n)``.

    >>> midranks(np.array([0.3, 0.1, 0.3, 0.2])).tolist()
    [3.5, 1.0, 3.5, 2.0]
    """
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    last = np.cumsum(counts)  # rank of each distinct value's last copy
    return (last - (counts - 1) / 2.0)[inverse.reshape(-1)]


class DeLongPaired(NamedTuple):
    """Two correlated ROC-AUCs on the same cases and their DeLong (co)variances."""

    auc_a: float
    auc_b: float
    var_a: float
    var_b: float
    cov: float
    se_difference: float  # standard error of auc_a - auc_b


def _delong_components(
    y: np.ndarray, scores: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """AUCs and the structural components ``V10`` (positives) and ``V01`` (negatives) of
    each row of ``scores`` (``(m, K)``), by mid-ranks (Sun & Xu 2014, "Fast implementation
    of DeLong's algorithm", IEEE Signal Processing Letters 21(11))."""
    pos, neg = y == 1, y == 0
    n1, n0 = int(pos.sum()), int(neg.sum())
    v10 = np.empty((scores.shape[0], n1))
    v01 = np.empty((scores.shape[0], n0))
    for k, s in enumerate(scores):
        r_all = midranks(s)
        # A positive's rank among all, minus its rank among the positives, counts the
        # negatives below it (ties at half): n0 V10.
        v10[k] = (r_all[pos] - midranks(s[pos])) / n0
        # Likewise a negative's counts the positives below it (ties at half); V01, the
        # share above it, is 1 minus that share.
        v01[k] = 1.0 - (r_all[neg] - midranks(s[neg])) / n1
    return v10.mean(axis=1), v10, v01


def delong_paired(labels: np.ndarray, scores_a: np.ndarray, scores_b: np.ndarray) -> DeLongPaired:
    """ROC-AUCs of two scores on the same cases, with DeLong's paired covariance.

    DeLong, DeLong & Clarke-Pearson (1988), "Comparing the areas under two or more
    correlated receiver operating characteristic curves: a nonparametric approach",
    Biometrics 44(3):837-845. With ``n1`` positives ``X_i`` and ``n0`` negatives ``Y_j``
    and ``psi(x, y) = 1, 1/2, 0`` for ``x > y``, ``x = y``, ``x < y``, each score ``r`` has
    the structural components

    ``V10_r(X_i) = (1/n0) sum_j psi(X_i^r, Y_j^r)``,
    ``V01_r(Y_j) = (1/n1) sum_i psi(X_i^r, Y_j^r)``,

    whose means are both ``AUC_r``. With ``S10`` and ``S01`` the sample covariance
    matrices (ddof 1) of the ``V10`` and the ``V01`` over the two scores,

    ``Cov(AUC_r, AUC_s) = S10[r, s] / n1 + S01[r, s] / n0``,

    and ``SE(AUC_a - AUC_b) = sqrt(Var_a + Var_b - 2 Cov)``. The components come from
    mid-ranks (Sun & Xu 2014), so the cost is ``O(K log K)``. NaN everywhere with fewer
    than two cases of either class.

    Parameters
    ----------
    labels
        ``(K,)`` in {0, 1}, 1 for the positive (unsafe) class.
    scores_a, scores_b
        ``(K,)`` finite scores of the same cases (any monotone scale: only order counts).

    Returns
    -------
    DeLongPaired

    >>> y = np.array([1, 1, 0, 0])
    >>> r = delong_paired(y, np.array([0.9, 0.6, 0.5, 0.7]), np.array([0.9, 0.8, 0.5, 0.7]))
    >>> r.auc_a, r.auc_b, r.var_a, r.var_b
    (0.75, 1.0, 0.125, 0.0)
    """
    y = np.asarray(labels).reshape(-1)
    a = np.asarray(scores_a, np.float64).reshape(-1)
    b = np.asarray(scores_b, np.float64).reshape(-1)
    if not a.size == b.size == y.size:
        raise ValueError(
            f"{y.size} labels but {a.size} and {b.size} scores: give both scores of every case"
        )
    s = np.stack([a, b])
    if y.size and not ((y == 0) | (y == 1)).all():
        raise ValueError("labels must be binary, in {0, 1}")
    if not np.isfinite(s).all():
        raise ValueError("scores hold NaN or infinite values")
    n1 = int((y == 1).sum())
    n0 = y.size - n1
    if min(n1, n0) < MIN_PER_CLASS:
        return DeLongPaired(_NAN, _NAN, _NAN, _NAN, _NAN, _NAN)
    auc, v10, v01 = _delong_components(y, s)
    cov = np.cov(v10) / n1 + np.cov(v01) / n0  # (2, 2): ddof 1, as DeLong et al.
    var_diff = max(float(cov[0, 0] + cov[1, 1] - 2.0 * cov[0, 1]), 0.0)  # rounding
    return DeLongPaired(
        float(auc[0]),
        float(auc[1]),
        float(cov[0, 0]),
        float(cov[1, 1]),
        float(cov[0, 1]),
        math.sqrt(var_diff),
    )


@dataclass(frozen=True)
class PairedAucDropTest:
    """One paired test of ``H0: AUC_ref - AUC_live <= margin`` (:func:`auc_drop_paired_test`)."""

    reference_auc: float
    live_auc: float
    drop: float  # reference - live
    standard_error: float  # of the drop, DeLong's paired SE
    lower_bound: float  # one-sided (1 - alpha) lower confidence bound of the drop
    p_value: float  # of H0: drop <= margin
    confirmed: bool  # lower_bound > margin
    margin: float
    alpha: float

    def as_dict(self) -> dict[str, float | bool]:
        return asdict(self)


def auc_drop_paired_test(
    labels: np.ndarray,
    reference_scores: np.ndarray,
    live_scores: np.ndarray,
    margin: float = DEFAULT_MARGIN,
    alpha: float = DEFAULT_ALPHA,
) -> PairedAucDropTest:
    """Has the head's ROC-AUC on the same cases fallen by more than ``margin``?

    ``H0: AUC_ref - AUC_live <= margin`` against ``H1: AUC_ref - AUC_live > margin``, with
    the drop's standard error from DeLong et al. (1988) for two correlated ROC curves
    (:func:`delong_paired`):

    ``z = (drop - margin) / SE``, ``p = 1 - Phi(z)``,
    ``lower = drop - z_{1-alpha} SE``; confirmed when ``lower > margin`` (equivalently
    ``p < alpha``).

    Degenerate cases: fewer than two cases of either class leaves the drop untestable
    (NaN statistics, not confirmed). A zero SE means the DeLong estimate sees no sampling
    error in the difference, e.g. identical scores (drop 0); the drop is then taken as
    exact: ``lower = drop``, confirmed only if it exceeds ``margin``.

    Parameters
    ----------
    labels
        ``(K,)`` in {0, 1}.
    reference_scores, live_scores
        ``(K,)`` scores of the same cases under the reference and the live embedder.
    margin
        A drop up to this is "no worse" (the same margin as label confirmation).
    alpha
        One-sided level.

    Returns
    -------
    PairedAucDropTest

    >>> y = np.r_[np.ones(100), np.zeros(100)]
    >>> ref = y + np.random.default_rng(0).normal(0, 0.8, 200)
    >>> t = auc_drop_paired_test(y, ref, np.random.default_rng(1).normal(size=200))
    >>> t.confirmed, round(t.reference_auc, 2), round(t.live_auc, 2)
    (True, 0.84, 0.51)
    >>> auc_drop_paired_test(y, ref, ref).confirmed  # the same scores: drop 0, SE 0
    False
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    return _drop_test(delong_paired(labels, reference_scores, live_scores), margin, alpha)


def _one_sided(estimate: float, se: float, margin: float, alpha: float) -> tuple[float, float]:
    """``(p, lower)`` of the z-test of ``H0: true <= margin``; ``lower`` is the one-sided
    ``1 - alpha`` bound. A zero ``se`` takes the estimate as exact."""
    if se > 0.0:
        p = _NORMAL.cdf(-(estimate - margin) / se)  # 1 - Phi(z), without cancellation
        return p, estimate - _NORMAL.inv_cdf(1.0 - alpha) * se
    return (0.0 if estimate > margin else 1.0), estimate


def _drop_test(d: DeLongPaired, margin: float, alpha: float) -> PairedAucDropTest:
    """:func:`auc_drop_paired_test` from a :func:`delong_paired` of (reference, live)."""
    drop = d.auc_a - d.auc_b
    if not math.isfinite(d.se_difference):
        return PairedAucDropTest(d.auc_a, d.auc_b, drop, _NAN, _NAN, _NAN, False, margin, alpha)
    se = d.se_difference
    p, lower = _one_sided(drop, se, margin, alpha)
    return PairedAucDropTest(
        reference_auc=d.auc_a,
        live_auc=d.auc_b,
        drop=drop,
        standard_error=se,
        lower_bound=lower,
        p_value=p,
        confirmed=bool(lower > margin),
        margin=margin,
        alpha=alpha,
    )


# -- intervals -----------------------------------------------------------------------------
@dataclass(frozen=True)
class PairedBrierTest:
    """One paired test of ``H0: mean(Brier_live - Brier_ref) <= margin``."""

    reference_brier: float
    live_brier: float
    increase: float  # mean over canaries of (p_live - y)^2 - (p_ref - y)^2
    standard_error: float  # sd of the per-canary differences (ddof 1) / sqrt(K)
    lower_bound: float  # one-sided (1 - alpha) lower confidence bound of the increase
    p_value: float
    confirmed: bool  # lower_bound > margin
    margin: float
    alpha: float


def brier_increase_paired_test(
    labels: np.ndarray,
    reference_scores: np.ndarray,
    live_scores: np.ndarray,
    margin: float = DEFAULT_BRIER_MARGIN,
    alpha: float = DEFAULT_ALPHA,
) -> PairedBrierTest:
    """Has the head's Brier score (Brier 1950) on the same cases risen by more than ``margin``?

    Per case ``d_i = (p_live_i - y_i)^2 - (p_ref_i - y_i)^2``; a one-sided z-test of
    ``H0: E[d] <= margin``: ``lower = mean(d) - z_{1-alpha} sd(d) / sqrt(K)``, confirmed
    when ``lower > margin``. The Brier score is a proper scoring rule, so it rises both when
    the ranking breaks and when confidence stops matching accuracy (paper A's silent
    failure: confidence up, accuracy down); pairing cancels the cases' own difficulty.
    With every ``d_i`` equal the increase is exact (``lower = mean(d)``).

    >>> y = np.r_[np.ones(100), np.zeros(100)]
    >>> ref = np.where(y == 1, 0.8, 0.2)
    >>> broken = np.where(np.arange(200) % 2 == 0, 0.9, 0.1)  # confident, half wrong
    >>> t = brier_increase_paired_test(y, ref, broken)
    >>> t.confirmed, round(t.reference_brier, 2), round(t.live_brier, 2)
    (True, 0.04, 0.41)
    >>> brier_increase_paired_test(y, ref, ref).confirmed
    False
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    y = np.asarray(labels, dtype=np.float64).reshape(-1)
    a = (np.asarray(reference_scores, dtype=np.float64).reshape(-1) - y) ** 2
    b = (np.asarray(live_scores, dtype=np.float64).reshape(-1) - y) ** 2
    if not (a.shape == b.shape == y.shape) or y.size < 2:
        raise ValueError("give one reference and one live score per label, at least two cases")
    d = b - a
    inc = float(d.mean())
    se = float(d.std(ddof=1) / math.sqrt(d.size))
    p, lower = _one_sided(inc, se, margin, alpha)
    return PairedBrierTest(
        reference_brier=float(a.mean()),
        live_brier=float(b.mean()),
        increase=inc,
        standard_error=se,
        lower_bound=lower,
        p_value=p,
        confirmed=bool(lower > margin),
        margin=margin,
        alpha=alpha,
    )


def wilson_interval(k: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """Two-sided ``1 - alpha`` Wilson score interval for a proportion ``k / n``.

    Wilson (1927), "Probable inference, the law of succession, and statistical
    inference", JASA 22(158):209-212; Newcombe (1998), Statistics in Medicine 17:857-872,
    method 3. With ``z = z_{1-alpha/2}`` and ``p = k / n``:

    ``(p + z^2/(2n) -+ z sqrt(p(1-p)/n + z^2/(4n^2))) / (1 + z^2/n)``.

    Unlike the Wald interval it stays inside [0, 1] and is not empty at ``k = 0``.
    ``(nan, nan)`` when ``n = 0``.

    >>> [round(v, 4) for v in wilson_interval(81, 263)]  # Newcombe 1998, Table II
    [0.2553, 0.3662]
    """
    if n < 0 or not 0 <= k <= max(n, 0):
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if n == 0:
        return _NAN, _NAN
    z = _NORMAL.inv_cdf(1.0 - alpha / 2.0)
    p = k / n
    z2n = z * z / n
    centre = (p + z2n / 2.0) / (1.0 + z2n)
    half = z * math.sqrt(p * (1.0 - p) / n + z2n / (4.0 * n)) / (1.0 + z2n)
    # Clipped: at k = 0 or n the bound is 0 or 1 exactly, but rounding can leave 1e-17.
    return max(0.0, centre - half), min(1.0, centre + half)


def _stratified_counts(y: np.ndarray, b: int, rng: np.random.Generator) -> np.ndarray:
    """``(b, K)`` multiplicities of ``b`` bootstrap resamples drawn within each class.

    Within each class, because the canary set is stratified by design: its class mix is
    fixed, not sampled, and a resample that changed it would add variance the canaries
    do not have.
    """
    k = y.size
    # One (b, K) buffer of flat indices, row r's draws offset by r K so that a single
    # bincount counts every resample; int32 and in place, because at B = 1000 the
    # arrays, not the arithmetic, are the cost (fresh pages of memory).
    index = np.int32 if b * k < 2**31 else np.int64
    draws = np.empty((b, k), dtype=index)
    start = 0
    for members in (np.flatnonzero(y == 1), np.flatnonzero(y == 0)):
        if members.size:  # a class with no canary has nothing to draw
            pick = rng.integers(0, members.size, size=(b, members.size), dtype=index)
            np.take(members.astype(index), pick, out=draws[:, start : start + members.size])
            start += members.size
    draws += (np.arange(b, dtype=index) * k)[:, None]
    return np.bincount(draws.ravel(), minlength=b * k).reshape(b, k).astype(np.float64)


def bootstrap_ece_confidence(
    scores: np.ndarray,
    labels: np.ndarray,
    *,
    alpha: float = DEFAULT_ALPHA,
    resamples: int = DEFAULT_BOOTSTRAP,
    seed: int = 0,
    n_bins: int = ECE_BINS,
) -> np.ndarray:
    """Percentile-bootstrap intervals of top-label ECE and mean confidence, for several
    score vectors of the same cases at once.

    Each resample draws the ``K`` cases with replacement within each class (the same
    draws for every score vector: paired), and recomputes

    ``ECE = sum_b |sum_{i in B_b} (1[top label right]_i - c_i)| / K`` (5 bins on
    ``c = max(p, 1-p)``, as ``classification.expected_calibration_error``) and ``mean c``.
    Vectorised: with ``W`` the ``(B, K)`` resample multiplicities, both are matrix
    products of ``W`` with per-case terms. The interval is the ``alpha/2`` and
    ``1 - alpha/2`` quantiles of the ``B`` values (Efron & Tibshirani 1993, "An
    Introduction to the Bootstrap", ch. 13).

    Parameters
    ----------
    scores
        ``(m, K)`` P(unsafe) of ``m`` score vectors (or ``(K,)`` for one).
    labels
        ``(K,)`` in {0, 1}.
    alpha, resamples, seed, n_bins
        Two-sided level, ``B``, the generator's seed, ECE bins.

    Returns
    -------
    np.ndarray
        ``(m, 2, 2)``: ``[score vector, (ECE, mean confidence), (low, high)]``.

    >>> p = np.array([0.9, 0.8, 0.3, 0.2, 0.6, 0.1])
    >>> y = np.array([1, 1, 0, 0, 0, 1])
    >>> ci = bootstrap_ece_confidence(p, y, alpha=0.05, resamples=200)
    >>> bool(ci[0, 0, 0] <= expected_calibration_error(p, y) <= ci[0, 0, 1])
    True
    """
    p = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    y = np.asarray(labels).reshape(-1)
    for row in p:
        check_scores_labels(row, y)
    if resamples < 1:
        raise ValueError(f"resamples must be at least 1, got {resamples}")
    m, k = p.shape
    c = confidence(p)
    hit = (p >= 0.5) == (y == 1)  # the top label, whatever the flag threshold
    gap = hit - c  # (m, K): accuracy minus confidence, per case
    # Per case, its gap spread into its confidence bin: (K, m * n_bins); then W @ that is
    # every resample's per-bin sum at once.
    spread = np.zeros((k, m, n_bins))
    bins = bin_index(c, n_bins)  # (m, K)
    cases = np.arange(k)
    for j in range(m):
        spread[cases, j, bins[j]] = gap[j]
    w = _stratified_counts(y, resamples, np.random.default_rng(seed))
    per_bin = (w @ spread.reshape(k, m * n_bins)).reshape(resamples, m, n_bins)
    ece = np.abs(per_bin).sum(axis=2) / k  # (B, m)
    mean_c = (w @ c.T) / k  # (B, m)
    q = [alpha / 2.0, 1.0 - alpha / 2.0]
    out = np.empty((m, 2, 2))
    out[:, 0, :] = np.quantile(ece, q, axis=0).T
    out[:, 1, :] = np.quantile(mean_c, q, axis=0).T
    return out


# -- the reading ---------------------------------------------------------------------------
Interval = tuple[float, float]


@dataclass(frozen=True)
class PairedCanaryReading:
    """One comparison of the canaries' live embeddings with their reference embeddings.

    Angles are in degrees; every interval is two-sided at ``1 - alpha``; ``live_*`` and
    ``reference_*`` are the frozen head's metrics on the live and the reference
    embeddings of the same texts (decisions at ``flag``, ECE and confidence on the top
    label ``p >= 0.5``, as :mod:`~silentwatch.monitor.evaluation.classification`).
    """

    size: int
    positives: int
    # Has the embedding map changed?
    angle_mean_degrees: float
    angle_median_degrees: float
    angle_p90_degrees: float
    angle_max_degrees: float
    linear_cka: float
    angle_tolerance_degrees: float
    embedder_changed: bool  # angle_mean_degrees > angle_tolerance_degrees
    # Did the head's decisions move?
    flip_rate: float  # share of canaries whose decision at `flag` differs from the reference's
    flip_rate_ci: Interval  # Wilson
    # Is the head worse? (live and reference on the same texts)
    live_auc: float
    live_auc_ci: Interval  # DeLong variance, normal approximation, clipped to [0, 1]
    reference_auc: float
    live_accuracy: float
    live_accuracy_ci: Interval  # Wilson
    reference_accuracy: float
    reference_accuracy_ci: Interval
    live_ece: float
    live_ece_ci: Interval  # percentile bootstrap, stratified by class
    reference_ece: float
    reference_ece_ci: Interval
    live_mean_confidence: float
    live_mean_confidence_ci: Interval  # percentile bootstrap
    reference_mean_confidence: float
    reference_mean_confidence_ci: Interval
    live_high_confidence_share: float  # share with max(p, 1-p) > high_confidence
    reference_high_confidence_share: float
    auc_drop: PairedAucDropTest  # at alpha / 2
    brier_increase: PairedBrierTest  # at alpha / 2
    failure: bool  # auc_drop.confirmed or brier_increase.confirmed
    flag: float
    high_confidence: float
    alpha: float

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class CanaryGeometry:
    """How far the canaries moved, whatever the head: per-canary angles and the linear CKA
    of the two matrices. A multi-head bundle computes it once per submission
    (:func:`canary_geometry`) and hands it to every head's :func:`paired_canary_reading`."""

    angles: np.ndarray  # (K,) degrees
    linear_cka: float


def canary_geometry(reference: np.ndarray, live: np.ndarray) -> CanaryGeometry:
    """:func:`paired_angles_degrees` and :func:`linear_cka` of the same canaries (raises
    ValueError as they do).

    >>> g = canary_geometry(np.eye(3), np.eye(3))
    >>> g.angles.tolist(), round(g.linear_cka, 6)
    ([0.0, 0.0, 0.0], 1.0)
    """
    return CanaryGeometry(paired_angles_degrees(reference, live), linear_cka(reference, live))


def _scores(
    predict_proba: Callable[[np.ndarray], np.ndarray], x: np.ndarray, name: str
) -> np.ndarray:
    """The head's P(unsafe) for ``x`` as float64, checked: one probability per row."""
    # float32 in, as the request path scores (LinearScorer takes float32 rows).
    p = np.asarray(predict_proba(np.ascontiguousarray(x, dtype=np.float32)), dtype=np.float64)
    p = p.reshape(-1)
    if p.size != x.shape[0]:
        raise ValueError(
            f"predict_proba returned {p.size} scores for {x.shape[0]} {name} canaries: it "
            "must map (K, d) embeddings to K probabilities"
        )
    if not (np.isfinite(p).all() and p.min() >= 0.0 and p.max() <= 1.0):
        raise ValueError(f"predict_proba gave {name} scores outside [0, 1] or NaN")
    return p


def paired_canary_reading(
    reference_embeddings: np.ndarray,
    live_embeddings: np.ndarray,
    labels: np.ndarray,
    predict_proba: Callable[[np.ndarray], np.ndarray],
    *,
    flag: float = FLAG_THRESHOLD,
    high_confidence: float = HIGH_CONFIDENCE,
    margin: float = DEFAULT_MARGIN,
    alpha: float = DEFAULT_ALPHA,
    angle_tolerance: float = DEFAULT_ANGLE_TOLERANCE,
    bootstrap: int = DEFAULT_BOOTSTRAP,
    seed: int = 0,
    brier_margin: float = DEFAULT_BRIER_MARGIN,
    geometry: CanaryGeometry | None = None,
) -> PairedCanaryReading:
    """Compare the canaries' live embeddings with their reference embeddings.

    See the module docstring: angles and linear CKA say whether the embedding map
    changed (``embedder_changed`` when the mean angle exceeds ``angle_tolerance``);
    the frozen head's paired ROC-AUC test says whether that harmed it (``failure``).

    Parameters
    ----------
    reference_embeddings, live_embeddings
        ``(K, d)`` embeddings of the same canary texts, in the same order: the bundle's
        (validated embedder) and the live embedder's.
    labels
        ``(K,)`` in {0, 1}, 1 for unsafe.
    predict_proba
        The bundle's head: ``(K, d)`` float32 -> ``(K,)`` P(unsafe), e.g.
        ``LinearScorer.predict_proba``.
    flag
        Decision threshold for the flip rate and accuracy.
    high_confidence
        ``max(p, 1-p)`` above this counts as sure (paper A: 0.8).
    margin, alpha
        The AUC test's "no worse" margin, and the source's one-sided level (each harm
        test runs at ``alpha / 2``); ``alpha`` is also the two-sided level of every
        interval.
    angle_tolerance
        Mean angle, in degrees, above which the embedder counts as changed.
    bootstrap, seed
        Resamples and seed of the ECE and mean-confidence intervals.
    brier_margin
        The Brier test's "no worse" margin (:func:`brier_increase_paired_test`).
    geometry
        :func:`canary_geometry` of these two matrices, when the caller has it already (one
        per submission for every head); computed here otherwise.

    Returns
    -------
    PairedCanaryReading

    Raises
    ------
    ValueError
        For matrices of different shapes, non-finite or all-zero rows, labels that are
        not one binary label per canary, or a ``predict_proba`` that does not return one
        probability per row.
    """
    if geometry is None:
        geometry = canary_geometry(reference_embeddings, live_embeddings)
    angles = geometry.angles
    k = angles.size
    y = np.asarray(labels).reshape(-1)
    if y.size != k:
        raise ValueError(f"{y.size} labels for {k} canaries: give one label per canary text")
    if not ((y == 0) | (y == 1)).all():
        raise ValueError("labels must be binary, in {0, 1} (1 for unsafe)")
    y = y.astype(np.int8)
    p_ref = _scores(predict_proba, np.asarray(reference_embeddings), "reference")
    p_live = _scores(predict_proba, np.asarray(live_embeddings), "live")

    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    delong = delong_paired(y, p_ref, p_live)
    # Two harm tests, one source: Bonferroni within it keeps the source at alpha.
    test = _drop_test(delong, margin, alpha / 2)
    brier = brier_increase_paired_test(y, p_ref, p_live, brier_margin, alpha / 2)
    z = _NORMAL.inv_cdf(1.0 - alpha / 2.0)
    half = z * math.sqrt(delong.var_b)
    live_auc_ci = (
        (max(0.0, test.live_auc - half), min(1.0, test.live_auc + half))
        if math.isfinite(half)
        else (_NAN, _NAN)  # too few of a class: no AUC, no interval (max() would hide NaN)
    )

    dec_ref, dec_live = p_ref >= flag, p_live >= flag
    flips = int((dec_ref != dec_live).sum())
    right_ref = int((dec_ref == (y == 1)).sum())
    right_live = int((dec_live == (y == 1)).sum())
    boot = bootstrap_ece_confidence(
        np.stack([p_live, p_ref]), y, alpha=alpha, resamples=bootstrap, seed=seed
    )
    c_live, c_ref = confidence(p_live), confidence(p_ref)

    def ci(row: int, metric: int) -> Interval:
        return float(boot[row, metric, 0]), float(boot[row, metric, 1])

    mean_angle = float(angles.mean())
    return PairedCanaryReading(
        size=k,
        positives=int(y.sum()),
        angle_mean_degrees=mean_angle,
        angle_median_degrees=float(np.median(angles)),
        angle_p90_degrees=float(np.percentile(angles, 90)),
        angle_max_degrees=float(angles.max()),
        linear_cka=geometry.linear_cka,
        angle_tolerance_degrees=angle_tolerance,
        embedder_changed=mean_angle > angle_tolerance,
        flip_rate=flips / k,
        flip_rate_ci=wilson_interval(flips, k, alpha),
        live_auc=test.live_auc,
        live_auc_ci=live_auc_ci,
        reference_auc=test.reference_auc,
        live_accuracy=right_live / k,
        live_accuracy_ci=wilson_interval(right_live, k, alpha),
        reference_accuracy=right_ref / k,
        reference_accuracy_ci=wilson_interval(right_ref, k, alpha),
        live_ece=expected_calibration_error(p_live, y),
        live_ece_ci=ci(0, 0),
        reference_ece=expected_calibration_error(p_ref, y),
        reference_ece_ci=ci(1, 0),
        live_mean_confidence=float(c_live.mean()),
        live_mean_confidence_ci=ci(0, 1),
        reference_mean_confidence=float(c_ref.mean()),
        reference_mean_confidence_ci=ci(1, 1),
        live_high_confidence_share=float((c_live > high_confidence).mean()),
        reference_high_confidence_share=float((c_ref > high_confidence).mean()),
        auc_drop=test,
        brier_increase=brier,
        failure=test.confirmed or brier.confirmed,
        flag=flag,
        high_confidence=high_confidence,
        alpha=alpha,
    )
