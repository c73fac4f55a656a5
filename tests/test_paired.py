"""Paired canaries (monitor/evaluation/paired.py): DeLong's paired AUC variance against
brute force, scikit-learn and the bootstrap; linear CKA's invariances; Wilson intervals
against Newcombe's published values; and whole readings of a frozen head over a synthetic
384-d embedding world re-embedded with noise, rotated, or rotated around the head."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import rankdata
from sklearn.metrics import roc_auc_score

from silentwatch.monitor.evaluation.classification import (
    expected_calibration_error,
    mean_confidence,
)
from silentwatch.monitor.evaluation.paired import (
    DEFAULT_ALPHA,
    DEFAULT_ANGLE_TOLERANCE,
    _stratified_counts,
    auc_drop_paired_test,
    bootstrap_ece_confidence,
    delong_paired,
    linear_cka,
    midranks,
    paired_angles_degrees,
    paired_canary_reading,
    wilson_interval,
)
from silentwatch.monitor.scoring import LinearScorer
from silentwatch.monitor.simulate.world import SyntheticWorld


def feature_form_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Kornblith et al. (2019), eq. 2, written out in the feature-space form."""
    x, y = x - x.mean(0), y - y.mean(0)
    cross = np.linalg.norm(y.T @ x, "fro") ** 2
    return float(cross / (np.linalg.norm(x.T @ x, "fro") * np.linalg.norm(y.T @ y, "fro")))


def _binormal(n_pos: int, n_neg: int, mu: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.r_[np.ones(n_pos, np.int8), np.zeros(n_neg, np.int8)]
    return y, np.r_[rng.normal(mu, 1.0, n_pos), rng.normal(0.0, 1.0, n_neg)]


def _brute_force_delong(y: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """DeLong et al. (1988) by the definition: the full n1 x n0 psi matrices."""
    comps = []
    for s in (a, b):
        x, z = s[y == 1][:, None], s[y == 0][None, :]
        psi = (x > z) + 0.5 * (x == z)
        comps.append((psi.mean(axis=1), psi.mean(axis=0)))
    v10 = np.stack([c[0] for c in comps])
    v01 = np.stack([c[1] for c in comps])
    return np.cov(v10) / v10.shape[1] + np.cov(v01) / v01.shape[1]


# -- DeLong ---------------------------------------------------------------------------------
def test_midranks_are_scipys_average_ranks() -> None:
    x = np.random.default_rng(0).integers(0, 20, 300).astype(float)  # many ties
    np.testing.assert_array_equal(midranks(x), rankdata(x))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_delong_aucs_equal_sklearn_and_covariance_equals_brute_force(seed: int) -> None:
    y, a = _binormal(70, 130, 1.0, seed)
    b = a + np.random.default_rng(seed + 10).normal(0, 0.7, a.size)
    a, b = np.round(a, 1), np.round(b, 1)  # ties within and across classes
    d = delong_paired(y, a, b)
    assert d.auc_a == pytest.approx(roc_auc_score(y, a), abs=1e-12)
    assert d.auc_b == pytest.approx(roc_auc_score(y, b), abs=1e-12)
    cov = _brute_force_delong(y, a, b)
    np.testing.assert_allclose([d.var_a, d.var_b, d.cov], [cov[0, 0], cov[1, 1], cov[0, 1]])
    se = math.sqrt(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    assert d.se_difference == pytest.approx(se)


def test_delong_by_hand() -> None:
    # Positives 0.9, 0.6; negatives 0.5, 0.7. Score a: V10 = (1, 1/2), V01 = (1, 1/2), so
    # AUC 3/4 and, with var(1, 1/2) = 1/8 (ddof 1), Var = 1/8 / 2 + 1/8 / 2 = 1/8.
    # Score b separates perfectly: V10 = V01 = (1, 1), Var 0, Cov 0.
    y = np.array([1, 1, 0, 0])
    d = delong_paired(y, np.array([0.9, 0.6, 0.5, 0.7]), np.array([0.9, 0.8, 0.5, 0.7]))
    assert (d.auc_a, d.auc_b, d.var_a, d.var_b, d.cov) == (0.75, 1.0, 0.125, 0.0, 0.0)
    assert d.se_difference == pytest.approx(math.sqrt(0.125))
    # A positive tied with a negative counts half: positives 0.9, 0.5 and negatives 0.5,
    # 0.1 give V10 = (1, 3/4), V01 = (3/4, 1): AUC 7/8, Var = 1/32 / 2 + 1/32 / 2 = 1/32.
    t = delong_paired(y, np.array([0.9, 0.5, 0.5, 0.1]), np.array([0.9, 0.5, 0.5, 0.1]))
    assert (t.auc_a, t.var_a, t.cov, t.se_difference) == (0.875, 0.03125, 0.03125, 0.0)


def test_delong_variance_agrees_with_the_bootstrap() -> None:
    y, a = _binormal(150, 150, 1.2, seed=3)
    b = 0.6 * a + np.random.default_rng(4).normal(0, 0.8, a.size)
    d = delong_paired(y, a, b)
    # Stratified bootstrap (the class counts fixed, as DeLong's variance conditions on
    # them), vectorised: AUCs of 2,000 resamples from their ranks.
    rng = np.random.default_rng(5)
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    idx = np.concatenate(
        [rng.choice(pos, (2000, pos.size)), rng.choice(neg, (2000, neg.size))], axis=1
    )

    def aucs(s: np.ndarray) -> np.ndarray:
        ranks = rankdata(s[idx], axis=1)[:, : pos.size].sum(axis=1)
        return (ranks - pos.size * (pos.size + 1) / 2) / (pos.size * neg.size)

    boot_a, boot_b = aucs(a), aucs(b)
    assert d.var_a == pytest.approx(boot_a.var(), rel=0.2)
    assert d.var_b == pytest.approx(boot_b.var(), rel=0.2)
    assert d.se_difference**2 == pytest.approx((boot_a - boot_b).var(), rel=0.2)


def test_pairing_shrinks_the_standard_error_of_correlated_scores() -> None:
    y, a = _binormal(200, 200, 1.0, seed=6)
    b = a + np.random.default_rng(7).normal(0, 0.05, a.size)  # the same texts, re-embedded
    d = delong_paired(y, a, b)
    unpaired = math.sqrt(d.var_a + d.var_b)  # what independent samples would have
    assert d.cov > 0.9 * math.sqrt(d.var_a * d.var_b)
    assert d.se_difference < 0.2 * unpaired


# -- the paired AUC-drop test ---------------------------------------------------------------
def test_drop_test_confirms_a_collapse_and_not_a_re_embedding() -> None:
    y, ref = _binormal(150, 150, 1.5, seed=8)
    rng = np.random.default_rng(9)
    collapsed = auc_drop_paired_test(y, ref, rng.normal(size=ref.size))
    assert collapsed.confirmed
    assert collapsed.lower_bound > collapsed.margin
    assert collapsed.p_value < collapsed.alpha
    same = auc_drop_paired_test(y, ref, ref + rng.normal(0, 0.01, ref.size))
    assert not same.confirmed
    assert abs(same.drop) < 0.01
    assert same.p_value > 0.5


def test_drop_test_bound_and_p_value_agree() -> None:
    y, ref = _binormal(60, 60, 1.0, seed=10)
    rng = np.random.default_rng(11)
    for noise in (0.2, 0.6, 1.0, 2.0, 4.0):
        t = auc_drop_paired_test(y, ref, ref + rng.normal(0, noise, ref.size))
        assert t.drop == pytest.approx(t.reference_auc - t.live_auc)
        assert t.standard_error > 0
        assert t.confirmed == (t.p_value < t.alpha)
        z = (t.drop - t.lower_bound) / t.standard_error
        assert z == pytest.approx(2.5758, abs=1e-3)  # z_{0.995}: alpha 0.005 one-sided


def test_drop_test_degenerate_cases() -> None:
    y = np.array([1, 0, 0, 0, 0])  # one positive: DeLong's variance is undefined
    t = auc_drop_paired_test(y, np.arange(5.0), np.arange(5.0)[::-1])
    assert not t.confirmed
    assert math.isnan(t.standard_error) and math.isnan(t.lower_bound)
    assert math.isnan(t.p_value)
    y, s = _binormal(30, 30, 1.0, seed=12)
    same = auc_drop_paired_test(y, s, s)  # identical scores: drop 0, SE 0
    assert (same.drop, same.standard_error, same.confirmed) == (0.0, 0.0, False)
    with pytest.raises(ValueError, match="both scores of every case"):
        delong_paired(y, s, s[:-1])


# -- linear CKA -----------------------------------------------------------------------------
@pytest.mark.parametrize(("k", "d"), [(600, 24), (40, 96)])  # feature form, Gram form
def test_cka_is_one_under_rotation_and_isotropic_scaling(k: int, d: int) -> None:
    rng = np.random.default_rng(13)
    x = rng.normal(size=(k, d)) + 3.0  # not centred: CKA centres the columns itself
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    assert linear_cka(x, 0.01 * x @ q) == pytest.approx(1.0, abs=1e-10)


def test_cka_is_below_one_under_an_anisotropic_scaling() -> None:
    # Many more rows than columns: with K << d every pair of random representations has a
    # near-diagonal Gram matrix, and CKA reads ~1 whatever the scaling.
    x = np.random.default_rng(13).normal(size=(600, 24))
    assert linear_cka(x, x * np.linspace(0.1, 3.0, 24)) < 0.95


def test_cka_near_zero_for_independent_representations() -> None:
    # For independent Gaussian X (K x d1), Y (K x d2): E CKA ~ sqrt(d1 d2) / K = 0.008.
    rng = np.random.default_rng(14)
    x, y = rng.normal(size=(2000, 16)), rng.normal(size=(2000, 8))
    assert linear_cka(x, y) < 0.03
    assert linear_cka(x, np.c_[x[:, :8], y]) > 0.3  # half of x kept: clearly related


@pytest.mark.parametrize(("k", "d"), [(300, 96), (60, 96), (96, 96)])  # both forms, the edge
def test_cka_forms_agree_and_ignore_column_offsets(k: int, d: int) -> None:
    rng = np.random.default_rng(15)
    x = rng.normal(size=(k, d))
    y = x @ rng.normal(size=(d, d)) * 0.1 + rng.normal(size=(k, d))
    cka = linear_cka(x, y)
    assert 0.05 < cka < 0.95
    assert cka == pytest.approx(feature_form_cka(x, y), rel=1e-9)  # an independent code
    assert linear_cka(x - x.mean(0), y - 7.0) == pytest.approx(cka, rel=1e-9)


# -- Wilson ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("k", "n", "low", "high"),
    [  # Newcombe (1998), Statistics in Medicine 17:857-872, Table II, method 3 (95%)
        (81, 263, 0.2553, 0.3662),
        (15, 148, 0.0624, 0.1605),
        (0, 20, 0.0, 0.1611),
        (1, 29, 0.0061, 0.1718),
        (29, 29, 0.8830, 1.0),
    ],
)
def test_wilson_interval_matches_newcombe(k: int, n: int, low: float, high: float) -> None:
    lo, hi = wilson_interval(k, n, 0.05)
    assert (round(lo, 4), round(hi, 4)) == (low, high)


def test_wilson_interval_edges() -> None:
    assert wilson_interval(0, 10, 0.05)[1] == pytest.approx(0.2775, abs=1e-4)
    wide, narrow = wilson_interval(5, 50, 0.005), wilson_interval(5, 50, 0.05)
    assert wide[0] < narrow[0] and wide[1] > narrow[1]
    assert all(math.isnan(v) for v in wilson_interval(0, 0))
    with pytest.raises(ValueError, match="0 <= k <= n"):
        wilson_interval(3, 2)


# -- bootstrap ------------------------------------------------------------------------------
def test_bootstrap_intervals_are_the_loop_over_resamples() -> None:
    rng = np.random.default_rng(16)
    y = (rng.random(90) < 0.4).astype(np.int8)
    p = np.clip(0.5 + 0.35 * (2 * y - 1) + rng.normal(0, 0.25, 90), 0, 1)
    q = rng.random(90)
    got = bootstrap_ece_confidence(np.stack([p, q]), y, alpha=0.1, resamples=300, seed=3)
    counts = _stratified_counts(y, 300, np.random.default_rng(3)).astype(int)
    assert (counts[:, y == 1].sum(1) == y.sum()).all()  # stratified: class counts kept
    for row, s in enumerate((p, q)):
        ece, conf = [], []
        for c in counts:
            idx = np.repeat(np.arange(90), c)
            ece.append(expected_calibration_error(s[idx], y[idx]))
            conf.append(mean_confidence(s[idx]))
        want = np.quantile([ece, conf], [0.05, 0.95], axis=1).T
        np.testing.assert_allclose(got[row], want, rtol=1e-10, atol=1e-12)


# -- readings -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def head_and_canaries() -> tuple[LinearScorer, np.ndarray, np.ndarray]:
    """A frozen linear head over the demo's 384-d world, and 512 canaries drawn from it.

    The head is the world's own discriminant rather than a fitted one: its classes are
    Gaussians ``m +- delta/2 u`` with covariance ``S = B diag(s^2) B^T`` (before the rows
    are normalised), whose log-odds are ``delta u^T S^-1 (x - m)``. Closed form, so the
    fixture trains nothing; it scores ROC-AUC 0.85 with an ECE of 0.04 on the canaries.
    """
    world = SyntheticWorld(dim=384, seed=7)
    w = world.basis @ ((world.basis.T @ world.signal) / world.stds**2) * world.delta
    scorer = LinearScorer.from_standardized(
        np.zeros(384), np.ones(384), w, -float(w @ world.mean), normalize=True
    )
    canaries, labels = world.sample(512)
    return scorer, canaries, labels


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_re_embedding_with_tiny_noise_is_neither_change_nor_failure(head_and_canaries) -> None:
    scorer, ref, y = head_and_canaries
    live = _unit(ref + np.random.default_rng(17).normal(0, 1e-4, ref.shape))
    r = paired_canary_reading(ref, live, y, scorer.predict_proba)
    assert r.reference_auc > 0.75  # the head works on the canaries
    assert 0.05 < r.angle_mean_degrees < DEFAULT_ANGLE_TOLERANCE
    assert r.angle_median_degrees <= r.angle_p90_degrees <= r.angle_max_degrees
    assert r.linear_cka > 0.99
    assert not r.embedder_changed
    assert not r.failure and not r.auc_drop.confirmed
    assert abs(r.live_auc - r.reference_auc) < 0.01
    assert r.live_auc_ci[0] < r.live_auc < r.live_auc_ci[1]
    assert r.flip_rate < 0.05
    assert (r.size, r.positives) == (512, int(y.sum()))
    assert r.alpha == DEFAULT_ALPHA
    assert r.reference_ece_ci[0] <= r.reference_ece <= r.reference_ece_ci[1]
    low, high = r.live_mean_confidence_ci
    assert low <= r.live_mean_confidence <= high


def _signed_permutation(d: int, seed: int) -> np.ndarray:
    """A random orthogonal map that costs no factorisation: permute the axes, flip signs."""
    rng = np.random.default_rng(seed)
    return np.eye(d)[rng.permutation(d)] * rng.choice([-1.0, 1.0], d)


def test_a_random_rotation_is_a_change_and_a_failure(head_and_canaries) -> None:
    scorer, ref, y = head_and_canaries
    q = _signed_permutation(384, seed=18)
    r = paired_canary_reading(ref, (ref @ q).astype(np.float32), y, scorer.predict_proba)
    assert 80.0 < r.angle_mean_degrees < 100.0  # a new map: every text moved ~90 degrees
    assert r.linear_cka == pytest.approx(1.0)  # ... but as a whole, only rotated
    assert r.embedder_changed
    assert abs(r.live_auc - 0.5) < 0.1  # the frozen head is at chance
    assert r.failure and r.auc_drop.confirmed
    assert r.auc_drop.lower_bound > r.auc_drop.margin
    assert r.flip_rate_ci[0] > 0.1


def test_a_rotation_the_head_cannot_see_is_a_change_but_no_failure(head_and_canaries) -> None:
    # Reflect every text in a hyperplane that holds the head's weight vector: each text
    # moves, yet its norm and x . w, so its score, stay (the int8 export's case: a
    # different artefact, the same decisions). The mirror's normal v is the canaries'
    # mean direction without its w component, so the texts, which all lean that way,
    # move by tens of degrees.
    scorer, ref, y = head_and_canaries
    w = scorer.weights.astype(np.float64) / np.linalg.norm(scorer.weights)
    v = ref.mean(axis=0) - (ref.mean(axis=0) @ w) * w
    v /= np.linalg.norm(v)
    live = ref - 2.0 * np.outer(ref @ v, v)  # (I - 2 v v^T) x, never forming the matrix
    r = paired_canary_reading(ref, live.astype(np.float32), y, scorer.predict_proba)
    assert r.angle_mean_degrees > 10.0
    assert r.embedder_changed
    assert not r.failure
    assert abs(r.live_auc - r.reference_auc) < 1e-3
    assert r.flip_rate < 0.01


def _turned(x: np.ndarray, degrees: np.ndarray, seed: int) -> np.ndarray:
    """Each row of ``x`` turned by its own angle, towards a random orthogonal direction."""
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    e = np.random.default_rng(seed).normal(size=x.shape)
    e -= np.einsum("ij,ij->i", e, u)[:, None] * u
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    rad = np.radians(degrees)[:, None]
    return np.cos(rad) * u + np.sin(rad) * e


def test_embedder_changed_reads_the_mean_angle_against_the_tolerance(head_and_canaries) -> None:
    scorer, ref, y = head_and_canaries
    # 80% of the texts move 0.5 degrees, 20% move 4: mean 1.2, median 0.5, p90 4.
    degrees = np.where(np.arange(ref.shape[0]) % 5 == 0, 4.0, 0.5)
    live = _turned(ref.astype(np.float64), degrees, seed=23).astype(np.float32)
    r = paired_canary_reading(ref, live, y, scorer.predict_proba, angle_tolerance=1.0)
    assert r.angle_mean_degrees == pytest.approx(degrees.mean(), abs=1e-3)
    assert r.angle_median_degrees == pytest.approx(0.5, abs=1e-3)
    assert r.angle_p90_degrees == pytest.approx(4.0, abs=1e-3)
    assert r.angle_max_degrees == pytest.approx(4.0, abs=1e-3)
    assert r.embedder_changed
    assert r.angle_tolerance_degrees == 1.0
    assert not paired_canary_reading(
        ref, live, y, scorer.predict_proba, angle_tolerance=1.25
    ).embedder_changed


def test_too_few_of_a_class_abstains(head_and_canaries) -> None:
    scorer, ref, y = head_and_canaries
    keep = np.r_[np.flatnonzero(y == 1)[:1], np.flatnonzero(y == 0)[:40]]
    r = paired_canary_reading(ref[keep], ref[keep] @ np.eye(384), y[keep], scorer.predict_proba)
    assert not r.failure
    assert math.isnan(r.live_auc) and all(math.isnan(v) for v in r.live_auc_ci)
    assert r.flip_rate == 0.0
    negatives = y == 0  # no positive at all: still a reading, the AUC undefined
    r = paired_canary_reading(ref[negatives], ref[negatives], y[negatives], scorer.predict_proba)
    assert (r.positives, r.failure) == (0, False)
    assert math.isnan(r.live_auc) and r.live_ece_ci[0] <= r.live_ece <= r.live_ece_ci[1]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda ref, live, y: (ref, live[:-1], y), "same canary texts"),
        (lambda ref, live, y: (ref, np.where(live == live[3, 5], np.nan, live), y), "NaN"),
        (lambda ref, live, y: (ref, np.r_[live[:-1], np.zeros((1, 384))], y), "zero norm"),
        (lambda ref, live, y: (ref, live, y[:-1]), "one label per canary"),
        (lambda ref, live, y: (ref, live, y + 1), "binary"),
        (lambda ref, live, y: (ref[:, :, None], live, y), r"\(K, d\) matrix"),
    ],
)
def test_bad_input_is_refused_with_what_to_do(head_and_canaries, change, message) -> None:
    scorer, ref, y = head_and_canaries
    args = change(ref, ref.copy(), y)
    with pytest.raises(ValueError, match=message):
        paired_canary_reading(*args, scorer.predict_proba)


def test_a_predict_proba_that_is_not_one_probability_per_row_is_refused(
    head_and_canaries,
) -> None:
    _, ref, y = head_and_canaries
    with pytest.raises(ValueError, match="K probabilities"):
        paired_canary_reading(ref, ref, y, lambda x: np.zeros(3))
    with pytest.raises(ValueError, match="outside"):
        paired_canary_reading(ref, ref, y, lambda x: x[:, 0] * 1e3)


def test_angles_resolve_what_arccos_cannot() -> None:
    x = np.random.default_rng(21).normal(size=(4, 384))
    # Each row turned by 1e-7 rad (6e-6 degrees): arccos of the cosine would return 0 or
    # ~1e-6 degrees of noise, not the angle.
    turned = _turned(x, np.full(4, np.degrees(1e-7)), seed=22)
    np.testing.assert_allclose(paired_angles_degrees(x, turned), np.degrees(1e-7), rtol=1e-6)


def test_the_brier_test_catches_broken_calibration_that_leaves_the_ranking_alone():
    """A monotone distortion keeps every AUC (the AUC test cannot see it) but makes the
    head confidently wrong where it was unsure: the paired Brier test pages."""
    from silentwatch.monitor.evaluation.paired import brier_increase_paired_test

    rng = np.random.default_rng(5)
    y = np.r_[np.ones(128), np.zeros(128)].astype(np.int8)
    logit = 1.2 * (2 * y - 1) + rng.normal(0, 1.5, 256)
    p_ref = 1 / (1 + np.exp(-logit))
    p_live = 1 / (1 + np.exp(-8 * logit))  # same order, far too sure
    auc = auc_drop_paired_test(y, p_ref, p_live, 0.01, 0.0025)
    assert abs(auc.drop) < 1e-12 and not auc.confirmed
    brier = brier_increase_paired_test(y, p_ref, p_live, 0.01, 0.0025)
    assert brier.confirmed and brier.live_brier > brier.reference_brier + 0.05
    # A harmless re-embedding (tiny score noise) stays far below the margin.
    same = brier_increase_paired_test(y, p_ref, np.clip(p_ref + rng.normal(0, 1e-3, 256), 0, 1))
    assert not same.confirmed and same.lower_bound < 0.001
